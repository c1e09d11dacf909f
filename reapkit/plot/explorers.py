"""The explorers of notebooks 02, 03 and 04: clusters, what a plan costs, the paper figures' parameters.

    ClusterExplorer(distances, scores, n_clusters=4, ratio=0.5)   # 02: layer, space, cluster cut
    CostExplorer(results, plans)                                  # 03: a plan and its cost per domain
    FigureExplorer(obs, results=results, sensitivity=layers)      # 04: each figure and its parameters
    e = CostExplorer(results, plans); e.ratio.value = 0.25        # every change redraws

Each takes what its notebook has already computed (distances, evaluated plans, tables, observations)
and draws with the figure functions of :mod:`reapkit.plot`; a control change only looks up and
redraws, nothing runs through the model. The machinery (controls over an output area, the caption
line, how an explorer displays) is :mod:`reapkit.plot.widgets`'; a notebook shows its explorer in a
live JupyterLab session (`reapkit.run.lab.show_explorer`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from reapkit.errors import InvalidInput
from reapkit.plot.widgets import _Explorer, markdown_html, ratio_label, ratio_options

__all__ = ["ClusterExplorer", "CostExplorer", "FigureExplorer", "FIGURES"]

_STYLE = {"description_width": "70px"}


def _slider(w, options, value, description, width="380px"):
    return w.SelectionSlider(
        options=options,
        value=value,
        description=description,
        style=_STYLE,
        continuous_update=False,
        layout=w.Layout(width=width),
    )


def _dropdown(w, options, value, description):
    return w.Dropdown(options=options, value=value, description=description, style=_STYLE)


class ClusterExplorer(_Explorer):
    """Notebook 02: layer, distance space and cluster cut over precomputed distances, with saliency by cluster.

        scores = {layer: reap[i] for i, layer in enumerate(obs.layers)}
        e = ClusterExplorer(distances, scores, n_clusters=4)
        e.space.value = "weights"; e.cut.value = 6

    `distances` {(space, layer): [E, E]} as `reapkit.select.geometry.distance_matrices` returns them (the weight
    and router spaces come from the model, already computed); `scores` {layer: [E]} the saliency drawn on the
    clusters, `ratio` the plan that hatches the experts it prunes. The linkage of each (space, layer) is
    computed once; moving the cut only relabels.
    """

    def __init__(
        self, distances: dict, scores: dict, *, n_clusters: int = 4, ratio: float | None = 0.5, criterion="reap"
    ):
        import ipywidgets as w

        from reapkit.select.geometry import cluster

        if not distances:
            raise InvalidInput("ClusterExplorer needs distances {(space, layer): matrix}; none were given")
        self.distances, self.scores, self.ratio, self.criterion = dict(distances), scores, ratio, criterion
        self.trees = {key: cluster(d) for key, d in self.distances.items()}
        spaces = list(dict.fromkeys(space for space, _ in self.distances))
        layers = sorted({layer for _, layer in self.distances})
        experts = min(len(d) for d in self.distances.values())
        self.layer = _slider(w, layers, layers[0], "layer", width="300px")
        self.space = _dropdown(w, spaces, "output" if "output" in spaces else spaces[0], "space")
        self.cut = w.IntSlider(
            value=min(max(n_clusters, 1), experts),
            min=1,
            max=experts,
            description="clusters",
            style=_STYLE,
            continuous_update=False,
        )
        self.summary = w.HTML()
        self.controls = (self.layer, self.space, self.cut)
        self._wire([w.HBox([self.layer, self.space]), self.cut, self.summary])

    def clustering(self):
        """The current (space, layer)'s clustering cut into the current number of clusters."""
        from reapkit.select.geometry import Clustering, clusters_at

        tree = self.trees[self.space.value, self.layer.value]
        return Clustering(tree.linkage, tree.order, clusters_at(tree, min(self.cut.value, len(tree.order))))

    def caption(self) -> str:
        from reapkit.study import readings

        clustering = self.clustering()
        sizes = ", ".join(str(len(m)) for m in clustering.members())
        text = (
            f"layer {self.layer.value}, {self.space.value} space: {clustering.n_clusters} clusters of {sizes} experts."
        )
        if self.ratio is not None and self.layer.value in self.scores:
            text += " " + readings.clusters(
                {self.layer.value: self.scores[self.layer.value]},
                {self.layer.value: clustering.labels},
                ratio=self.ratio,
            )
        return markdown_html(text)

    def draw(self) -> dict:
        from reapkit import plot

        layer, space = self.layer.value, self.space.value
        clustering = self.clustering()
        fig = plt.figure(figsize=(plot.TWO_COLUMN, 2.8), layout="constrained")
        left, right = fig.subfigures(1, 2, width_ratios=[1, 1.3])
        plot.distance_heatmap(
            self.distances[space, layer], clustering, title=f"layer {layer}: {space} distances", fig=left
        )
        ax = right.add_subplot(1, 1, 1)
        if layer in self.scores:
            plot.saliency_clusters(
                self.scores[layer],
                clustering,
                ratio=self.ratio,
                ax=ax,
                title=f"{self.criterion} on {space}-space clusters",
            )
        else:
            ax.axis("off")
        return {"clusters": fig}


def _value_text(row, metric) -> str:
    value = f"{row[metric]:+.2f}" if metric == "delta_loss" else f"{row[metric]:.2f}"
    if f"{metric}_lo" in row and np.isfinite(row[f"{metric}_lo"]):
        value += f" [{row[f'{metric}_lo']:.2f}, {row[f'{metric}_hi']:.2f}]"
    return value


class CostExplorer(_Explorer):
    """Notebook 03: a plan (criterion and ratio) and what it costs on each evaluation domain.

        results, reconstruction = evaluate_plans(model, plans, batches)
        e = CostExplorer(results, plans)
        e.criterion.value = "frequency"; e.metric.value = "kl"

    `results` is the frame `reapkit.measure.evaluate.evaluate_plans` returns (one row per plan and
    domain, intervals, the unpruned rows at ratio 0); `plans` {(criterion, ratio): PruningPlan} the
    plans it measured. Left: which experts the plan keeps; right: the metric per domain, the chosen
    plan's bars with their 95% intervals, the other criteria at the same ratio as dots.
    """

    def __init__(self, results, plans: dict, *, metrics=("delta_loss", "kl", "agreement", "loss")):
        import ipywidgets as w

        metrics = [m for m in metrics if m in results.columns]
        if not plans or not metrics:
            raise InvalidInput(
                "CostExplorer needs the evaluated plans and a results frame with delta_loss, kl or agreement"
            )
        self.results, self.plans = results, plans
        criteria = list(dict.fromkeys(c for c, _ in plans))
        ratios = sorted({r for _, r in plans})
        self.experts = min(min(p.num_experts.values()) for p in plans.values())
        self.criterion = _dropdown(w, criteria, criteria[0], "criterion")
        self.ratio = _slider(w, [(ratio_label(r, self.experts), r) for r in ratios], ratios[-1], "removed")
        self.metric = _dropdown(w, metrics, metrics[0], "metric")
        self.summary = w.HTML()
        self.controls = (self.criterion, self.ratio, self.metric)
        self._wire([w.HBox([self.criterion, self.ratio]), self.metric, self.summary])

    def plan(self):
        return self.plans[self.criterion.value, self.ratio.value]

    def rows(self, criterion=None):
        """The results rows of one criterion (default: the chosen one) at the chosen ratio, "all" first."""
        r = self.results
        part = r[(r["criterion"] == (criterion or self.criterion.value)) & np.isclose(r["ratio"], self.ratio.value)]
        return part.sort_values("domain", key=lambda d: d.map(lambda x: (x != "all", x)))

    def caption(self) -> str:
        plan, metric = self.plan(), self.metric.value
        kept = sorted({len(k) for k in plan.kept.values()})
        count = str(kept[0]) if len(kept) == 1 else f"{kept[0]}-{kept[-1]}"
        costs = ", ".join(f"{row['domain']} {_value_text(row, metric)}" for _, row in self.rows().iterrows())
        return (
            f"<b>{self.criterion.value}</b>, {ratio_label(self.ratio.value, self.experts)} removed: "
            f"<span class='reapkit-kept'>{count}</span> of {self.experts} experts kept per layer. {metric}: {costs}"
        )

    def draw(self) -> dict:
        from reapkit import plot
        from reapkit.measure.schema import METRIC_LABELS

        metric, criterion = self.metric.value, self.criterion.value
        fig, (left, right) = plt.subplots(
            1, 2, figsize=(plot.TWO_COLUMN, 2.2), width_ratios=[1, 1.2], layout="constrained"
        )
        label = ratio_label(self.ratio.value, self.experts)
        plot.plan_mask(self.plan(), title=f"{criterion}, {label} removed", legend=False, ax=left)
        rows = self.rows()
        domains = list(rows["domain"])
        x = np.arange(len(domains))
        errors = None
        if f"{metric}_lo" in rows:
            errors = np.vstack([rows[metric] - rows[f"{metric}_lo"], rows[f"{metric}_hi"] - rows[metric]]).clip(min=0)
        right.bar(
            x,
            rows[metric],
            width=0.6,
            color=plot.criterion_color(criterion),
            yerr=errors,
            label=criterion,
            error_kw=dict(elinewidth=0.7, capsize=1.5, ecolor="black"),
        )
        others = [c for c in dict.fromkeys(c for c, _ in self.plans) if c != criterion]
        for i, other in enumerate(others):
            part = self.rows(other).set_index("domain").reindex(domains)
            offset = (i - (len(others) - 1) / 2) * 0.12
            right.plot(x + offset, part[metric], "o", markersize=3, color=plot.criterion_color(other), label=other)
        right.axhline(0, color="0.5", linewidth=0.5)
        right.set_xticks(x, domains)
        right.set_xlabel("evaluation domain (bars: 95% bootstrap CI; dots: other criteria)")
        right.set_ylabel(METRIC_LABELS.get(metric, metric))
        right.set_title("cost per domain", loc="left")
        fig.legend(loc="outside right upper")
        return {"cost": fig}


#: Notebook 04's figures and the controls each one reads.
FIGURES = {
    "saliency_dendrogram": ("criterion", "ratio", "layer"),
    "reap_vs_frequency": ("ratio",),
    "global_budget": ("criterion", "ratio"),
    "coactivation": ("layer",),
    "layer_sensitivity": ("domain",),
    "compression": ("ratio", "domain"),  # the ratio of its reading: the nearest one the study measured
}


class FigureExplorer(_Explorer):
    """Notebook 04: pick a figure, then its parameters (criterion, ratio, layer, domain); its reading follows.

        e = FigureExplorer(obs, results=results, sensitivity=layer_sensitivity)
        e.figure.value = "global_budget"; e.ratio.value = 0.25

    `obs` the observations (scores, distances and co-selection are computed from them once), `results`
    the study's tidy results (`compression`), `sensitivity` the per-layer table (`layer_sensitivity`);
    a figure without its data is not offered. Controls a figure does not read are disabled.
    """

    def __init__(
        self,
        obs,
        *,
        results=None,
        sensitivity=None,
        criteria=("reap", "frequency", "soft_frequency", "ean_mean"),
        criterion: str = "reap",
        ratio: float = 0.5,
        layer=None,
        seed: int = 0,
        figure: str = "saliency_dendrogram",
    ):
        import ipywidgets as w

        from reapkit.select.criteria import scores_frame, usable_criteria
        from reapkit.select.geometry import cluster, distance_matrices

        self.obs, self.seed = obs, seed
        self.results = results if results is not None and len(results) else None
        self.sensitivity = sensitivity if sensitivity is not None and len(sensitivity) else None
        criteria = usable_criteria(obs, list(dict.fromkeys([criterion, *criteria, "reap", "frequency"])))
        self.scores = scores_frame(obs, criteria, per_domain=False, seed=seed)
        distances = distance_matrices(obs=obs, layers=obs.layers, spaces=["output"])
        self.distances = {layer: distances["output", layer] for layer in obs.layers}
        self.trees = {layer: cluster(d) for layer, d in self.distances.items()}
        self.coselect = obs.coselection()
        self.experts = min(obs.num_experts)
        figures = [
            f
            for f in FIGURES
            if not (f == "compression" and self.results is None)
            and not (f == "layer_sensitivity" and self.sensitivity is None)
        ]
        domains = [
            frame["domain"] for frame in (self.results, self.sensitivity) if frame is not None and "domain" in frame
        ]
        domains = sorted({d for column in domains for d in column}, key=lambda d: (d != "all", d)) or ["all"]
        options = ratio_options(self.experts, obs.top_k)
        self.figure = _dropdown(w, figures, figure if figure in figures else figures[0], "figure")
        self.criterion = _dropdown(w, criteria, criterion if criterion in criteria else criteria[0], "criterion")
        self.ratio = _slider(w, options, min(options, key=lambda o: abs(o[1] - ratio))[1], "removed")
        self.layer = _slider(w, obs.layers, layer if layer in obs.layers else obs.layers[0], "layer", width="300px")
        self.domain = _dropdown(w, domains, domains[0], "domain")
        self.summary = w.HTML()
        self.controls = (self.figure, self.criterion, self.ratio, self.layer, self.domain)
        self._wire([w.HBox([self.figure, self.criterion, self.domain]), w.HBox([self.ratio, self.layer]), self.summary])

    def _values(self, criterion, layer) -> np.ndarray:
        part = self.scores[(self.scores["criterion"] == criterion) & (self.scores["layer"] == layer)]
        return part.sort_values("expert")["value"].to_numpy(float)

    def update(self) -> None:
        used = FIGURES[self.figure.value]
        for name in ("criterion", "ratio", "layer", "domain"):
            getattr(self, name).disabled = name not in used
        super().update()

    def _plans(self):
        from reapkit.select.plan import PruningPlan

        criterion, ratio = self.criterion.value, self.ratio.value
        uniform = PruningPlan.from_observations(self.obs, criterion, ratio=ratio, seed=self.seed)
        return uniform, PruningPlan.from_global_budget(self.obs, criterion, total=uniform.total_kept, seed=self.seed)

    def _frame(self, frame):
        return frame[frame["domain"] == self.domain.value] if "domain" in frame else frame

    def caption(self) -> str:
        from reapkit.select.geometry import clusters_at
        from reapkit.study import readings

        name, criterion, ratio, layer = self.figure.value, self.criterion.value, self.ratio.value, self.layer.value
        if name == "saliency_dendrogram":
            labels = clusters_at(self.trees[layer], max(2, len(self.distances[layer]) // 4))
            text = readings.clusters({layer: self._values(criterion, layer)}, {layer: labels}, ratio=ratio)
        elif name == "reap_vs_frequency":
            text = readings.disagreement(self.scores, ratio=ratio)
        elif name == "global_budget":
            text = readings.global_budget(*self._plans())
        elif name == "coactivation":
            text = readings.coactivation(self.coselect[self.obs.layers.index(layer)])
        elif name == "layer_sensitivity":
            text = readings.sensitivity(self._frame(self.sensitivity))
        else:
            text = readings.study_curves(
                self.results, ratio=self._reading_ratio(), metric="delta_loss", domain=self.domain.value
            )
        return markdown_html(text)

    def _reading_ratio(self) -> float:
        """The ratio the study measured nearest to the ratio control (where the compression figure is read)."""
        measured = sorted(set(self.results["ratio"]) - {0}) or [self.ratio.value]
        return min(measured, key=lambda r: abs(r - self.ratio.value))

    def draw(self) -> dict:
        from reapkit import plot

        name, criterion, ratio, layer = self.figure.value, self.criterion.value, self.ratio.value, self.layer.value
        if name == "saliency_dendrogram":
            ax = plot.saliency_dendrogram(
                self.distances[layer],
                self._values(criterion, layer),
                clustering=self.trees[layer],
                ratio=ratio,
                criterion=criterion,
                title=f"layer {layer}: experts by output distance",
            )
            fig = ax.figure
        elif name == "reap_vs_frequency":
            fig = plot.reap_vs_frequency(self.scores, ratio=ratio).figure
        elif name == "global_budget":
            uniform, budget = self._plans()
            from reapkit.study.kept import budget_table

            fig, (left, right) = plot.panels(2, ncols=2, width=plot.TWO_COLUMN, size=(2.6, 2.3))
            plot.global_budget(budget_table(budget, uniform, floor=self.obs.top_k), ratio=ratio, ax=left)
            plot.kept_per_layer(
                {f"uniform {plot.label(criterion)}": uniform, plot.label(f"global_{criterion}"): budget}, ax=right
            )
            plot.legend_below(fig, [left, right], ncols=3)
        elif name == "coactivation":
            coselect = self.coselect[self.obs.layers.index(layer)]
            fig = plot.coactivation_matrix(
                coselect, clustering=self.trees[layer], title=f"layer {layer}: co-selection"
            ).figure
        elif name == "layer_sensitivity":
            frame = self._frame(self.sensitivity)
            measured = float(frame["ratio"].iloc[0]) if "ratio" in frame and len(frame) else None
            fig = plot.layer_sensitivity(frame, ratio=measured).figure
        else:
            fig = plot.compression_figure(self.results, domain=self.domain.value)
            for ax in fig.axes[:2]:  # where the reading below reads the curves
                ax.axvline(self._reading_ratio(), color="0.5", linewidth=0.6, linestyle=":", zorder=0)
        return {name: fig}
