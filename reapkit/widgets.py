"""Interactive explorers (ipywidgets) over saved observations: nothing runs through the model.

    >>> from reapkit.widgets import explorer
    >>> explorer("runs/cache/0123abcd")          # or an Observations object; displays in Jupyter
    >>> e = SaliencyExplorer(obs, criteria=["reap", "frequency"])
    >>> e.layer.value = 3; e.ratio.value = 0.5   # every change redraws the three views

Controls: layer slider, criterion and domain dropdowns, ratio slider. Views:

    saliency   sorted scores of the layer with the ratio's cut-off, and the layers x experts heatmap
    clusters   output-space angular distances with their dendrogram, and saliency by cluster
    mask       layers x experts kept / pruned at the criterion and ratio

Scores, distances and clusterings are computed once when the explorer is built (from the
observations alone) and only looked up when a control changes.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["SaliencyExplorer", "explorer"]


class SaliencyExplorer:
    """Layer / criterion / domain / ratio controls redrawing saliency, cluster and mask views."""

    def __init__(self, obs, *, criteria=None, n_clusters: int | None = None, views=("saliency", "clusters", "mask"),
                 distances: dict | None = None, seed: int = 0):
        import ipywidgets as w

        from .geometry import angular_distances, cluster, output_vectors
        from .observations import Observations
        from .saliency import CRITERIA_NAMES, scores_frame

        if not isinstance(obs, Observations):
            obs = Observations.load(obs)
        self.obs = obs
        criteria = list(criteria or [c for c in ("reap", "frequency", "ean_mean", "soft_frequency") if c in CRITERIA_NAMES])
        unknown = [c for c in views if c not in ("saliency", "clusters", "mask")]
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}; choose from saliency, clusters, mask")
        self.views = tuple(views)
        self.seed = seed
        self.scores = scores_frame(obs, criteria, per_domain=True, seed=seed)
        experts = max(obs.num_experts)
        self.n_clusters = n_clusters or max(2, min(experts, experts // 4))
        # {layer: [E, E]}; given distances (e.g. weight space) override the output space.
        self.distances = dict(distances) if distances else {
            layer: angular_distances(output_vectors(obs, layer)) for layer in obs.layers}
        self.clusterings = {layer: cluster(d, n_clusters=min(self.n_clusters, len(d))) for layer, d in self.distances.items()}

        style = {"description_width": "70px"}
        self.layer = w.SelectionSlider(options=obs.layers, value=obs.layers[0], description="layer", style=style,
                                       continuous_update=False)
        self.criterion = w.Dropdown(options=criteria, value=criteria[0], description="criterion", style=style)
        self.domain = w.Dropdown(options=["all", *obs.domains], value="all", description="domain", style=style)
        self.ratio = w.FloatSlider(value=0.25, min=0.0, max=0.9, step=1 / max(experts, 1), description="ratio",
                                   readout_format=".0%", style=style, continuous_update=False)
        self.output = w.Output()
        self.redraws = 0
        self.figures: dict[str, plt.Figure] = {}
        for control in (self.layer, self.criterion, self.domain, self.ratio):
            control.observe(self._on_change, names="value")
        self.widget = w.VBox([w.HBox([self.layer, self.ratio]), w.HBox([self.criterion, self.domain]), self.output])
        self.update()

    # ----------------------------------------------------------------------------------------
    def _on_change(self, change):
        self.update()

    def layer_scores(self, layer=None, criterion=None, domain=None) -> np.ndarray:
        """Scores [E] of one layer for the current (or given) criterion and domain."""
        layer = self.layer.value if layer is None else layer
        frame = self.scores
        part = frame[(frame["layer"] == layer) & (frame["criterion"] == (criterion or self.criterion.value))
                     & (frame["domain"] == (domain or self.domain.value))].sort_values("expert")
        return part["value"].to_numpy(float)

    def plan(self):
        """The PruningPlan of the current criterion, domain and ratio, as `PruningPlan.from_observations` makes it."""
        from .plan import PruningPlan

        obs, domain = self.obs, self.domain.value
        ratio = min(self.ratio.value, max(0.0, 1 - obs.top_k / min(obs.num_experts)))  # never below top-k
        return PruningPlan.from_observations(obs, self.criterion.value, ratio=ratio,
                                             domains=None if domain == "all" else [domain])

    def draw(self) -> dict:
        """Draw the views for the current control values; returns {view: Figure}."""
        from . import plot

        layer, criterion, domain, ratio = self.layer.value, self.criterion.value, self.domain.value, self.ratio.value
        part = self.scores[self.scores["domain"] == domain]
        figures = {}
        if "saliency" in self.views:
            fig, (left, right) = plot.panels(2, ncols=2, size=(4.2, 3.0))
            plot.saliency_curves(part[part["layer"] == layer], criterion=criterion, domain=domain, ratio=ratio, ax=left)
            left.set_title(f"layer {layer}: {criterion} sorted ({domain})")
            plot.saliency_heatmap(part, criterion=criterion, domain=domain, sort=False, ax=right)
            figures["saliency"] = fig
        if "clusters" in self.views:
            clustering = self.clusterings[layer]
            fig = plt.figure(figsize=(10, 4.2), layout="constrained")
            left, right = fig.subfigures(1, 2, width_ratios=[1, 1.4])
            plot.distance_heatmap(self.distances[layer], clustering, title=f"layer {layer}: expert distances", fig=left)
            ax = right.add_subplot(1, 1, 1)
            plot.saliency_clusters(self.layer_scores(), clustering, ratio=ratio, ax=ax,
                                   title=f"{criterion} by cluster ({self.n_clusters} clusters)")
            figures["clusters"] = fig
        if "mask" in self.views:
            fig, (ax,) = plot.panels(1, ncols=1, size=(6, 2.6))
            plan = self.plan()
            plot.plan_mask(plan, title=f"{criterion} ({domain}), {plan.ratio:.0%} removed", ax=ax)
            figures["mask"] = fig
        return figures

    def update(self) -> None:
        """Redraw every view into the output area (called on every control change)."""
        from IPython.display import display

        for fig in self.figures.values():
            plt.close(fig)
        self.figures = self.draw()
        with self.output:
            self.output.clear_output(wait=True)
            for fig in self.figures.values():
                display(fig)
        for fig in self.figures.values():
            plt.close(fig)  # displayed as an image; do not show twice under the inline backend
        self.redraws += 1

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def explorer(obs, **kwargs) -> SaliencyExplorer:
    """Build a :class:`SaliencyExplorer` from `Observations` or a saved observations directory."""
    return SaliencyExplorer(obs, **kwargs)
