"""Figures of calibration sensitivity: how loss and kept sets change with the calibration domain.

    >>> calibration_heatmap(loss_matrix)                # calibrated on (rows) x evaluated on (columns)
    >>> calibration_figure(sensitivity)                 # a reapkit.study.sensitivity.Sensitivity
    >>> calibration_figure(loss_matrix, overlap, chance=expected_jaccard(16, 8))

The tables come from `reapkit.study.sensitivity.calibration_sensitivity`.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import UNPRUNED
from reapkit.plot.theme import (
    COLUMN,
    TWO_COLUMN,
    axes,
    is_empty,
    no_data,
    styled,
)

__all__ = ["calibration_heatmap", "overlap_heatmap", "calibration_figure"]


def _diagonal_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the columns' order (so row i and column i are the same domain), the rest after."""
    first = [c for c in table.columns if c in table.index]
    rows = first + [r for r in table.index if r not in first]
    cols = first + [c for c in table.columns if c not in first]
    return table.loc[rows, cols]


def _annotated_heatmap(ax, table: pd.DataFrame, *, cmap, fmt: str, norm, label="", outline_diagonal=False, mask=None):
    values = table.to_numpy(dtype=float)
    shown = np.ma.masked_where(mask if mask is not None else ~np.isfinite(values), values)
    image = ax.imshow(
        shown, aspect="auto", interpolation="nearest", cmap=plt.get_cmap(cmap).with_extremes(bad="white"), norm=norm
    )
    ax.set_xticks(np.arange(table.shape[1]), [str(c) for c in table.columns], rotation=30, ha="right")
    ax.set_yticks(np.arange(table.shape[0]), [str(r) for r in table.index])
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v) and not np.ma.getmaskarray(shown)[r, c]:
            red, green, blue, _ = image.cmap(image.norm(v))
            light = 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5
            ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=6, color="black" if light else "white")
    if outline_diagonal:
        for i, name in enumerate(table.index):
            if name in list(table.columns):
                j = list(table.columns).index(name)
                ax.add_patch(
                    matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.0)
                )
    bar = ax.figure.colorbar(image, ax=ax, shrink=0.9, label=label, pad=0.02)
    return ax, bar


@styled
def calibration_heatmap(loss_matrix: pd.DataFrame, *, delta: bool = True, ax=None):
    """Evaluation domain x calibration set: the loss after pruning, or with `delta` its increase over
    the unpruned model (column ``"unpruned"``). Rows and columns are in the same order, so
    own-domain calibration is the outlined diagonal.

        >>> calibration_heatmap(loss_matrix)              # from reapkit.study.sensitivity.calibration_sensitivity
    """
    fig, ax = axes(ax, (COLUMN, 2.4))
    if is_empty(loss_matrix):
        return no_data(ax)
    table = loss_matrix
    if delta and UNPRUNED in table.columns:
        table = table.drop(columns=UNPRUNED).sub(table[UNPRUNED], axis=0)
    table = _diagonal_order(table)
    ax.set_title("Δ loss after pruning" if delta else "loss after pruning")
    values = table.to_numpy(float)
    norm = matplotlib.colors.Normalize(
        min(0.0, float(np.nanmin(values))) if delta else float(np.nanmin(values)), float(np.nanmax(values))
    )
    _annotated_heatmap(
        ax,
        table,
        cmap="magma_r",
        fmt=".2f",
        norm=norm,
        label="Δ loss (nats)" if delta else "loss (nats)",
        outline_diagonal=True,
    )
    ax.set_xlabel("calibration set")
    ax.set_ylabel("evaluation domain")
    return ax


@styled
def overlap_heatmap(overlap: pd.DataFrame, *, chance: float | None = None, ax=None):
    """Calibration set x calibration set: mean over layers of the Jaccard index of the kept experts.
    With `chance` (:func:`reapkit.study.tables.expected_jaccard`), colours diverge at the chance level
    (white = what random expert sets share) and the colour bar marks it.

        >>> overlap_heatmap(overlap, chance=expected_jaccard(16, 8))
    """
    fig, ax = axes(ax, (COLUMN, 2.4))
    if is_empty(overlap):
        return no_data(ax)
    ax.set_title("kept-expert overlap (Jaccard)" + (f", chance {chance:.2f}" if chance is not None else ""))
    table = _diagonal_order(overlap)
    diagonal = np.equal.outer(np.asarray(table.index, dtype=object), np.asarray(table.columns, dtype=object))
    values = table.to_numpy(float)
    if not np.allclose(values[diagonal], 1.0):  # a diagonal of calibration-seed overlaps is data; one of 1s is not
        diagonal = ~np.isfinite(values)
    if chance is not None and 0 < chance < 1:
        norm, cmap = matplotlib.colors.TwoSlopeNorm(vcenter=chance, vmin=0, vmax=1), "PuOr_r"
    else:
        norm, cmap = matplotlib.colors.Normalize(0, 1), "viridis"
    _, bar = _annotated_heatmap(ax, table, cmap=cmap, fmt=".2f", norm=norm, label="Jaccard index", mask=diagonal)
    if chance is not None:
        bar.ax.axhline(chance, color="black", linewidth=0.8)
        bar.set_ticks(sorted({0.0, round(chance, 2), 1.0}))
        bar.set_ticklabels([f"chance {t:.2f}" if t == round(chance, 2) else f"{t:g}" for t in bar.get_ticks()])
    ax.set_xlabel("calibration set")
    ax.set_ylabel("calibration set")
    return ax


@styled
def calibration_figure(
    loss_matrix,
    overlap: pd.DataFrame | None = None,
    *,
    delta: bool = True,
    chance: float | None = None,
    title: str | None = None,
    fig=None,
):
    """:func:`calibration_heatmap` next to :func:`overlap_heatmap` (two columns wide). Returns the Figure.

    >>> calibration_figure(sensitivity)        # a reapkit.study.sensitivity.Sensitivity: chance and title from it
    >>> calibration_figure(loss_matrix, overlap, chance=expected_jaccard(16, 8), title="REAP at 50%")
    """
    if hasattr(loss_matrix, "loss_matrix") and hasattr(loss_matrix, "overlap_matrix"):
        result = loss_matrix
        loss_matrix, overlap = result.loss_matrix("loss"), result.overlap_matrix("jaccard")
        if chance is None and "chance" in result.overlap:
            chance = float(result.overlap["chance"].iloc[0])
        if title is None:
            title = f"{result.criterion} pruning at {result.ratio:.0%}, calibrated on each set"
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    calibration_heatmap(loss_matrix, delta=delta, ax=left)
    overlap_heatmap(overlap, chance=chance, ax=right)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
