"""Figures of expert saliency: heatmaps, sorted curves, raw distributions per layer, experts kept per layer.

>>> saliency_heatmap(scores, criterion="reap")                 # raw scale, log colours, shared bar
<Axes: title={'left': 'reap'}, ...>
>>> saliency_curves(scores, criterion="reap", ratio=0.5)
<Axes: title={'center': 'reap: sorted scores'}, ...>
>>> saliency_distributions(scores, criterion="reap", ratio=0.5, budget=global_plan)
<Axes: title={'center': 'reap: raw scores per layer'}, ...>
>>> kept_per_layer({"uniform": plan, "global budget": global_plan})
<Axes: title={'center': 'experts kept per layer'}, ...>
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, select
from reapkit.plot.theme import (
    COLUMN,
    MISSING_COLOR,
    TWO_COLUMN,
    axes,
    criterion_color,
    index_ticks,
    integer_axis,
    is_empty,
    no_data,
    no_data_figure,
    styled,
)
from reapkit.select.plan import pruned_count
from reapkit.study.tables import mask_frame, uniform_cutoffs, value_table

__all__ = ["saliency_heatmap", "saliency_heatmaps", "saliency_curves", "saliency_distributions", "kept_per_layer"]


def _legend_below(ax):
    """A two-column legend under the x label (keeps the panel's width for the data)."""
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, borderaxespad=0, handletextpad=0.3, columnspacing=1.0
    )


def _title(criterion, domain):
    return f"{criterion}" + (f" ({domain})" if domain not in (None, ALL) else "")


def _norm(values, log):
    """Colour norm of raw scores: logarithmic over the positive values when `log`, else linear from 0."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return matplotlib.colors.Normalize(0, 1)
    if log and positive.max() > positive.min():
        return matplotlib.colors.LogNorm(positive.min(), positive.max())
    return matplotlib.colors.Normalize(min(0.0, float(np.nanmin(values))), float(positive.max()))


def _heatmap_values(frame, criterion, domain, sort, normalise):
    data = select(frame, criterion=criterion, domain=domain)
    if data.empty:
        return None, None
    table = value_table(data)
    values = table.to_numpy(dtype=float)
    if normalise:
        peak = np.nanmax(np.abs(values), axis=1, keepdims=True)
        values = np.divide(values, peak, out=np.zeros_like(values), where=peak > 0)
    if sort:
        values = -np.sort(-np.nan_to_num(values, nan=-np.inf), axis=1)
        values[np.isinf(values)] = np.nan
    return table, values


@styled
def saliency_heatmap(
    frame: pd.DataFrame,
    *,
    criterion: str = "reap",
    domain: str = ALL,
    sort: bool = False,
    normalise: bool = False,
    log: bool = True,
    norm=None,
    ax=None,
    cmap: str = "viridis",
    colorbar: bool = True,
):
    """Layers x experts heatmap of one criterion's raw scores (the scale of each layer stays visible).

        >>> saliency_heatmap(scores, criterion="reap", sort=True)
        <Axes: title={'left': 'reap'}, ...>

    `sort=True` orders experts within each layer by descending score (the x axis is the rank).
    `log` (default) colours on a log scale; experts scoring 0 (never routed) are grey. `norm`
    (a matplotlib Normalize) fixes the colour scale, e.g. to share it between panels;
    `normalise=True` divides each layer by its maximum (hides the scale; off by default).
    """
    fig, ax = axes(ax, (COLUMN, 1.9))
    table, values = (None, None) if is_empty(frame) else _heatmap_values(frame, criterion, domain, sort, normalise)
    ax.set_title(_title(criterion, domain), loc="left")
    if table is None:
        return no_data(ax)
    norm = norm or _norm(values, log and not normalise)
    masked = np.ma.masked_where(
        ~np.isfinite(values) | (values <= 0) if isinstance(norm, matplotlib.colors.LogNorm) else ~np.isfinite(values),
        values,
    )
    colormap = plt.get_cmap(cmap).with_extremes(bad=MISSING_COLOR)
    image = ax.imshow(masked, aspect="auto", interpolation="nearest", cmap=colormap, norm=norm, origin="upper")
    ax.set_xlabel("expert rank in layer" if sort else "expert")
    ax.set_ylabel("layer")
    index_ticks(ax, table.index, "y")
    if sort:  # ranks count from 1, as in saliency_curves
        index_ticks(ax, range(1, table.shape[1] + 1), "x", max_ticks=8)
    else:
        index_ticks(ax, table.columns, "x", max_ticks=16)
    if colorbar:
        label = (
            "score / layer max"
            if normalise
            else f"{criterion} score" + (" (log)" if isinstance(norm, matplotlib.colors.LogNorm) else "")
        )
        fig.colorbar(image, ax=ax, label=label, shrink=0.95, pad=0.02)
    if np.ma.getmaskarray(masked).any() & np.isfinite(values).any():
        ax.text(
            1.0, 1.0, "grey: never routed", transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="0.35"
        )
    return ax


@styled
def saliency_heatmaps(
    frame: pd.DataFrame,
    *,
    criteria=None,
    domain: str = ALL,
    sort: bool = False,
    normalise: bool = False,
    log: bool = True,
    fig=None,
):
    """One :func:`saliency_heatmap` per criterion, stacked, each with its own colour bar (criteria
    have different units); two columns wide. Returns the Figure."""
    if criteria is None:
        criteria = list(dict.fromkeys(frame["criterion"])) if not is_empty(frame) else []
    if not criteria:
        return no_data_figure(fig, title="saliency")
    n = len(criteria)
    ncols = 2 if n > 1 else 1
    nrows = -(-n // ncols)
    fig = fig or plt.figure(figsize=(TWO_COLUMN if ncols > 1 else COLUMN, 0.35 + 1.55 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for criterion, ax in zip(criteria, grid):
        saliency_heatmap(frame, criterion=criterion, domain=domain, sort=sort, normalise=normalise, log=log, ax=ax)
    for ax in grid[n:]:
        ax.axis("off")
    for i, ax in enumerate(grid[:n]):
        if i < n - ncols:
            ax.set_xlabel("")
        if i % ncols:
            ax.set_ylabel("")
    return fig


@styled
def saliency_curves(
    frame: pd.DataFrame,
    *,
    criterion: str = "reap",
    domain: str = ALL,
    ratio=None,
    normalise: bool = False,
    log: bool = True,
    ax=None,
):
    """Scores of each layer sorted in descending order, one line per layer (shades of grey to
    black by depth), with the cut-off of `ratio` (a fraction of experts removed, or a list of them).

        >>> saliency_curves(scores, criterion="reap", ratio=[0.25, 0.5])
        <Axes: title={'center': 'reap: sorted scores'}, ...>

    Experts to the right of a dashed line are the ones a uniform plan at that ratio removes. Raw
    scores on a log axis by default (`normalise=True` divides by each layer's maximum).
    """
    fig, ax = axes(ax)
    ax.set_title(f"{_title(criterion, domain)}: sorted scores")
    data = select(frame, criterion=criterion, domain=domain) if not is_empty(frame) else frame
    if is_empty(data):
        return no_data(ax)
    table = value_table(data)
    cmap = plt.get_cmap("cividis")
    n_layers = len(table)
    positive = True
    for i, (layer, row) in enumerate(table.iterrows()):
        values = np.sort(row.dropna().to_numpy(dtype=float))[::-1]
        if normalise and values.size and np.max(np.abs(values)) > 0:
            values = values / np.max(np.abs(values))
        positive &= bool((values > 0).all())
        ax.plot(
            np.arange(1, values.size + 1),
            values,
            color=cmap(0.85 * i / max(n_layers - 1, 1)),
            linewidth=1.0,
            label=f"layer {layer}",
            marker="o" if values.size <= 16 else None,
            markersize=2,
        )
    if log and (table.to_numpy(float) > 0).any():
        ax.set_yscale("log")
        if not positive:
            ax.text(0.0, 0.0, " zero scores not shown", transform=ax.transAxes, fontsize=6, color="0.35", va="bottom")
    ratios = [] if ratio is None else [ratio] if np.isscalar(ratio) else list(ratio)
    n = table.shape[1]
    for r in sorted(ratios):
        keep = n - pruned_count(n, r)
        ax.axvline(keep + 0.5, color="0.3", linestyle="--", linewidth=0.7, zorder=0)
        ax.annotate(
            f"{r:.0%}",
            xy=(keep + 0.5, 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(1.5, 1.5),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=6,
            color="0.3",
        )
    integer_axis(ax, "x")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_xlabel("expert rank in layer" + ("  (dashed: cut-off at % removed)" if ratios else ""))
    ax.set_ylabel("score / layer max" if normalise else f"{criterion} score")
    if n_layers <= 6:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0)
    else:
        sm = matplotlib.cm.ScalarMappable(
            cmap=matplotlib.colors.LinearSegmentedColormap.from_list("depth", [cmap(0.0), cmap(0.85)]),
            norm=matplotlib.colors.Normalize(table.index.min(), table.index.max()),
        )
        fig.colorbar(sm, ax=ax, label="layer", pad=0.02)
    return ax


@styled
def saliency_distributions(
    frame: pd.DataFrame, *, criterion: str = "reap", domain: str = ALL, ratio: float | None = 0.5, budget=None, ax=None
):
    """Raw scores of every expert, one column of dots per layer, on a log axis: the scale each layer
    has, which a global budget compares across layers.

        >>> saliency_distributions(scores, criterion="reap", ratio=0.5, budget=global_plan)
        <Axes: title={'center': 'reap: raw scores per layer'}, ...>

    With `ratio`, a short black bar marks each layer's uniform cut-off (experts below it are
    pruned); with `budget` (a plan or mask frame), the experts that plan prunes are drawn hollow.
    Experts scoring 0 (never routed) sit on the bottom edge as grey crosses.
    """
    fig, ax = axes(ax, (COLUMN, 2.2))
    ax.set_title(f"{_title(criterion, domain)}: raw scores per layer")
    data = select(frame, criterion=criterion, domain=domain) if not is_empty(frame) else frame
    if is_empty(data):
        return no_data(ax)
    table = value_table(data)
    pruned = set()
    if budget is not None:
        mask = budget if isinstance(budget, pd.DataFrame) else mask_frame(budget)
        pruned = {(int(r.layer), int(r.expert)) for r in mask.itertuples() if not r.kept}
    values = table.to_numpy(float)
    positive = values[np.isfinite(values) & (values > 0)]
    floor = positive.min() / 2 if positive.size else 1.0
    color = criterion_color(criterion)
    rng = np.random.default_rng(0)
    for x, (layer, row) in enumerate(table.iterrows()):
        v = row.to_numpy(float)
        jitter = rng.uniform(-0.22, 0.22, v.size)
        gone = np.array([(int(layer), int(e)) in pruned for e in row.index])
        zero = ~(v > 0)
        kept_ = ~gone & ~zero
        ax.scatter(
            x + jitter[kept_], v[kept_], s=7, color=color, linewidths=0, label="kept" if x == 0 else None, zorder=2
        )
        if budget is not None:
            ax.scatter(
                x + jitter[gone & ~zero],
                v[gone & ~zero],
                s=7,
                facecolors="none",
                edgecolors=color,
                linewidths=0.6,
                label="pruned by budget" if x == 0 else None,
                zorder=2,
            )
        if zero.any():
            ax.scatter(
                x + jitter[zero],
                np.full(zero.sum(), floor),
                s=8,
                marker="x",
                color="0.55",
                linewidths=0.6,
                label="never routed" if x == 0 else None,
                zorder=2,
                clip_on=False,
            )
    if ratio is not None:
        cut = uniform_cutoffs(data, ratio)
        for x, threshold in enumerate(cut["threshold"]):
            if threshold > 0:
                ax.plot(
                    [x - 0.36, x + 0.36],
                    [threshold, threshold],
                    color="black",
                    linewidth=1.0,
                    zorder=3,
                    label=f"uniform cut-off, {ratio:.0%} removed" if x == 0 else None,
                )
    if positive.size:
        ax.set_yscale("log")
        if (~(values > 0)).any():
            ax.set_ylim(bottom=floor * 0.8)
    ax.set_xticks(np.arange(len(table)), [str(i) for i in table.index])
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{criterion} score (log)")
    _legend_below(ax)
    return ax


@styled
def kept_per_layer(plans, *, ax=None):
    """Experts kept in each layer by one or more plans: grouped bars, one colour per plan's criterion,
    a global budget hatched. `plans` is {name: PruningPlan or mask frame} (or one plan).

        >>> kept_per_layer({"reap 50%": plan, "global reap": global_plan})
        <Axes: title={'center': 'experts kept per layer'}, ...>

    The dashed line is the number of experts per layer before pruning.
    """
    fig, ax = axes(ax, (COLUMN, 1.9))
    ax.set_title("experts kept per layer")
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
        plan = plans[name]
        if isinstance(plan, pd.DataFrame):
            criterion = mask["criterion"].iloc[0] if "criterion" in mask else name
            is_global = "global" in str(name)
        else:
            criterion = plan.criterion
            is_global = bool(plan.provenance.get("global_budget")) or "global" in str(name)
        x = np.arange(len(layers)) - 0.4 + width * (i + 0.5)
        ax.bar(
            x,
            counts.to_numpy(),
            width=width * 0.92,
            color=criterion_color(criterion) if not is_global else "white",
            edgecolor=criterion_color(criterion),
            hatch="/////" if is_global else None,
            linewidth=0.6,
            label=str(name),
        )
    total = mask.groupby("layer")["expert"].count().reindex(layers)
    ax.step(
        np.arange(len(layers) + 1) - 0.5,
        np.r_[total.to_numpy(), total.to_numpy()[-1]],
        where="post",
        color="0.4",
        linestyle="--",
        linewidth=0.7,
        label="experts before pruning",
    )
    ax.set_xticks(np.arange(len(layers)), [str(v) for v in layers])
    integer_axis(ax, "y")
    ax.set_ylim(0, float(total.max()) * 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("experts kept")
    _legend_below(ax)
    return ax
