"""Plot functions on small frames, including empty and single-layer input; deterministic saving."""

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from reapkit import plot  # noqa: E402
from reapkit.errors import InvalidInput
from reapkit.plot import theme  # noqa: E402
from reapkit.select.geometry import angular_distances, cluster  # noqa: E402
from reapkit.study import tables

CRITERIA = ["reap", "frequency", "ean_mean", "soft_frequency"]
DOMAINS = ["code", "math", "prose", "tools"]


def scores(layers=(0, 1, 2), experts=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in CRITERIA:
        for d in ["all"] + DOMAINS:
            for layer in layers:
                for e in range(experts):
                    rows.append((layer, e, d, c, float(rng.random() + (e == DOMAINS.index(d) if d in DOMAINS else 0))))
    return pd.DataFrame(rows, columns=["layer", "expert", "domain", "criterion", "value"])


def results():
    rows = [(0.0, "unpruned", d, 2.0, 0.0, 1.0) for d in DOMAINS + ["all"]]
    for c in ("reap", "frequency"):
        for r in (0.25, 0.5):
            for d in DOMAINS + ["all"]:
                rows.append((r, c, d, 2.0 + r * (1 if c == "reap" else 2), r / 3, 1 - r / 2))
    return pd.DataFrame(rows, columns=["ratio", "criterion", "domain", "loss", "kl", "agreement"])


EMPTY_SCORES = pd.DataFrame(columns=["layer", "expert", "domain", "criterion", "value"])
EMPTY_RESULTS = pd.DataFrame(columns=["ratio", "criterion", "domain", "loss"])


def _has_no_data_note(obj):
    fig = obj if isinstance(obj, matplotlib.figure.Figure) else obj.figure
    return any("no data" in t.get_text() for ax in fig.axes for t in ax.texts)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("frame", [scores(), scores(layers=(5,)), EMPTY_SCORES], ids=["layers", "one-layer", "empty"])
def test_score_figures(frame, tmp_path):
    empty = frame.empty
    outputs = [
        plot.saliency_heatmap(frame, criterion="reap"),
        plot.saliency_heatmap(frame, criterion="frequency", sort=True),
        plot.saliency_heatmaps(frame),
        plot.saliency_curves(frame, criterion="reap", ratio=0.5),
        plot.criterion_agreement(frame, ratio=0.5),
        plot.domain_saliency(frame),
        plot.specialisation_by_depth(frame),
    ]
    for out in outputs:
        assert isinstance(out, (matplotlib.axes.Axes, matplotlib.figure.Figure))
        assert _has_no_data_note(out) == empty
        assert all(p.stat().st_size > 0 for p in plot.save_figure(out, tmp_path, "fig", formats=("png",), dpi=40))


def test_ax_is_used_and_returned():
    fig, ax = plt.subplots()
    assert plot.saliency_heatmap(scores(), ax=ax) is ax
    assert plot.saliency_curves(scores(), ax=ax) is ax
    assert plot.loss_vs_ratio(results(), ax=ax) is ax


@pytest.mark.parametrize("n", [0, 1, 2, 9])
def test_geometry_figures(n):
    rng = np.random.default_rng(0)
    d = angular_distances(rng.normal(size=(n, 5))) if n else np.zeros((0, 0))
    fig = plot.distance_heatmap(d, n_clusters=min(n, 3) or None, title="layer 0")
    assert isinstance(fig, matplotlib.figure.Figure) and _has_no_data_note(fig) == (n == 0)
    c = cluster(d, n_clusters=min(n, 3)) if n else None
    ax = plot.saliency_clusters(rng.random(n), c, ratio=0.5)
    assert _has_no_data_note(ax) == (n == 0)
    if n:
        hatched = [p for p in ax.patches if p.get_hatch()]
        assert len(hatched) == int(np.floor(n * 0.5))


def test_masks():
    class Plan:
        kept = {0: [0, 2], 3: [1, 2]}
        num_experts = {0: 4, 3: 4}

    frame = tables.mask_frame(Plan())
    assert frame.kept.sum() == 4 and len(frame) == 8
    assert isinstance(plot.plan_mask(Plan()), matplotlib.axes.Axes)
    grid = pd.concat(
        [tables.mask_frame(Plan(), criterion=c, ratio=r) for c in ("reap", "frequency") for r in (0.25, 0.5)]
    )
    assert len(plot.plan_masks(grid).axes) == 4
    single = tables.mask_frame({7: [1]}, {7: 3})
    assert not _has_no_data_note(plot.plan_mask(single))
    assert _has_no_data_note(plot.plan_mask(pd.DataFrame(columns=["layer", "expert", "kept"])))
    assert _has_no_data_note(plot.plan_masks(pd.DataFrame()))


@pytest.mark.parametrize("frame", [results(), results().query("domain == 'all'"), EMPTY_RESULTS])
def test_results_figures(frame):
    ax = plot.loss_vs_ratio(frame, metric="loss")
    assert _has_no_data_note(ax) == frame.empty
    if not frame.empty:
        assert len(ax.lines) == 2  # reap, frequency; the ratio-0 baseline starts both
        assert all(line.get_xdata()[0] == 0 for line in ax.lines)
    fig = plot.loss_vs_ratio_by_domain(frame, metric="kl")
    assert _has_no_data_note(fig) == frame.empty


def test_save_figure_is_deterministic_and_atomic(tmp_path):
    def draw():
        return plot.saliency_heatmap(scores(layers=(0, 1), experts=4))

    first = [p.read_bytes() for p in plot.save_figure(draw(), tmp_path / "a", "heat", dpi=60)]
    second = [p.read_bytes() for p in plot.save_figure(draw(), tmp_path / "b", "heat", dpi=60)]
    assert first == second
    assert first[0][:8] == b"\x89PNG\r\n\x1a\n" and first[1][:5] == b"%PDF-"
    assert b"CreationDate" not in first[1] and b"Matplotlib" not in first[0]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["heat.pdf", "heat.png"]
    with pytest.raises(InvalidInput, match="plain file name"):
        plot.save_figure(draw(), tmp_path, "sub/heat")


def test_plot_imports_neither_torch_nor_transformers():
    code = "import sys, reapkit.plot, reapkit.study.tables, reapkit.select.geometry; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_grids_and_reconstruction():
    fig = plot.per_criterion(plot.saliency_curves, scores(), ["reap", "frequency"], ratio=[0.25, 0.5])
    assert len([a for a in fig.axes if a.lines]) == 2
    assert _has_no_data_note(plot.per_criterion(plot.saliency_curves, EMPTY_SCORES))
    rng = np.random.default_rng(0)
    d = {f"layer {i}": angular_distances(rng.normal(size=(5, 3))) for i in range(2)}
    assert isinstance(plot.distance_heatmaps(d, n_clusters=2), matplotlib.figure.Figure)
    assert _has_no_data_note(plot.distance_heatmaps({}))
    rec = pd.DataFrame(
        {"layer": [0, 1, 0, 1], "rel_l2": [0.1, 0.2, 0.3, 0.4], "criterion": "reap", "ratio": [0.25, 0.25, 0.5, 0.5]}
    )
    fig = plot.reconstruction_by_layer(rec)
    assert [len(ax.lines) for ax in fig.axes] == [1, 1]  # one panel per ratio (no line style means a ratio)
    assert _has_no_data_note(plot.reconstruction_by_layer(pd.DataFrame()))


# --------------------------------------------------------------------------------------------
# One style: sizes, text, colours
# --------------------------------------------------------------------------------------------


def test_one_colour_per_criterion_and_print_sizes():
    named = [
        "reap",
        "frequency",
        "soft_frequency",
        "ean_mean",
        "ean_sum",
        "weighted_ean_sum",
        "max_activation",
        "random",
        "m_smoe",
        "hc_smoe",
    ]
    colours = [plot.criterion_color(n) for n in named]
    assert len(set(colours)) == len(colours)  # every built-in method its own colour
    assert plot.criterion_color("reap") == theme.OKABE_ITO["vermillion"]
    assert plot.criterion_color("global_reap") not in colours  # a global budget is a method of its own
    assert plot.criterion_color("global_my_criterion") == plot.criterion_color("my_criterion")
    assert plot.criterion_color("msmoe") == plot.criterion_color("m_smoe")
    registered = plot.criterion_color("my_registered_criterion")
    assert registered == plot.criterion_color("my_registered_criterion") and registered not in colours
    assert plot.method_linestyle("global_reap") == ":" and plot.method_linestyle("hc_smoe", "merge") == "--"
    assert plot.method_linestyle("water_reap") == ":" and plot.method_linestyle("msan") == "-"
    assert len({plot.domain_marker(d) for d in DOMAINS + ["all", "mix"]}) == 6
    assert 7 <= plot.STYLE["font.size"] <= 8 and plot.STYLE["savefig.dpi"] == 300
    assert (plot.COLUMN, plot.TWO_COLUMN) == (3.25, 5.5)
    assert plot.saliency_heatmap(scores()).figure.get_size_inches()[0] == pytest.approx(plot.COLUMN)
    assert plot.saliency_heatmaps(scores()).get_size_inches()[0] == pytest.approx(plot.TWO_COLUMN)


def test_style_keeps_interactive_mode_switched_on_inside():
    was = matplotlib.is_interactive()
    try:
        matplotlib.interactive(False)
        with plot.style():
            matplotlib.interactive(True)  # what the inline backend does at a kernel's first figure
        assert matplotlib.is_interactive()
    finally:
        matplotlib.interactive(was)


# --------------------------------------------------------------------------------------------
# Defects the figures must not have
# --------------------------------------------------------------------------------------------


def test_saliency_heatmap_shows_raw_scale_and_greys_never_routed():
    frame = scores(layers=(0, 1))
    frame.loc[(frame.criterion == "reap") & (frame.layer == 1), "value"] *= 100  # a louder layer
    frame.loc[(frame.criterion == "reap") & (frame.expert == 0), "value"] = 0.0  # never routed
    ax = plot.saliency_heatmap(frame, criterion="reap")
    image = ax.images[0]
    raw = frame[(frame.criterion == "reap") & (frame.domain == "all")].value
    assert isinstance(image.norm, matplotlib.colors.LogNorm) and image.norm.vmax == pytest.approx(raw.max())
    assert np.ma.getmaskarray(image.get_array())[:, 0].all()  # zeros are masked (grey), not the loudest colour
    assert any("never routed" in t.get_text() for t in ax.texts)


def test_distance_colour_scale_ignores_the_diagonal_and_is_shared():
    rng = np.random.default_rng(0)
    near = angular_distances(rng.normal(size=(6, 3)) + 4)  # small distances
    far = angular_distances(rng.normal(size=(6, 3)))
    fig = plot.distance_heatmap(near)
    off = near[~np.eye(6, dtype=bool)]
    assert fig.axes[1].images[0].norm.vmin == pytest.approx(off.min()) and off.min() > 0
    grid = plot.distance_heatmaps({"near": near, "far": far})
    images = [ax.images[0] for ax in grid.axes if ax.images]
    assert len(images) == 2 and images[0].norm is images[1].norm  # one scale
    assert len([ax for ax in grid.axes if ax.get_label() == "<colorbar>"]) == 1  # one colour bar


def test_flat_dendrogram_draws_no_cluster_boxes():
    rng = np.random.default_rng(0)
    flat = angular_distances(rng.normal(size=(8, 4000)))
    fig = plot.distance_heatmap(flat, n_clusters=3)

    def boxes(ax):
        return [p for p in ax.patches if not p.get_fill()]

    assert not boxes(fig.axes[1]) and "flat" in fig.axes[0].get_title(loc="left") and not fig.axes[0].lines  # no cut
    groups = angular_distances(np.repeat(rng.normal(size=(2, 6)), 4, axis=0) + 0.05 * rng.normal(size=(8, 6)))
    fig = plot.distance_heatmap(groups, n_clusters=2)
    assert len(boxes(fig.axes[1])) == 2 and fig.axes[0].lines  # two clusters, and the cut on the height axis
    assert fig.axes[0].get_ylabel() == "height"


def test_domain_saliency_masks_never_routed_cells():
    frame = scores(layers=(0,))
    frame.loc[(frame.criterion == "frequency") & (frame.domain == "math") & (frame.expert == 2), "value"] = 0.0
    ax = plot.domain_saliency(frame)
    mask = np.ma.getmaskarray(ax.images[0].get_array())
    assert mask.sum() == 1


def test_calibration_heatmap_puts_own_domain_on_the_diagonal():
    loss = pd.DataFrame(
        {"unpruned": [2.0, 2.0, 2.0], "math": [3.0, 2.1, 2.8], "code": [2.2, 3.0, 2.9], "mix": [2.5, 2.5, 2.5]},
        index=pd.Index(["code", "math", "all"], name="eval_domain"),
    )
    ax = plot.calibration_heatmap(loss)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert rows[:2] == cols[:2] == ["math", "code"] and rows[2] == "all" and cols[2] == "mix"
    assert len(ax.patches) == 2  # the outlined diagonal
    overlap = pd.DataFrame(np.array([[1.0, 0.3], [0.3, 1.0]]), index=["code", "math"], columns=["code", "math"])
    fig = plot.calibration_figure(loss, overlap, chance=0.34)
    bar = [a for a in fig.axes if a.get_label() == "<colorbar>"][-1]
    assert "chance\n0.34" in [t.get_text() for t in bar.get_yticklabels()]
    hatched = [p for p in fig.axes[1].patches if p.get_hatch()]
    assert len(hatched) == 2  # a diagonal of 1s is no measurement: undefined, not the colour of 1


def test_agreement_matrix_shows_each_pair_against_chance():
    frame = scores(experts=8)
    ax = plot.criterion_agreement(frame, criteria=["reap", "frequency", "ean_mean"], ratio=0.5)
    table = tables.agreement_table(frame, criteria=["reap", "frequency", "ean_mean"], ratio=0.5)
    rho, jac = ax.images[0].get_array(), ax.images[1].get_array()
    pair = table[(table.criterion_a == "reap") & (table.criterion_b == "frequency")]
    assert rho[0, 1] == pytest.approx(pair.spearman.mean()) and jac[1, 0] == pytest.approx(pair.overlap.mean())
    assert np.ma.getmaskarray(rho)[1, 0] and np.ma.getmaskarray(jac)[0, 1]  # rho above, Jaccard below
    assert len([p for p in ax.patches if p.get_hatch()]) == 3  # the undefined diagonal
    chance = tables.expected_jaccard(8, 4)
    assert ax.images[1].norm.vcenter == pytest.approx(chance)  # white = what two random plans share
    assert [t.get_text() for t in ax.get_xticklabels()] == ["REAP", "frequency", "activation norm"]


def test_rank_axes_have_integer_ticks_and_masks_a_legend():
    ax = plot.saliency_curves(scores(experts=8), criterion="reap", ratio=0.5)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    masks = pd.concat(
        [tables.mask_frame({0: [0, 1], 1: [2]}, {0: 4, 1: 4}, criterion=c, ratio=0.5) for c in ("reap", "frequency")]
    )
    fig = plot.plan_masks(masks)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["kept", "pruned"]


def test_curves_draw_bootstrap_intervals():
    frame = results().assign(label=lambda f: f.criterion, method="prune")
    frame["loss_lo"], frame["loss_hi"] = frame.loss - 0.1, frame.loss + 0.1
    ax = plot.loss_vs_ratio(frame, metric="loss")
    assert len(ax.collections) == 2 and "95% CI" in ax.figure.legends[0].get_title().get_text()
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.max() - band.min() > 0.1
    assert not plot.loss_vs_ratio(results(), metric="loss").collections  # one run per point: no band
    delta = plot.loss_vs_ratio(frame, metric="delta_loss", domain="code")
    assert delta.lines[0].get_ydata()[0] == 0  # Δ loss against the domain's own unpruned loss


# --------------------------------------------------------------------------------------------
# New figures
# --------------------------------------------------------------------------------------------


def test_reap_vs_frequency_marks_who_keeps_each_expert():
    frame = scores(layers=(0, 1), experts=8)
    fig = plot.reap_vs_frequency(frame, layers=[0], ratio=0.5)
    ax = fig.axes[0]
    counts = [int(t.get_text().rsplit("(", 1)[1].rstrip(")")) for t in fig.legends[0].get_texts()[:4]]
    assert sum(counts) == 8 and counts[0] + counts[1] == 4 and counts[0] + counts[2] == 4  # kept by reap / by frequency
    assert len([line for line in ax.lines if len(line.get_xdata())]) == 2  # the two cut-offs of this layer
    both = plot.reap_vs_frequency(frame, ratio=0.5)
    assert len(both.axes) == 2 and sum(len(c.get_offsets()) for ax in both.axes for c in ax.collections) == 16
    assert _has_no_data_note(plot.reap_vs_frequency(frame[frame.criterion == "reap"]))


def test_global_budget_draws_the_scores_it_ranks_and_kept_per_layer():
    """Every expert the budget keeps outside the floors lies above its one threshold, every pruned one below."""
    from reapkit.select.plan import PruningPlan
    from reapkit.study.kept import budget_table

    frame = scores(layers=(0, 1, 2), experts=8)
    table = tables.value_table(frame[(frame.criterion == "reap") & (frame.domain == "all")])
    table.loc[2] *= 10  # a louder layer: raw scores would mislead
    uniform = PruningPlan.from_scores(table.to_numpy(), [0, 1, 2], [8, 8, 8], top_k=2, ratio=0.5, criterion="reap")
    normalised = table.div(table.mean(axis=1), axis=0)  # what a global budget ranks: above 1, or a layer's top 2
    counts = {layer: int(max(2, (row > 1.0).sum())) for layer, row in normalised.iterrows()}
    budget = PruningPlan.from_scores(
        table.to_numpy(),
        [0, 1, 2],
        [8, 8, 8],
        top_k=2,
        counts=counts,
        criterion="reap",
        provenance={"global_budget": 12},
    )
    ranked = budget_table(budget, uniform, floor=2)
    ax = plot.global_budget(ranked, ratio=0.5)
    threshold = ranked.attrs["threshold"]
    assert any(np.allclose(line.get_ydata(), threshold) for line in ax.lines)
    kept_ = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if c.get_gid() == "kept by the budget"])
    pruned = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if c.get_gid() == "pruned by the budget"])
    assert (kept_ > threshold).all() and (pruned < threshold).all() and len(kept_) + len(pruned) <= 24
    ax = plot.kept_per_layer({"uniform": uniform, "global reap": budget})
    assert [p.get_height() for p in ax.patches] == [4, 4, 4, *counts.values()]
    assert ax.patches[0].get_facecolor() != ax.patches[3].get_facecolor()  # the budget in its own colour
    assert _has_no_data_note(plot.kept_per_layer({}))


def test_saliency_dendrogram_and_coactivation():
    rng = np.random.default_rng(0)
    d = angular_distances(rng.normal(size=(8, 5)))
    s = rng.random(8)
    ax = plot.saliency_dendrogram(d, s, ratio=0.5)
    leaves, crosses = ax.collections[-2:]
    assert len(leaves.get_offsets()) == 8 and len(crosses.get_offsets()) == 4
    assert len(plot.saliency_dendrogram(d, s, pruned=[0]).collections[-1].get_offsets()) == 1
    with pytest.raises(ValueError, match="same experts"):
        plot.saliency_dendrogram(d, s[:3])
    counts = np.kron(np.eye(2), np.ones((4, 4))) * 50 + 1
    np.fill_diagonal(counts, 120)
    ax = plot.coactivation_matrix(counts[np.ix_([0, 4, 1, 5, 2, 6, 3, 7], [0, 4, 1, 5, 2, 6, 3, 7])])
    shown = ax.images[0].get_array()
    assert np.ma.getmaskarray(shown).diagonal().all()
    assert shown[0, 1] > 0.2 and shown[0, 7] < 0.05  # dendrogram order puts each block together
    assert _has_no_data_note(plot.coactivation_matrix(np.zeros((0, 0))))


def test_layer_sensitivity_and_compression_figure():
    frame = pd.DataFrame(
        {
            "layer": [0, 1, 2],
            "delta_loss": [0.3, 0.1, 0.05],
            "delta_loss_lo": [0.2, 0.05, 0.0],
            "delta_loss_hi": [0.4, 0.15, 0.1],
        }
    )
    ax = plot.layer_sensitivity(frame)
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.3, 0.1, 0.05]) and any(
        getattr(c, "has_yerr", False) for c in ax.containers
    )
    assert _has_no_data_note(plot.layer_sensitivity(pd.DataFrame(columns=["layer", "delta_loss"])))
    res = results().assign(label=lambda f: f.criterion, method="prune")
    fig = plot.compression_figure(res)
    assert len(fig.axes) == 2 and fig.legends and fig.get_size_inches()[0] == pytest.approx(plot.TWO_COLUMN)
    assert fig.axes[1].get_ylabel() == "top-1 agreement"
    study = plot.study_figure(res)
    assert len(study.axes) == 10 and study.axes[0].get_shared_y_axes().joined(study.axes[0], study.axes[1])
