"""Every figure function drawn on fixed data (tests/fixtures/figure_data.py) and read as a reviewer reads it:
printed size, text of 6 pt or more, no text over other text or off the page, every axis and colour bar
labelled, one colour per method in every figure, intervals wherever methods are compared, a chance
level on every overlap; notebook 04's figures against reference images.

Reference images: REAPKIT_UPDATE_REFERENCES=1 python -m pytest tests/unit/test_figures.py -k reference
"""

import os
import re
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from fixtures.figure_data import figure_data  # noqa: E402

from reapkit import plot  # noqa: E402
from reapkit.measure.schema import DISPLAY_NAMES, display_name  # noqa: E402
from reapkit.plot import theme  # noqa: E402
from reapkit.select.geometry import cluster  # noqa: E402
from reapkit.study import kept, tables  # noqa: E402

REFERENCES = Path(__file__).parent / "reference_images"


@pytest.fixture(scope="module")
def data():
    return figure_data()


def _budget(d):
    """A global budget of the uniform REAP plan's total, made on the fixed scores by `PruningPlan.from_scores`."""
    from reapkit.select.plan import PruningPlan, budget_scores

    t = tables.value_table(d.scores[(d.scores.criterion == "reap") & (d.scores.domain == "all")])
    uniform = tables.uniform_plans(d.scores, ["reap"], ratio=0.5, top_k=2)["reap"]
    chosen = {layer: list(np.argsort(-budget_scores(t.loc[layer].to_numpy()), kind="stable")[:2]) for layer in t.index}
    rest = sorted(
        (-budget_scores(t.loc[layer].to_numpy())[e], layer, e)
        for layer in t.index
        for e in range(t.shape[1])
        if e not in chosen[layer]
    )
    for _, layer, e in rest[: uniform.total_kept - 2 * len(t)]:
        chosen[layer].append(e)
    counts = {layer: len(v) for layer, v in chosen.items()}
    plan = PruningPlan.from_scores(
        t.to_numpy(),
        list(t.index),
        [t.shape[1]] * len(t),
        top_k=2,
        counts=counts,
        criterion="reap",
        provenance={"global_budget": 1},
    )
    return uniform, plan


def _global_budget(d):
    uniform, budget = _budget(d)
    fig, (left, right) = plot.panels(2, ncols=2, width=plot.TWO_COLUMN, size=(2.6, 2.3))
    plot.global_budget(kept.budget_table(budget, uniform, floor=2), ratio=0.5, ax=left)
    plot.kept_per_layer({"uniform REAP": uniform, "REAP, global budget": budget}, ax=right)
    plot.legend_below(fig, [left, right], ncols=3)
    return fig


def _clusters(d):
    fig, axes = plot.panels(4, ncols=2, width=plot.TWO_COLUMN)
    reap = d.scores[(d.scores.criterion == "reap") & (d.scores.domain == "all")]
    for ax, layer in zip(axes, range(4)):
        c = cluster(d.distances["output", layer], n_clusters=4)
        plot.saliency_clusters(reap[reap.layer == layer].value.to_numpy(), c, ratio=0.5, ax=ax, title=f"layer {layer}")
    return fig


def _masks(d):
    return plot.plan_masks(
        pd.concat([tables.mask_frame(p, criterion=c, ratio=r) for (c, r), p in d.plans.items()], ignore_index=True)
    )


def _ablation_correlation(d):
    """Per layer and criterion: rho of scores with the ablation cost, a made-up interval and the chance band."""
    from scipy.stats import spearmanr

    rows = []
    for criterion in ("reap", "frequency", "ean_mean"):
        part = d.scores[(d.scores.criterion == criterion) & (d.scores.domain == "all")]
        for layer, group in part.groupby("layer"):
            cost = d.ablation[d.ablation.layer == layer].set_index("expert")["cost"].reindex(group.expert)
            rho = spearmanr(group.value.to_numpy(), cost.to_numpy()).statistic
            rows.append(dict(layer=layer, criterion=criterion, rho=rho, lo=rho - 0.2, hi=min(rho + 0.2, 1.0)))
    return pd.DataFrame(rows).assign(chance_lo=-0.5, chance_hi=0.5)


def _budget_searches(d):
    """A budget_comparison frame by hand: two budgets, three searches, each difference to uniform REAP."""
    rows = [
        (ratio, 64 - int(64 * ratio), search, "8,8,8,8", metric, 0.5, 0.4, 0.6, delta, delta - 0.05, delta + 0.05)
        for ratio in (0.25, 0.5)
        for search, delta in (("uniform", 0.0), ("global", -0.1), ("water", -0.12), ("evolution", -0.3 * ratio * 4))
        for metric in ("kl", "agreement")
    ]
    columns = ["ratio", "kept", "search", "counts", "metric", "value", "lo", "hi", "delta", "delta_lo", "delta_hi"]
    return plot.budget_figure(pd.DataFrame(rows, columns=columns))


def _recovery(d):
    """A recovery_study table by hand: loss and KL at two ratios, pruned -> recovered, with intervals."""
    rows = []
    for ratio, pruned in ((0.25, 3.2), (0.5, 4.0)):
        for metric, unpruned, shift in (("loss", 2.5, 0.0), ("kl", 0.0, -2.5)):
            p, r = pruned + shift, pruned + shift - 0.25 * (pruned - 2.5)
            rows.append(
                dict(
                    ratio=ratio,
                    metric=metric,
                    criterion="reap",
                    unpruned=unpruned,
                    pruned=p,
                    recovered=r,
                    fraction=(p - r) / (p - unpruned),
                    tokens=900,
                    steps=48,
                    lr=3e-3,
                )
            )
    table = pd.DataFrame(rows)
    for name in ("unpruned", "pruned", "recovered", "fraction"):
        table[f"{name}_lo"], table[f"{name}_hi"] = table[name] * 0.95, table[name] * 1.05
    return table


def _plan_costs(d):
    """Per layer: a plan's 8 cheapest experts (fixed ablation costs) together, beside their summed single costs."""
    rows = []
    for layer, group in d.ablation[d.ablation.criterion == "reap"].groupby("layer"):
        singles = group.nsmallest(8, "cost")["cost"].sum()
        joint = singles * (1.1 + 0.1 * layer)
        rows.append(dict(layer=layer, removed=8, joint=joint, singles=singles, interaction=joint - singles))
    frame = pd.DataFrame(rows)
    whole = frame[["removed", "joint", "singles", "interaction"]].sum()
    frame = pd.concat([frame, pd.DataFrame([{"layer": "all", **whole}])], ignore_index=True)
    for name in ("joint", "singles", "interaction"):
        frame[f"{name}_lo"], frame[f"{name}_hi"] = frame[name] - 0.02, frame[name] + 0.02
    return frame


def _layer_scores(d, layer=3):
    return d.scores[(d.scores.criterion == "reap") & (d.scores.domain == "all") & (d.scores.layer == layer)]


#: name: (draw(data), compares methods, shows an overlap). Notebook 04's figures carry their notebook names.
FIGURES = {
    "alignment": (lambda d: plot.alignment_figure(d.alignment), False, False),
    "merge_fidelity": (lambda d: plot.fidelity_figure(d.fidelity), False, False),
    "saliency_heatmaps": (lambda d: plot.saliency_heatmaps(d.scores), False, False),
    "saliency_curves": (
        lambda d: plot.per_criterion(plot.saliency_curves, d.scores, ["reap", "frequency"], ratio=[0.25, 0.5]),
        False,
        False,
    ),
    "saliency_heatmap": (lambda d: plot.saliency_heatmap(d.scores, criterion="frequency", sort=True), False, False),
    "expert_usage": (lambda d: plot.expert_usage(d.scores), False, False),
    "kept_mass": (
        lambda d: plot.kept_mass(kept.kept_mass_table(d.scores, criteria=["reap", "frequency", "ean_mean"], top_k=2)),
        True,
        False,
    ),
    "criterion_agreement": (lambda d: plot.criterion_agreement(d.scores, top_k=2), False, True),
    "domain_frequency": (lambda d: plot.domain_saliency(d.scores, top_k=2), False, False),
    "specialisation_by_depth": (lambda d: plot.specialisation_by_depth(d.scores), False, False),
    "distance_spread": (lambda d: plot.distance_histogram(d.distances), False, False),
    "distances": (
        lambda d: plot.distance_heatmaps({k: v for k, v in d.distances.items() if k[0] != "weights"}, n_clusters=4),
        False,
        False,
    ),
    "distance_heatmap": (lambda d: plot.distance_heatmap(d.distances["output", 0], n_clusters=3), False, False),
    "saliency_clusters": (_clusters, False, False),
    "plan_masks": (_masks, False, False),
    "plan_mask": (lambda d: plot.plan_mask(d.plans["reap", 0.5]), False, False),
    "loss_vs_ratio_by_domain": (
        lambda d: plot.loss_vs_ratio_by_domain(d.results[d.results.label.isin(["reap", "frequency"])]),
        True,
        False,
    ),
    "loss_vs_ratio": (lambda d: plot.loss_vs_ratio(d.results, metric="kl", focus=True), True, False),
    "reconstruction_error": (lambda d: plot.reconstruction_by_layer(d.reconstruction), True, False),
    "scores_figure": (
        lambda d: plot.scores_figure(
            d.results[d.results.label.isin(["reap", "frequency"]) & (d.results.domain == "all")].assign(
                metric="acc",
                value=lambda f: f.agreement,
                value_lo=lambda f: f.agreement_lo,
                value_hi=lambda f: f.agreement_hi,
            )[["label", "method", "ratio", "domain", "metric", "value", "value_lo", "value_hi"]]
        ),
        True,
        False,
    ),
    "study": (lambda d: plot.study_figure(d.results, metrics=["delta_loss", "kl"]), True, False),
    "gaps_by_domain": (lambda d: plot.gap_forest(d.gaps, by="domain", ratio=0.5), True, False),
    "calibration_sensitivity": (lambda d: plot.calibration_figure(d.sensitivity), True, True),
    "calibration_size": (lambda d: plot.calibration_size(d.size), True, True),
    "criterion_vs_ablation": (lambda d: plot.criterion_vs_ablation(d.ablation), False, False),
    "ablation_rank_correlation": (lambda d: plot.ablation_rank_correlation(_ablation_correlation(d)), True, False),
    "joint_vs_singles": (lambda d: plot.joint_vs_singles(_plan_costs(d)), False, False),
    "recovery": (lambda d: plot.recovery_figure(_recovery(d)), True, False),
    "recovery_kl": (lambda d: plot.recovery_plot(_recovery(d), metric="kl"), False, False),
    # notebook 04 (reference images)
    "reap_vs_frequency": (lambda d: plot.reap_vs_frequency(d.scores, ratio=0.5, top_k=2), False, False),
    "global_budget": (_global_budget, False, False),
    "saliency_dendrogram": (
        lambda d: plot.saliency_dendrogram(
            d.distances["output", 3], _layer_scores(d).value.to_numpy(), ratio=0.5, n_clusters=4, title="layer 3"
        ),
        False,
        False,
    ),
    "coactivation": (lambda d: plot.coactivation_matrix(d.coselect), False, False),
    "layer_sensitivity": (lambda d: plot.layer_sensitivity(d.layers), False, False),
    "compression": (lambda d: plot.compression_figure(d.results), True, False),
    "gap_to_reap": (lambda d: plot.gap_forest(d.gaps), True, False),
    "pruning_vs_merging": (lambda d: plot.pruning_vs_merging(d.results, d.gaps), True, False),
    "budget_searches": (_budget_searches, True, False),
}
NOTEBOOK_04 = [
    "reap_vs_frequency",
    "global_budget",
    "saliency_dendrogram",
    "coactivation",
    "layer_sensitivity",
    "compression",
    "gap_to_reap",
    "pruning_vs_merging",
]
#: Functions of reapkit.plot that are not figures.
HELPERS = {
    "style",
    "save_figure",
    "panels",
    "per_criterion",
    "criterion_color",
    "label",
    "legend_below",
    "method_linestyle",
    "domain_marker",
    "domain_linestyle",
    "study_curves",  # loss_vs_ratio without a legend (the study explorer's)
    "calibration_heatmap",  # the two panels of calibration_figure
    "overlap_heatmap",
    "kept_per_layer",  # the right panel of global_budget
}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _figure(out):
    return out if isinstance(out, matplotlib.figure.Figure) else out.figure


def draw(name, data, *, render: bool = True):
    """The figure `name` on the fixed data; `render` lays it out and draws it (text positions need it)."""
    fig = _figure(FIGURES[name][0](data))
    if render:
        fig.canvas.draw()
    return fig


def _texts(fig):
    """The texts drawn: visible, not empty, and for tick labels only those of ticks inside the view."""
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not low - 1e-9 * abs(high - low) <= tick.get_loc() <= high + 1e-9 * abs(high - low):
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [
        t
        for t in fig.findobj(matplotlib.text.Text)
        if t.get_visible() and t.get_text().strip() and id(t) not in hidden and t.figure is fig
    ]


def test_every_figure_function_is_drawn_here():
    functions = {n for n in plot.__all__ if callable(getattr(plot, n)) and n.islower()}
    drawn = set()
    for draw_ in (v[0] for v in FIGURES.values()):
        drawn |= {n for n in functions if n in draw_.__code__.co_names or n in getattr(draw_, "__name__", "")}
    for helper in (_global_budget, _clusters, _masks, _ablation_correlation, _budget_searches, _plan_costs, _recovery):
        drawn |= {n for n in functions if n in helper.__code__.co_names}
    assert functions - drawn - HELPERS == set()


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_a_reviewer_accepts(name, data):
    fig = draw(name, data)
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches()
    assert min(abs(width - plot.COLUMN), abs(width - plot.TWO_COLUMN)) < 0.01, f"{width} in wide"
    texts = _texts(fig)
    small = {t.get_text() for t in texts if t.get_fontsize() < theme.MIN_TEXT - 1e-6}
    assert not small, f"text under {theme.MIN_TEXT} pt at the printed size: {small}"
    page = fig.bbox.padded(1.5)
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    outside = {t.get_text() for t, b in boxes if not (page.contains(b.x0, b.y0) and page.contains(b.x1, b.y1))}
    assert not outside, f"text off the page: {outside}"
    overlapping = [
        (a.get_text(), b.get_text())
        for (a, ba), (b, bb) in combinations(boxes, 2)
        if _overlap(ba, bb) > 1.0 and not _same_rotated_axis(a, b)
    ]
    assert not overlapping, f"text over text: {overlapping[:5]}"
    _check_labels(fig)


def _overlap(a, b) -> float:
    """Pixels of overlap of two boxes in the less overlapping direction."""
    return min(min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0))


def _same_rotated_axis(a, b) -> bool:
    """Two slanted tick labels of one axis: their boxes overlap, their letters do not."""
    return a.get_rotation() % 90 != 0 and a.get_rotation() == b.get_rotation()


def _check_labels(fig):
    sup_x = getattr(fig, "_supxlabel", None) is not None and fig._supxlabel.get_text()
    sup_y = getattr(fig, "_supylabel", None) is not None and fig._supylabel.get_text()
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    bars = [ax for ax in axes if ax.get_label() == "<colorbar>"]
    for bar in bars:
        assert bar.get_ylabel() or bar.get_xlabel(), "a colour bar without a label"
    panels = [ax for ax in axes if ax not in bars and not any("no data" in t.get_text() for t in ax.texts)]
    for ax in panels:
        spec = ax.get_subplotspec()
        for axis, sup in (("x", sup_x), ("y", sup_y)):
            ticks = [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")() if t.get_visible() and t.get_text()]
            if not ticks or getattr(ax, f"get_{axis}label")() or sup:
                continue
            span = (spec.colspan if axis == "x" else spec.rowspan) if spec is not None else None
            neighbours = [
                o
                for o in panels
                if o.get_subplotspec() is not None
                and span is not None
                and (o.get_subplotspec().colspan if axis == "x" else o.get_subplotspec().rowspan) == span
            ]
            assert any(getattr(o, f"get_{axis}label")() for o in neighbours), (
                f"an unlabelled {axis} axis: {ax.get_title(loc='left') or ax.get_title()}"
            )


def _method_colours(fig) -> dict:
    """{method display name: colours it is drawn in}, from legends and from labelled artists."""
    names = {display_name(n): n for n in [*DISPLAY_NAMES, "global_reap"]}
    found: dict[str, set] = {}
    handles = [
        (h, t.get_text())
        for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        for h, t in zip(legend.legend_handles, legend.get_texts())
    ]
    handles += [(a, a.get_label()) for ax in fig.axes for a in [*ax.lines, *ax.collections, *ax.patches]]
    for artist, text in handles:
        name = (text or "").split(" (")[0]
        if name in names and names[name] != "unpruned":
            colour = artist.get_color() if hasattr(artist, "get_color") else artist.get_facecolor()
            colour = np.atleast_2d(matplotlib.colors.to_rgba_array(colour))[0]
            found.setdefault(names[name], set()).add(matplotlib.colors.to_hex(colour))
    return found


def test_one_colour_per_method_in_every_figure(data):
    seen: dict[str, set] = {}
    for name in FIGURES:
        for method, colours in _method_colours(draw(name, data, render=False)).items():
            seen.setdefault(method, set()).update(colours)
        plt.close("all")
    assert {"reap", "frequency", "m_smoe", "hc_smoe", "global_reap", "random"} <= set(seen)
    assert {m: c for m, c in seen.items() if c != {plot.criterion_color(m).lower()}} == {}
    colours = [
        plot.criterion_color(m)
        for m in (*DISPLAY_NAMES, "global_reap", "water_reap", "evolution_reap")
        if m != "unpruned"
    ]
    assert len(set(colours)) == len(colours)  # every method its own colour


def _has_intervals(fig) -> bool:
    """Bands (fill_between), error bars, or intervals written in cells ("lo–hi")."""
    kinds = (matplotlib.collections.PolyCollection, matplotlib.collections.LineCollection)
    drawn = any(isinstance(c, kinds) and len(c.get_paths()) for ax in fig.axes for c in ax.collections)
    return drawn or any(re.search(r"\d–-?[.\d]", t.get_text()) for t in _texts(fig))


@pytest.mark.parametrize("name", sorted(n for n, (_, compares, _) in FIGURES.items() if compares))
def test_intervals_wherever_methods_are_compared(name, data):
    assert _has_intervals(draw(name, data, render=False))


@pytest.mark.parametrize("name", sorted(n for n, (_, _, overlap) in FIGURES.items() if overlap))
def test_a_chance_level_on_every_overlap(name, data):
    assert any("chance" in t.get_text() for t in _texts(draw(name, data, render=False)))


def test_colour_blind_safe_and_reap_emphasised():
    """Deuteranopia and protanopia (Viénot, Brettel & Mollon 1999): the study's methods stay apart."""
    methods = ["reap", "frequency", "soft_frequency", "ean_mean", "random", "m_smoe", "hc_smoe", "global_reap"]
    rgb = np.array([matplotlib.colors.to_rgb(plot.criterion_color(m)) for m in methods])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    simulations = {
        "normal": np.eye(3),
        "deuteranopia": np.array([[0.29275, 0.70725, 0], [0.29275, 0.70725, 0], [-0.02234, 0.02234, 1]]),
        "protanopia": np.array([[0.11238, 0.88762, 0], [0.11238, 0.88762, 0], [0.00401, -0.00401, 1]]),
    }
    for vision, matrix in simulations.items():
        seen = np.clip(linear @ matrix.T, 0, 1) ** (1 / 2.2)
        distance = min(np.linalg.norm(a - b) for a, b in combinations(seen, 2))
        assert distance > 0.08, vision
    fig = plot.compression_figure(figure_data().results)
    widths = {line.get_label(): line.get_linewidth() for line in fig.axes[0].lines}
    assert widths["REAP"] > max(w for n, w in widths.items() if n != "REAP")


@pytest.mark.parametrize("name", NOTEBOOK_04)
def test_reference_images_of_notebook_04(name, data, tmp_path):
    from matplotlib.testing.compare import compare_images

    fig = draw(name, data)
    actual = tmp_path / f"{name}.png"
    fig.savefig(actual, dpi=72)
    expected = REFERENCES / f"{name}.png"
    if os.environ.get("REAPKIT_UPDATE_REFERENCES"):
        REFERENCES.mkdir(exist_ok=True)
        expected.write_bytes(actual.read_bytes())
    assert expected.is_file(), f"no reference image {expected.name}; make it with REAPKIT_UPDATE_REFERENCES=1"
    assert compare_images(str(expected), str(actual), tol=6) is None
