"""Figures of what plans keep: expert usage per layer, kept mass against ratio, the global budget.

>>> expert_usage(scores)                                  # Lorenz curve of routed tokens per layer
<Axes: title={'left': 'expert usage per layer'}, ...>
>>> from reapkit.study.kept import budget_table, kept_mass_table
>>> kept_mass(kept_mass_table(scores, ratios=[0.25, 0.5]))   # share of REAP score / routing kept, per criterion
<Figure size 825x345 with 2 Axes>
>>> global_budget(budget_table(global_plan, uniform_plan, floor=obs.top_k))   # the scores the budget ranks
<Axes: title={'left': 'what a global budget compares'}, ...>
>>> kept_per_layer({"reap": uniform_plan, "global_reap": global_plan})
<Axes: title={'left': 'experts kept per layer'}, ...>

The tables come from :mod:`reapkit.study.kept`.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.plot.theme import (
    COLUMN,
    REFERENCE_STYLE,
    TWO_COLUMN,
    axes,
    criterion_color,
    integer_axis,
    is_empty,
    label,
    layer_greys,
    legend_below,
    no_data,
    no_data_figure,
    percent_axis,
    plain_log_axis,
    styled,
)
from reapkit.study.kept import usage_summary, usage_table
from reapkit.study.tables import mask_frame

__all__ = ["expert_usage", "kept_mass", "global_budget", "kept_per_layer"]


@styled
def expert_usage(frame: pd.DataFrame, *, criterion: str = "frequency", ax=None):
    """Lorenz curve of each layer's routed tokens: experts from least to most used (x, share of the
    layer's experts) against the share of the tokens they receive (y). The diagonal is a router that
    uses every expert alike; experts never routed are counted (the curve starts flat).

        >>> expert_usage(scores)                # a scores frame with `frequency` (tokens routed per expert)
        <Axes: title={'left': 'expert usage per layer'}, ...>

    The legend (below; with `ax`, left to the caller: `reapkit.plot.theme.legend_below`) gives each
    layer's Gini coefficient and its never-routed experts. Returns the Axes.
    """
    own = ax is None
    fig, ax = axes(ax, (COLUMN, 3.0))
    ax.set_title("expert usage per layer", loc="left")
    table = usage_table(frame, criterion=criterion) if not is_empty(frame) else frame
    if is_empty(table):
        return no_data(ax, "no data (needs routed-token counts)")
    summary = usage_summary(frame, criterion=criterion).set_index("layer")
    greys = layer_greys(len(summary))
    ax.plot([0, 1], [0, 1], label="every expert alike", **REFERENCE_STYLE)
    for grey, (layer, part) in zip(greys, table.groupby("layer", sort=True)):
        row = summary.loc[layer]
        never = f", {int(row.never_routed)} never routed" if row.never_routed else ""
        ax.plot(
            part["position"],
            part["cumulative"],
            color=grey,
            drawstyle="steps-post" if len(part) <= 17 else "default",
            linewidth=1.0,
            label=f"layer {layer}: Gini {row.gini:.2f}{never}" if len(summary) <= 8 else None,
        )
    percent_axis(ax, "x")
    percent_axis(ax, "y")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("experts, least used first")
    ax.set_ylabel("share of routed tokens")
    if len(summary) > 8:
        bar = fig.colorbar(_depth_mappable(summary.index), ax=ax, pad=0.02)
        bar.set_label("layer (lighter: earlier)")
    if own:
        legend_below(fig, [ax], ncols=1)
    return ax


def _depth_mappable(layers):
    cmap = matplotlib.colors.LinearSegmentedColormap.from_list("depth", ["0.7", "0.0"])
    return matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(min(layers), max(layers)))


@styled
def kept_mass(table: pd.DataFrame, *, fig=None):
    """What each criterion's plan keeps against the share of experts removed: the share of each layer's
    REAP score (left) and of its routed tokens (right) that the kept experts hold; mean over layers,
    bands the range over layers. One colour per criterion, REAP thicker.

        >>> from reapkit.study.kept import kept_mass_table
        >>> kept_mass(kept_mass_table(scores, criteria=["reap", "frequency"]))
        <Figure size 825x345 with 2 Axes>

    Returns the Figure.
    """
    if is_empty(table):
        return no_data_figure(fig, "no data (needs REAP and frequency scores)", title="kept mass")
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.3), layout="constrained")
    panels = fig.subplots(1, 2, sharex=True)
    for ax, column, title in zip(
        panels, ("kept_score", "kept_routing"), ("share of REAP score kept", "share of routed tokens kept")
    ):
        for criterion, part in table.groupby("criterion", sort=False):
            stats = part.groupby("ratio")[column].agg(["mean", "min", "max"]).reset_index()
            stats = pd.concat([pd.DataFrame({"ratio": [0.0], "mean": [1.0], "min": [1.0], "max": [1.0]}), stats])
            bold = criterion == "reap"
            color = criterion_color(criterion)
            ax.plot(
                stats["ratio"],
                stats["mean"],
                color=color,
                marker="o",
                markersize=2.2,
                linewidth=1.6 if bold else 1.0,
                zorder=3 if bold else 2,
                label=label(criterion),
            )
            ax.fill_between(stats["ratio"], stats["min"], stats["max"], color=color, alpha=0.15, linewidth=0)
        ax.plot([0, 1], [1, 0], label="experts kept (a uniform share)", **REFERENCE_STYLE)
        ax.set_title(title, loc="left")
        percent_axis(ax, "x")
        percent_axis(ax, "y")
        ax.set_xlim(0, float(table["ratio"].max()) + 0.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("experts removed")
        ax.set_ylabel(title.replace(" kept", ""))
    legend_below(fig, panels, title="mean over layers; bands: range over layers")
    return fig


@styled
def global_budget(table: pd.DataFrame, *, ratio: float | None = None, ax=None):
    """The scores a global budget ranks: each expert's score divided by its layer's mean (log axis),
    one column of dots per layer, kept by the budget (filled) or pruned (hollow), and the budget's one
    threshold across layers (grey line); experts kept by their layer's floor (top-k) whatever their
    score are diamonds. Short bars: each layer's cut-off under a uniform plan at `ratio`, on the same scale.

        >>> from reapkit.study.kept import budget_table
        >>> global_budget(budget_table(global_plan, uniform_plan, floor=obs.top_k), ratio=0.5)
        <Axes: title={'left': 'what a global budget compares'}, ...>

    Returns the Axes; the legend goes below (with `ax`, left to the caller: `legend_below`).
    """
    own = ax is None
    fig, ax = axes(ax, (COLUMN, 2.6))
    ax.set_title("what a global budget compares", loc="left")
    if is_empty(table):
        return no_data(ax)
    color, uniform_color = criterion_color("global_reap"), criterion_color("reap")
    rng = np.random.default_rng(0)
    layers = sorted(set(table["layer"]))
    floor_value = (
        table.loc[table["budget_score"] > 0, "budget_score"].min() / 2 if (table["budget_score"] > 0).any() else 1e-3
    )
    for x, layer in enumerate(layers):
        part = table[table["layer"] == layer]
        jitter = rng.uniform(-0.22, 0.22, len(part))
        y = part["budget_score"].clip(lower=floor_value).to_numpy()
        groups = (
            ("kept by the budget", part["kept"] & ~part["floor"], dict(color=color, marker="o", linewidths=0)),
            (
                "kept as its layer's floor (top-k)",
                part["kept"] & part["floor"],
                dict(color=color, marker="D", linewidths=0),
            ),
            (
                "pruned by the budget",
                ~part["kept"],
                dict(facecolors="none", edgecolors=color, marker="o", linewidths=0.6),
            ),
        )
        for name, chosen, kwargs in groups:
            chosen = chosen.to_numpy()
            ax.scatter(x + jitter[chosen], y[chosen], s=8, zorder=2, label=name if x == 0 else None, gid=name, **kwargs)
        if "kept_uniform" in part and part["kept_uniform"].any() and (~part["kept_uniform"]).any():
            cut = np.sqrt(
                part.loc[part["kept_uniform"], "budget_score"].min()
                * max(part.loc[~part["kept_uniform"], "budget_score"].max(), floor_value)
            )
            name = "uniform plan's cut-off" + (f", {ratio:.0%} removed" if ratio is not None else "")
            ax.plot(
                [x - 0.34, x + 0.34],
                [cut, cut],
                color=uniform_color,
                linewidth=1.4,
                zorder=3,
                label=name if x == 0 else None,
            )
    threshold = table.attrs.get("threshold", np.nan)
    if np.isfinite(threshold):
        ax.axhline(threshold, label="the budget's threshold", **{**REFERENCE_STYLE, "linewidth": 0.8})
    ax.set_yscale("log")
    plain_log_axis(ax)
    ax.set_xticks(range(len(layers)), [str(v) for v in layers])
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_xlabel("layer")
    ax.set_ylabel("REAP score / layer mean")
    if own:
        legend_below(fig, [ax], ncols=2)
    return ax


def _plan_label(name, plan) -> str:
    """The method a plan (or mask frame) stands for: global_<criterion> for a global budget, else its criterion."""
    if isinstance(plan, pd.DataFrame):
        criterion = plan["criterion"].iloc[0] if "criterion" in plan else str(name)
        return (
            f"global_{criterion}" if "global" in str(name) and not str(criterion).startswith("global_") else criterion
        )
    glob = bool(plan.provenance.get("global_budget")) or "global" in str(name)
    return f"global_{plan.criterion}" if glob else plan.criterion


@styled
def kept_per_layer(plans, *, ax=None):
    """Experts kept in each layer by one or more plans, grouped bars in each plan's method colour.
    `plans` is {name: PruningPlan or mask frame} (or one plan); the names label the bars.

        >>> kept_per_layer({"uniform REAP": plan, "global REAP": global_plan})
        <Axes: title={'left': 'experts kept per layer'}, ...>

    The y axis ends at the experts per layer before pruning (a grey step where layers differ). The legend goes below (with
    `ax`, left to the caller: `legend_below`).
    """
    own = ax is None
    fig, ax = axes(ax, (COLUMN, 2.1))
    ax.set_title("experts kept per layer", loc="left")
    if plans is None or (isinstance(plans, dict) and not plans):
        return no_data(ax)
    if not isinstance(plans, dict):
        plans = {getattr(plans, "criterion", "plan"): plans}
    masks = {name: (p if isinstance(p, pd.DataFrame) else mask_frame(p)) for name, p in plans.items()}
    masks = {k: v for k, v in masks.items() if not v.empty}
    if not masks:
        return no_data(ax)
    layers = sorted(set().union(*(set(m["layer"]) for m in masks.values())))
    width = 0.8 / len(masks)
    for i, (name, mask) in enumerate(masks.items()):
        counts = mask.groupby("layer")["kept"].sum().reindex(layers, fill_value=0)
        x = np.arange(len(layers)) - 0.4 + width * (i + 0.5)
        ax.bar(
            x,
            counts.to_numpy(),
            width=width * 0.92,
            color=criterion_color(_plan_label(name, plans[name])),
            label=str(name),
        )
    total = mask.groupby("layer")["expert"].count().reindex(layers)
    if total.nunique() > 1:  # layers of different sizes: each layer's experts before pruning
        ax.step(
            np.arange(len(layers) + 1) - 0.5,
            np.r_[total.to_numpy(), total.to_numpy()[-1]],
            where="post",
            label="experts before pruning",
            **REFERENCE_STYLE,
        )
    ax.set_xticks(np.arange(len(layers)), [str(v) for v in layers])
    integer_axis(ax, "y")
    ax.set_ylim(0, float(total.max()))
    ax.set_xlabel("layer")
    ax.set_ylabel("experts kept" + (f" (of {int(total.iloc[0])})" if total.nunique() == 1 else ""))
    if own:
        legend_below(fig, [ax], ncols=2)
    return ax
