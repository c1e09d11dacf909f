"""Figures of pruning plans: which experts each plan keeps.

>>> plan_mask(plan)                                             # layers x experts, kept dark
<Axes: title={'left': 'kept experts'}, ...>
>>> plan_masks(pd.concat([mask_frame(p, criterion=c, ratio=r) for (c, r), p in plans.items()]))   # plans: {(c, r): plan}
<Figure size 825x375 with 4 Axes>
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import select
from reapkit.plot.theme import (
    COLUMN,
    MIN_TEXT,
    TWO_COLUMN,
    axes,
    index_ticks,
    is_empty,
    label,
    no_data,
    no_data_figure,
    styled,
)
from reapkit.study.tables import mask_frame

__all__ = ["plan_mask", "plan_masks"]

_KEPT, _PRUNED = "0.2", "0.9"  # black and light grey: colours belong to methods


def _legend_handles():
    return [
        matplotlib.patches.Patch(facecolor=_KEPT, label="kept"),
        matplotlib.patches.Patch(facecolor=_PRUNED, edgecolor="0.6", linewidth=0.4, label="pruned"),
    ]


@styled
def plan_mask(mask, *, title: str | None = None, legend: bool = True, ax=None):
    """Layers x experts grid: kept experts dark, pruned ones light, with the kept count above.

        >>> plan_mask(plan)                  # or a mask frame (layer, expert, kept)
        <Axes: title={'left': 'kept experts'}, ...>

    `mask` is a :func:`reapkit.study.tables.mask_frame` or a plan (anything with `.kept` and `.num_experts`).
    """
    if mask is not None and hasattr(mask, "kept") and not isinstance(mask, pd.DataFrame):
        mask = mask_frame(mask)
    own = ax is None
    fig, ax = axes(ax, (COLUMN, 1.9))
    ax.set_title(title or "kept experts", loc="left")
    if is_empty(mask):
        return no_data(ax)
    table = mask.pivot_table(index="layer", columns="expert", values="kept", aggfunc="max").sort_index()
    values = table.to_numpy(dtype=float)
    cmap = matplotlib.colors.ListedColormap([_PRUNED, _KEPT]).with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(values), aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=1)
    if table.shape[1] <= 64:
        ax.set_xticks(np.arange(table.shape[1]) - 0.5, minor=True)
        ax.set_yticks(np.arange(table.shape[0]) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=0.4)
        ax.tick_params(which="minor", length=0)
    index_ticks(ax, table.index, "y", max_ticks=8)
    index_ticks(ax, table.columns, "x", max_ticks=8)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    kept_n = int(np.nansum(values))
    ax.text(
        1.0,
        1.0,
        f"{kept_n}/{int(np.isfinite(values).sum())} kept",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=MIN_TEXT,
    )
    if legend and own:
        fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=2, handlelength=1.0, handleheight=1.0)
    elif legend:
        ax.legend(
            handles=_legend_handles(),
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
            handlelength=1.0,
            handleheight=1.0,
        )
    return ax


@styled
def plan_masks(masks: pd.DataFrame, *, row: str = "criterion", col: str = "ratio", fig=None):
    """Grid of :func:`plan_mask` panels, one per (`row`, `col`) value of a mask frame with those columns;
    one legend, tick labels on the outer panels only. Returns the Figure.

        >>> masks = pd.concat([mask_frame(p, criterion=c, ratio=r) for (c, r), p in plans.items()])
        >>> plan_masks(masks)                # masks: layer, expert, kept, criterion, ratio
        <Figure size 825x375 with 4 Axes>
    """
    if is_empty(masks):
        return no_data_figure(fig, title="kept experts")
    rows = list(dict.fromkeys(masks[row])) if row in masks.columns else [None]  # as given (e.g. REAP first)
    cols = sorted(set(masks[col])) if col in masks.columns else [None]
    width = TWO_COLUMN if len(cols) > 1 else COLUMN
    fig = fig or plt.figure(figsize=(width, 0.6 + 0.95 * len(rows)), layout="constrained")
    grid = fig.subplots(len(rows), len(cols), squeeze=False, sharex=True, sharey=True)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = grid[i, j]
            part = select(masks, **{row: r, col: c})
            name = ", ".join(
                f"{v:.0%} removed" if k == "ratio" else label(v) for k, v in ((row, r), (col, c)) if v is not None
            )
            plan_mask(part, title=name, legend=False, ax=ax)
            if i < len(rows) - 1:
                ax.set_xlabel("")
                ax.tick_params(labelbottom=False)
            if j:
                ax.set_ylabel("")
                ax.tick_params(labelleft=False)
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=2, handlelength=1.0, handleheight=1.0)
    return fig
