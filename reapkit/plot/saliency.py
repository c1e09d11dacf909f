"""Figures of expert saliency: heatmaps of the raw scores and each layer's sorted scores with the cut-offs.

>>> saliency_heatmap(scores, criterion="reap")                 # raw scale, log colours
<Axes: title={'left': 'REAP'}, ...>
>>> saliency_curves(scores, criterion="reap", ratio=0.5)
<Axes: title={'center': 'REAP: sorted scores'}, ...>

(What plans keep, expert usage and the global budget: `reapkit.plot.kept`.)
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, select
from reapkit.plot.theme import (
    COLUMN,
    MIN_TEXT,
    MISSING_COLOR,
    REFERENCE_STYLE,
    TWO_COLUMN,
    axes,
    index_ticks,
    integer_axis,
    is_empty,
    label,
    layer_greys,
    no_data,
    no_data_figure,
    plain_log_axis,
    styled,
)
from reapkit.select.plan import pruned_count
from reapkit.study.tables import value_table

__all__ = ["saliency_heatmap", "saliency_heatmaps", "saliency_curves"]


def _title(criterion, domain):
    return label(criterion) + (f" ({domain})" if domain not in (None, ALL) else "")


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
        <Axes: title={'left': 'REAP'}, ...>

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
        text = (
            "score / layer max"
            if normalise
            else label(criterion) + (" (log)" if isinstance(norm, matplotlib.colors.LogNorm) else "")
        )
        bar = fig.colorbar(image, ax=ax, label=text, shrink=0.95, pad=0.02)
        if isinstance(norm, matplotlib.colors.LogNorm):
            plain_log_axis(bar.ax, "y")
    if np.ma.getmaskarray(masked).any() & np.isfinite(values).any():
        ax.text(
            1.0,
            1.0,
            "grey: never routed",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=MIN_TEXT,
            color="0.35",
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
    fig = fig or plt.figure(figsize=(TWO_COLUMN if ncols > 1 else COLUMN, 0.3 + 1.45 * nrows), layout="constrained")
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
        <Axes: title={'center': 'REAP: sorted scores'}, ...>

    Experts to the right of a grey line are the ones a uniform plan at that ratio removes. Raw
    scores on a log axis by default (`normalise=True` divides by each layer's maximum).
    """
    fig, ax = axes(ax)
    ax.set_title(f"{_title(criterion, domain)}: sorted scores")
    data = select(frame, criterion=criterion, domain=domain) if not is_empty(frame) else frame
    if is_empty(data):
        return no_data(ax)
    table = value_table(data)
    n_layers = len(table)
    greys = layer_greys(n_layers)
    positive = True
    for i, (layer, row) in enumerate(table.iterrows()):
        values = np.sort(row.dropna().to_numpy(dtype=float))[::-1]
        if normalise and values.size and np.max(np.abs(values)) > 0:
            values = values / np.max(np.abs(values))
        positive &= bool((values > 0).all())
        ax.plot(
            np.arange(1, values.size + 1),
            values,
            color=greys[i],
            linewidth=1.0,
            label=f"layer {layer}",
            marker="o" if values.size <= 16 else None,
            markersize=2,
        )
    if log and (table.to_numpy(float) > 0).any():
        ax.set_yscale("log")
        plain_log_axis(ax)
        if not positive:
            ax.text(
                1.0,
                1.0,
                "zero scores not drawn",
                transform=ax.transAxes,
                fontsize=MIN_TEXT,
                color="0.35",
                ha="right",
                va="top",
            )
    ratios = [] if ratio is None else [ratio] if np.isscalar(ratio) else list(ratio)
    n = table.shape[1]
    for r in sorted(ratios):
        keep = n - pruned_count(n, r)
        ax.axvline(keep + 0.5, zorder=0, **REFERENCE_STYLE)
        ax.annotate(
            f"{r:.0%}",
            xy=(keep + 0.5, 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(1.5, 1.5),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=MIN_TEXT,
            color="0.3",
        )
    integer_axis(ax, "x")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_xlabel("expert rank in layer" + (" (lines: % removed)" if ratios else ""))
    ax.set_ylabel("score / layer max" if normalise else f"{label(criterion)} score")
    if n_layers <= 6:
        ax.legend(loc="upper right", ncols=2, handlelength=1.2, columnspacing=0.8)
    else:
        sm = matplotlib.cm.ScalarMappable(
            cmap=matplotlib.colors.LinearSegmentedColormap.from_list("depth", ["0.7", "0.0"]),
            norm=matplotlib.colors.Normalize(table.index.min(), table.index.max()),
        )
        fig.colorbar(sm, ax=ax, label="layer (lighter: earlier)", pad=0.02)
    return ax
