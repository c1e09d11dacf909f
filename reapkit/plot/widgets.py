"""Interactive explorers (ipywidgets) over saved observations and study results: nothing runs through the model.

In a Jupyter notebook (the views are drawn into the notebook's output area)::

    from reapkit.plot.widgets import explorer, study_explorer
    e = explorer("runs/obs", criteria=["reap", "frequency"])   # or an Observations object
    e                                          # a cell ending in the explorer shows it
    e.layer.value = 3; e.ratio.value = 0.5     # every change redraws the views
    study_explorer(results)                    # notebook 05: metric and domain dropdowns

Each notebook has its explorer (the others, for notebooks 02-04, live in :mod:`reapkit.plot.explorers`);
a notebook shows it in a live JupyterLab session (`reapkit.run.lab.show_explorer`). An explorer
displays as its widget; where no widget can show, as one line naming it (never an object's repr).

Controls: layer slider, criterion and domain dropdowns, ratio slider. The ratio slider offers only
the ratios a uniform plan can meet (0, 1/E, 2/E, ... removed, each layer keeping at least top-k
experts), labelled as the figures label them. Views:

    saliency   sorted scores of the layer with the ratio's cut-off, and the layers x experts heatmap
    clusters   output-space angular distances with their dendrogram, and saliency by cluster
    mask       layers x experts kept / pruned at the criterion and ratio

A line of text under the controls says what the plan keeps ("12 of 16 experts kept per layer") and
which experts the chosen layer keeps.
Scores, distances and clusterings are computed once when the explorer is built (from the
observations alone) and only looked up when a control changes.
"""

from __future__ import annotations

import html
import re
import time

import matplotlib.pyplot as plt
import numpy as np

from reapkit.errors import InvalidInput
from reapkit.select.plan import pruned_count

__all__ = [
    "SaliencyExplorer",
    "StudyExplorer",
    "explorer",
    "study_explorer",
    "ratio_options",
    "ratio_label",
    "markdown_html",
]

VIEWS = ("saliency", "clusters", "mask")


def ratio_label(ratio: float, num_experts: int) -> str:
    """How the controls and figures name a ratio.

    ratio_label(0.625, 16)
    '62% (10/16)'
    """
    return f"{ratio:.0%} ({pruned_count(num_experts, ratio)}/{num_experts})"


def ratio_options(num_experts: int, top_k: int) -> list[tuple[str, float]]:
    """(label, ratio) of every ratio a uniform plan can meet: 0 to num_experts - top_k experts removed.

    ratio_options(16, 2)[-1]                 # the ratio slider's last stop: 14 of 16 removed, top-2 kept
    ('88% (14/16)', 0.875)
    """
    return [(ratio_label(n / num_experts, num_experts), n / num_experts) for n in range(num_experts - top_k + 1)]


def markdown_html(text: str) -> str:
    """A reading (`reapkit.study.readings`: bold, list items, paragraphs) as HTML for a caption.

    markdown_html("**Reading.** a < b\n\n- one")
    '<b>Reading.</b> a &lt; b<br>• one'
    """
    text = html.escape(text.strip(), quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"^- ", "• ", text, flags=re.M)
    return re.sub(r"\n+", "<br>", text)


class _Explorer:
    """Controls over an output area; `update()` redraws `draw()`'s figures into it (`seconds`: the last redraw)."""

    controls: tuple = ()

    def _wire(self, rows):
        import ipywidgets as w

        self.output = w.Output()
        self.redraws = 0
        self.seconds = 0.0
        self.figures: dict[str, plt.Figure] = {}
        for control in self.controls:
            control.observe(lambda change: self.update(), names="value")
        self.widget = w.VBox([*rows, self.output])
        self.update()

    def draw(self) -> dict:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def caption(self) -> str:
        return ""

    def update(self) -> None:
        """Redraw every view into the output area (called on every control change)."""
        from IPython.display import display

        from reapkit.plot.theme import style

        start = time.perf_counter()
        for fig in self.figures.values():
            plt.close(fig)
        with style():  # the figures' own style, also for the panels an explorer lays out itself
            self.figures = self.draw()
        if hasattr(self, "summary"):
            self.summary.value = self.caption()
        with self.output:
            self.output.clear_output(wait=True)
            for fig in self.figures.values():
                display(fig)
        for fig in self.figures.values():
            plt.close(fig)  # displayed as an image; do not show twice under the inline backend
        self.redraws += 1
        self.seconds = time.perf_counter() - start

    def _repr_mimebundle_(self, **kwargs):
        """The widget; as text (where no widget can show, or in a notebook saved and opened again), one line
        naming the explorer and its controls."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        names = ", ".join(c.description for c in self.controls)
        bundle["text/plain"] = f"{type(self).__name__} ({names}): run this cell in JupyterLab to explore"
        return bundle


class SaliencyExplorer(_Explorer):
    """Layer / criterion / domain / ratio controls redrawing saliency, cluster and mask views."""

    def __init__(
        self,
        obs,
        *,
        criteria=None,
        n_clusters: int | None = None,
        views=VIEWS,
        distances: dict | None = None,
        seed: int = 0,
        ratio: float = 0.25,
    ):
        import ipywidgets as w

        from reapkit.observe.observations import Observations
        from reapkit.select.criteria import DEFAULT_CRITERIA, scores_frame
        from reapkit.select.geometry import angular_distances, cluster, output_vectors

        unknown = [c for c in views if c not in VIEWS]
        if unknown:
            raise InvalidInput(f"unknown view(s) {unknown}; choose from {', '.join(VIEWS)}")
        if not isinstance(obs, Observations):
            obs = Observations.load(obs)
        self.obs = obs
        criteria = list(criteria or DEFAULT_CRITERIA)
        self.views = tuple(views)
        self.seed = seed
        self.scores = scores_frame(obs, criteria, per_domain=True, seed=seed)
        self.experts = min(obs.num_experts)
        self.n_clusters = n_clusters or max(2, min(self.experts, self.experts // 4))
        self.distances, self.clusterings = {}, {}
        if "clusters" in self.views:  # {layer: [E, E]}; given distances (e.g. weight space) override the output space
            self.distances = (
                dict(distances)
                if distances
                else {layer: angular_distances(output_vectors(obs, layer)) for layer in obs.layers}
            )
            self.clusterings = {
                layer: cluster(d, n_clusters=min(self.n_clusters, len(d))) for layer, d in self.distances.items()
            }

        style = {"description_width": "70px"}
        options = ratio_options(self.experts, obs.top_k)
        nearest = min(options, key=lambda o: abs(o[1] - ratio))[1]
        self.layer = w.SelectionSlider(
            options=obs.layers, value=obs.layers[0], description="layer", style=style, continuous_update=False
        )
        self.criterion = w.Dropdown(options=criteria, value=criteria[0], description="criterion", style=style)
        self.domain = w.Dropdown(options=["all", *obs.domains], value="all", description="domain", style=style)
        self.ratio = w.SelectionSlider(
            options=options,
            value=nearest,
            description="removed",
            style=style,
            continuous_update=False,
            layout=w.Layout(width="420px"),
        )
        self.summary = w.HTML()
        self.controls = (self.layer, self.criterion, self.domain, self.ratio)
        self._wire([w.HBox([self.layer, self.ratio]), w.HBox([self.criterion, self.domain]), self.summary])

    def layer_scores(self, layer=None, criterion=None, domain=None) -> np.ndarray:
        """Scores [E] of one layer for the current (or given) criterion and domain."""
        layer = self.layer.value if layer is None else layer
        frame = self.scores
        part = frame[
            (frame["layer"] == layer)
            & (frame["criterion"] == (criterion or self.criterion.value))
            & (frame["domain"] == (domain or self.domain.value))
        ].sort_values("expert")
        return part["value"].to_numpy(float)

    def plan(self):
        """The PruningPlan of the current criterion, domain and ratio, as `PruningPlan.from_observations` makes it."""
        from reapkit.select.plan import PruningPlan

        domain = self.domain.value
        return PruningPlan.from_observations(
            self.obs,
            self.criterion.value,
            ratio=self.ratio.value,
            seed=self.seed,
            domains=None if domain == "all" else [domain],
        )

    def caption(self) -> str:
        plan = self.plan()
        kept = sorted({len(k) for k in plan.kept.values()})
        count = str(kept[0]) if len(kept) == 1 else f"{kept[0]}-{kept[-1]}"
        layer = self.layer.value
        return (
            f"<b>{ratio_label(self.ratio.value, self.experts)}</b> removed by <b>{plan.criterion}</b>: "
            f"<span class='reapkit-kept'>{count}</span> of {self.experts} experts kept per layer; layer {layer} keeps "
            f"<span class='reapkit-kept-set'>{' '.join(str(e) for e in sorted(plan.kept[layer]))}</span>"
        )

    def draw(self) -> dict:
        """Draw the views for the current control values; returns {view: Figure}."""
        from reapkit import plot

        layer, criterion, domain, ratio = self.layer.value, self.criterion.value, self.domain.value, self.ratio.value
        part = self.scores[self.scores["domain"] == domain]
        label = ratio_label(ratio, self.experts)
        figures = {}
        if "saliency" in self.views:
            fig, (left, right) = plot.panels(2, ncols=2)
            plot.saliency_curves(part[part["layer"] == layer], criterion=criterion, domain=domain, ratio=ratio, ax=left)
            left.set_title("")  # the figure's own title, replaced by one naming the layer
            left.set_title(f"layer {layer}, {label} removed", loc="left")  # the criterion: y label, heatmap
            plot.saliency_heatmap(part, criterion=criterion, domain=domain, ax=right)
            figures["saliency"] = fig
        if "clusters" in self.views:
            clustering = self.clusterings[layer]
            fig = plt.figure(figsize=(plot.TWO_COLUMN, 2.8), layout="constrained")
            left, right = fig.subfigures(1, 2, width_ratios=[1, 1.3])
            plot.distance_heatmap(self.distances[layer], clustering, title=f"layer {layer}: output distances", fig=left)
            plot.saliency_clusters(
                self.layer_scores(),
                clustering,
                ratio=ratio,
                ax=right.add_subplot(1, 1, 1),
                title=f"{criterion} by cluster ({self.n_clusters} clusters)",
            )
            figures["clusters"] = fig
        if "mask" in self.views:
            fig, (ax,) = plot.panels(1, ncols=1)
            plot.plan_mask(self.plan(), ax=ax)  # its criterion, domain and ratio: the line above
            figures["mask"] = fig
        return figures


class StudyExplorer(_Explorer):
    """Methods, metric and domain over a study's results (notebook 05), redrawing its curves and their reading.

        e = StudyExplorer(results, metrics=["delta_loss", "kl"])
        e.methods.value = ("reap", "frequency")

    `methods`: a multiple selection of the study's curves (`label`: criteria, random, merges, global budget);
    each keeps its unpruned start. The reading under the controls compares them at `ratio`.
    """

    def __init__(self, results, *, metrics=None, ratio: float = 0.5):
        import ipywidgets as w

        from reapkit.measure.schema import UNPRUNED

        self.results = results
        self.hue = "label" if "label" in results.columns else "criterion"
        ratios = sorted(set(results["ratio"]) - {0})
        self.reading_ratio = min(ratios, key=lambda r: abs(r - ratio)) if ratios else ratio
        metrics = [
            m
            for m in (metrics or ("loss", "kl", "top1_agreement", "agreement", "perplexity", "delta_loss"))
            if m in results.columns
        ]
        if not metrics:
            raise InvalidInput(
                "the results have none of the metrics loss, kl, agreement, perplexity; pass the frame evaluate or a study wrote"
            )
        domains = sorted(set(results["domain"]), key=lambda d: (d != "all", d))
        methods = [m for m in dict.fromkeys(results[self.hue]) if m != UNPRUNED]
        style = {"description_width": "60px"}
        self.methods = w.SelectMultiple(
            options=methods, value=tuple(methods), rows=min(len(methods), 8), description="methods", style=style
        )
        self.metric = w.Dropdown(options=metrics, value=metrics[0], description="metric", style=style)
        self.domain = w.Dropdown(options=domains, value=domains[0], description="domain", style=style)
        self.summary = w.HTML()
        self.controls = (self.methods, self.metric, self.domain)
        self._wire([w.HBox([self.methods, w.VBox([self.metric, self.domain])]), self.summary])

    def chosen(self):
        """The rows of the chosen methods (each with its unpruned start)."""
        return self.results[self.results[self.hue].isin(self.methods.value)]

    def caption(self) -> str:
        from reapkit.study import readings

        if not self.methods.value:
            return "Pick one method or more."
        return markdown_html(
            readings.study_curves(
                self.chosen(), ratio=self.reading_ratio, metric=self.metric.value, domain=self.domain.value
            )
        )

    def draw(self) -> dict:
        from reapkit import plot

        ax = plot.loss_vs_ratio(self.chosen(), metric=self.metric.value, domain=self.domain.value, focus=True)
        return {"curves": ax.figure}


def explorer(obs, **kwargs) -> SaliencyExplorer:
    """Build a :class:`SaliencyExplorer` from `Observations` or a saved observations directory."""
    return SaliencyExplorer(obs, **kwargs)


def study_explorer(results, **kwargs) -> StudyExplorer:
    """Build a :class:`StudyExplorer` over a study's results frame."""
    return StudyExplorer(results, **kwargs)
