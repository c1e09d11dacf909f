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
from reapkit.geometry import angular_distances, cluster  # noqa: E402

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
    rows = [(0.0, "none", d, 2.0, 0.0, 1.0) for d in DOMAINS + ["all"]]
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


def test_agreement_table_values():
    frame = scores(layers=(0,))
    same = frame[frame.criterion == "reap"].assign(criterion="copy")
    table = plot.agreement_table(pd.concat([frame, same]), criteria=["reap", "copy", "frequency"], ratio=0.5)
    row = table[(table.criterion_a == "reap") & (table.criterion_b == "copy")].iloc[0]
    assert row.spearman == pytest.approx(1.0) and row.overlap == 1.0
    assert len(table) == 3 and table.spearman.between(-1, 1).all()
    assert plot.agreement_table(EMPTY_SCORES).empty


def test_specialisation_of_a_pure_specialist():
    rows = [(0, e, d, "frequency", 10.0 if (e == i) else 0.0) for i, d in enumerate(DOMAINS) for e in range(4)]
    rows += [(0, 4, d, "frequency", 5.0) for d in DOMAINS]  # a generalist
    table = plot.specialisation_table(pd.DataFrame(rows, columns=["layer", "expert", "domain", "criterion", "value"]))
    spec = dict(zip(table.expert, table.specialisation))
    assert spec[0] == pytest.approx(1.0) and spec[4] == pytest.approx(0.0)
    assert dict(zip(table.expert, table.dominant))[2] == DOMAINS[2]


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

    frame = plot.mask_frame(Plan())
    assert frame.kept.sum() == 4 and len(frame) == 8
    assert isinstance(plot.plan_mask(Plan()), matplotlib.axes.Axes)
    grid = pd.concat([plot.mask_frame(Plan(), criterion=c, ratio=r) for c in ("reap", "frequency") for r in (0.25, 0.5)])
    assert len(plot.plan_masks(grid).axes) == 4
    single = plot.mask_frame({7: [1]}, {7: 3})
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
        return plot.saliency_heatmaps(scores())

    first = [p.read_bytes() for p in plot.save_figure(draw(), tmp_path / "a", "heat")]
    second = [p.read_bytes() for p in plot.save_figure(draw(), tmp_path / "b", "heat")]
    assert first == second
    assert first[0][:8] == b"\x89PNG\r\n\x1a\n" and first[1][:5] == b"%PDF-"
    assert b"CreationDate" not in first[1] and b"Matplotlib" not in first[0]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["heat.pdf", "heat.png"]
    with pytest.raises(ValueError, match="plain file name"):
        plot.save_figure(draw(), tmp_path, "sub/heat")


def test_plot_imports_neither_torch_nor_transformers():
    code = "import sys, reapkit.plot, reapkit.geometry; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
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
    rec = pd.DataFrame({"layer": [0, 1, 0, 1], "rel_l2": [0.1, 0.2, 0.3, 0.4], "criterion": "reap", "ratio": [0.25, 0.25, 0.5, 0.5]})
    assert len(plot.reconstruction_by_layer(rec).lines) == 2
    assert _has_no_data_note(plot.reconstruction_by_layer(pd.DataFrame()))
