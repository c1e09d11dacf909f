"""The explorers of the five notebooks: each control redraws from what the notebook computed, no model.

In-process (ipywidgets without a frontend); tests/acceptance/test_browser.py drives them in JupyterLab.
"""

import io

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

from reapkit.observe.recorder import observe  # noqa: E402
from reapkit.select.plan import PruningPlan  # noqa: E402


@pytest.fixture(scope="module")
def obs():
    import torch

    from reapkit.data import pad_batches

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 10, 5, 9, 12)]
    batches = pad_batches(seqs[:3], "code", 3) + pad_batches(seqs[3:], "prose", 2)
    return observe(tiny_model("qwen3_moe"), batches, statistics="all", progress=False)


def _png(explorer) -> list[bytes]:
    out = []
    for fig in explorer.figures.values():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=40)
        out.append(buffer.getvalue())
    return out


def _each_control_redraws(explorer, changes, *, every=True):
    """Each control changed (every one of the explorer's, unless `every` is False) redraws another figure."""
    if every:
        assert {c.description for c, _ in changes} == {c.description for c in explorer.controls}
    for control, value in changes:
        before, redraws = _png(explorer), explorer.redraws
        control.value = value
        assert explorer.redraws == redraws + 1, control.description
        assert _png(explorer) != before, f"{control.description} -> {value!r} drew the same figure"
        assert explorer.seconds > 0


def _results(plans, domains=("all", "code", "prose")):
    rows = [dict(criterion="unpruned", ratio=0.0, domain=d, delta_loss=0.0, kl=0.0, agreement=1.0) for d in domains]
    for (criterion, ratio), _ in plans.items():
        for i, d in enumerate(domains):
            value = ratio * (2 if criterion == "reap" else 3) + 0.1 * i
            rows.append(
                dict(
                    criterion=criterion,
                    ratio=ratio,
                    domain=d,
                    delta_loss=value,
                    delta_loss_lo=value - 0.05,
                    delta_loss_hi=value + 0.05,
                    kl=value / 2,
                    agreement=1 - value / 4,
                )
            )
    return pd.DataFrame(rows)


def test_saliency_explorer_names_the_kept_set_of_the_layer(obs):
    from reapkit.plot.widgets import SaliencyExplorer

    e = SaliencyExplorer(obs, criteria=["reap", "frequency"], views=("saliency", "mask"), ratio=0.5)
    e.layer.value = obs.layers[1]
    kept = PruningPlan.from_observations(obs, "reap", ratio=0.5).kept[obs.layers[1]]
    assert f"<span class='reapkit-kept-set'>{' '.join(str(k) for k in sorted(kept))}</span>" in e.summary.value
    assert f"layer {obs.layers[1]} keeps" in e.summary.value


def test_cluster_explorer(obs):
    from reapkit.plot.explorers import ClusterExplorer
    from reapkit.select.criteria import score
    from reapkit.select.geometry import distance_matrices

    model = tiny_model("qwen3_moe")
    distances = distance_matrices(model=model, obs=obs, layers=obs.layers, spaces=["weights", "output"])
    saliency = score(obs, "reap")
    e = ClusterExplorer(distances, {layer: saliency[i] for i, layer in enumerate(obs.layers)}, n_clusters=3, ratio=0.5)
    assert e.space.value == "output" and e.cut.value == 3 and e.cut.max == 8
    assert "3 clusters of" in e.summary.value and "Reading." in e.summary.value
    _each_control_redraws(e, [(e.layer, obs.layers[1]), (e.space, "weights"), (e.cut, 5)])
    assert e.clustering().n_clusters == 5 and "5 clusters" in e.summary.value


def test_cost_explorer_reads_the_measured_plans(obs):
    from reapkit.plot.explorers import CostExplorer

    plans = {(c, r): PruningPlan.from_observations(obs, c, ratio=r) for c in ("reap", "frequency") for r in (0.25, 0.5)}
    e = CostExplorer(_results(plans), plans)
    assert e.ratio.value == 0.5 and [o[0] for o in e.ratio.options] == ["25% (2/8)", "50% (4/8)"]
    assert "<b>reap</b>, 50% (4/8) removed" in e.summary.value and "all +1.00 [0.95, 1.05]" in e.summary.value
    _each_control_redraws(e, [(e.criterion, "frequency"), (e.ratio, 0.25), (e.metric, "kl")])
    assert e.plan() is plans["frequency", 0.25] and "kl: all 0.38" in e.summary.value
    with pytest.raises(ValueError, match="CostExplorer needs"):
        CostExplorer(pd.DataFrame({"loss_per_byte": [1.0]}), plans)


def test_figure_explorer_offers_each_figure_and_greys_what_it_does_not_read(obs):
    from reapkit.plot.explorers import FIGURES, FigureExplorer

    measured = {(c, r): None for c in ("reap", "frequency") for r in (0.25, 0.5)}
    results = _results(measured).assign(label=lambda f: f["criterion"])
    sensitivity = pd.DataFrame(
        [
            dict(layer=layer, domain=d, ratio=0.5, delta_loss=0.1 * (i + 1) + (d == "code"))
            for i, layer in enumerate(obs.layers)
            for d in ("all", "code")
        ]
    )
    e = FigureExplorer(obs, results=results, sensitivity=sensitivity, layer=obs.layers[1])
    assert list(e.figure.options) == list(FIGURES) and e.figure.value == "saliency_dendrogram"
    assert not e.criterion.disabled and e.domain.disabled
    _each_control_redraws(e, [(e.criterion, "frequency"), (e.ratio, 0.25), (e.layer, obs.layers[0])], every=False)
    for name in FIGURES:
        e.figure.value = name
        assert set(e.figures) == {name} and "Reading." in e.summary.value, name
        assert {c for c in ("criterion", "ratio", "layer", "domain") if not getattr(e, c).disabled} == set(
            FIGURES[name]
        )
    before = _png(e)
    e.domain.value = "code"  # compression: the code domain's curves
    assert _png(e) != before
    before, e.ratio.value = _png(e), 0.75  # the dotted line where the reading reads them
    assert _png(e) != before and "at 50% removed (code" in e.summary.value  # the nearest measured ratio
    bare = FigureExplorer(obs)  # no tables: the figures that need them are not offered
    assert "compression" not in bare.figure.options and "layer_sensitivity" not in bare.figure.options


def test_study_explorer_methods_metric_domain():
    from reapkit.plot.widgets import StudyExplorer

    rows = [
        dict(
            label=c,
            criterion=c,
            ratio=r,
            domain=d,
            loss=2 + r * k,
            loss_lo=1.9 + r * k,
            loss_hi=2.1 + r * k,
            kl=r * k,
            agreement=1 - r / k,
        )
        for c, k in (("reap", 1.0), ("frequency", 2.0), ("random", 4.0))
        for r in (0.0, 0.25, 0.5)
        for d in ("all", "code")
    ]
    e = StudyExplorer(pd.DataFrame(rows), metrics=["kl", "loss"])
    assert e.methods.value == ("reap", "frequency", "random") and "best first: reap" in e.summary.value
    _each_control_redraws(e, [(e.methods, ("frequency", "random")), (e.metric, "loss"), (e.domain, "code")])
    fig = e.figures["curves"]
    legend = fig.axes[0].get_legend() or fig.legends[0]  # on the axes, or below the panels
    assert {t.get_text() for t in legend.get_texts()} == {"frequency", "random"}
    e.methods.value = ()
    assert e.summary.value == "Pick one method or more."


def test_an_explorer_shows_as_a_widget_or_one_line_never_a_repr(obs):
    from reapkit.plot.widgets import SaliencyExplorer, markdown_html

    e = SaliencyExplorer(obs, criteria=["reap"], views=("mask",))
    bundle = e._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == e.widget.model_id
    text = bundle["text/plain"]
    assert text.startswith("SaliencyExplorer (layer, criterion, domain, removed):") and "VBox" not in text
    assert markdown_html("**Reading.** a < b\n\n- one") == "<b>Reading.</b> a &lt; b<br>• one"
    assert np.isfinite(e.seconds)
