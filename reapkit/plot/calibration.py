"""Figures of calibration sensitivity: how loss and kept sets change with the calibration domain.

    >>> calibration_heatmap(loss_matrix)                # calibrated on (rows) x evaluated on (columns)
    <Axes: title={'left': 'loss increase after pruning (Δ loss)'}, ...>
    >>> calibration_figure(sensitivity)                 # a reapkit.study.sensitivity.Sensitivity
    <Figure size 825x435 with 4 Axes>
    >>> from reapkit.study.tables import expected_jaccard
    >>> calibration_figure(loss_matrix, overlap, chance=expected_jaccard(16, 8))
    <Figure size 825x435 with 4 Axes>
    >>> calibration_size(size_table)                    # against calibration samples per domain and seed
    <Figure size 825x360 with 2 Axes>

The tables come from `reapkit.study.sensitivity` (`calibration_sensitivity`, `calibration_size`).
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import UNPRUNED, interval
from reapkit.plot.theme import (
    CHANCE_STYLE,
    COLUMN,
    MIN_TEXT,
    TWO_COLUMN,
    axes,
    chance_line,
    criterion_color,
    is_empty,
    label,
    legend_below,
    no_data,
    no_data_figure,
    styled,
    undefined_cells,
)

__all__ = ["calibration_heatmap", "overlap_heatmap", "calibration_figure", "calibration_size"]


def _diagonal_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the columns' order (so row i and column i are the same domain), the rest after."""
    first = [c for c in table.columns if c in table.index]
    rows = first + [r for r in table.index if r not in first]
    cols = first + [c for c in table.columns if c not in first]
    return table.loc[rows, cols]


def _compact(value: float, fmt: str) -> str:
    """Two significant digits without a leading zero (".27", "1.1"): interval ends fit under a cell's value."""
    text = f"{value:.2g}" if abs(value) >= 0.01 else format(value, fmt)
    return text.replace("0.", ".", 1) if abs(value) < 1 else text


def _annotated_heatmap(
    ax, table: pd.DataFrame, *, cmap, fmt: str, norm, label="", outline_diagonal=False, mask=None, bounds=None
):
    """Cells coloured by `table`, each with its value (and, with `bounds` = (lo, hi) tables, its interval
    below it); masked cells (undefined) hatched. Returns (ax, colour bar)."""
    values = table.to_numpy(dtype=float)
    hidden = mask if mask is not None else ~np.isfinite(values)
    image = ax.imshow(
        np.ma.masked_where(hidden, values), aspect="auto", interpolation="nearest", cmap=plt.get_cmap(cmap), norm=norm
    )
    undefined_cells(ax, [(r, c) for (r, c), h in np.ndenumerate(hidden) if h])
    ax.set_xticks(
        np.arange(table.shape[1]), [str(c) for c in table.columns], rotation=30, ha="right", rotation_mode="anchor"
    )
    ax.set_yticks(np.arange(table.shape[0]), [str(r) for r in table.index])
    low, high = (
        (b.loc[table.index, table.columns].to_numpy(float) for b in bounds) if bounds is not None else (None, None)
    )
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v) and not hidden[r, c]:
            red, green, blue, _ = image.cmap(image.norm(v))
            ink = "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"
            text = format(v, fmt)
            if low is not None and np.isfinite(low[r, c]) and np.isfinite(high[r, c]):
                text += f"\n{_compact(low[r, c], fmt)}–{_compact(high[r, c], fmt)}"
            ax.text(c, r, text, ha="center", va="center", fontsize=MIN_TEXT, color=ink, linespacing=1.0)
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
def calibration_heatmap(loss_matrix: pd.DataFrame, *, delta: bool = True, bounds=None, ax=None):
    """Evaluation domain x calibration set: the loss after pruning, or with `delta` its increase over
    the unpruned model (column `UNPRUNED`, ``"unpruned"``). Rows and columns are in the same order, so
    own-domain calibration is the outlined diagonal. `bounds` = (lo, hi) tables of the same shape: each
    cell's 95% interval, written under its value (a `Sensitivity` gives them, paired with the unpruned model).

        >>> calibration_heatmap(sensitivity.loss_matrix("delta_loss"), delta=False)
        <Axes: title={'left': 'loss after pruning'}, ...>
    """
    fig, ax = axes(ax, (COLUMN, 2.6))
    if is_empty(loss_matrix):
        return no_data(ax)
    table = loss_matrix
    if delta and UNPRUNED in table.columns:
        table = table.drop(columns=UNPRUNED).sub(table[UNPRUNED], axis=0)
    table = _diagonal_order(table.drop(columns=UNPRUNED, errors="ignore"))
    ax.set_title(
        "loss increase after pruning (Δ loss)" if delta or bounds is not None else "loss after pruning", loc="left"
    )
    values = table.to_numpy(float)
    norm = matplotlib.colors.Normalize(min(0.0, float(np.nanmin(values))), float(np.nanmax(values)))
    _annotated_heatmap(
        ax,
        table,
        cmap="magma_r",
        fmt=".2f",
        norm=norm,
        label="Δ loss (nats)",
        outline_diagonal=True,
        bounds=bounds,
    )
    ax.set_xlabel("calibration set (outlined: own domain)")
    ax.set_ylabel("evaluation domain")
    return ax


@styled
def overlap_heatmap(overlap: pd.DataFrame, *, chance: float | None = None, bounds=None, ax=None):
    """Calibration set x calibration set: mean over layers of the Jaccard index of the kept experts.
    With `chance` (:func:`reapkit.study.tables.expected_jaccard`), colours diverge at the chance level
    (white = what random expert sets share) and the colour bar marks it. The diagonal compares two
    calibration seeds of one set where there are several, and is undefined (hatched) otherwise.
    `bounds` = (lo, hi) tables: each cell's 95% interval (bootstrap over layers and seeds).

        >>> from reapkit.study.tables import expected_jaccard
        >>> overlap_heatmap(overlap, chance=expected_jaccard(16, 8))
        <Axes: title={'left': 'kept experts shared (Jaccard)'}, ...>
    """
    fig, ax = axes(ax, (COLUMN, 2.6))
    if is_empty(overlap):
        return no_data(ax)
    ax.set_title("kept experts shared (Jaccard)", loc="left")
    table = _diagonal_order(overlap)
    diagonal = np.equal.outer(np.asarray(table.index, dtype=object), np.asarray(table.columns, dtype=object))
    values = table.to_numpy(float)
    hidden = ~np.isfinite(values) | (diagonal & np.isclose(values, 1.0))  # a diagonal of 1s is no measurement
    if chance is not None and 0 < chance < 1:
        norm, cmap = matplotlib.colors.TwoSlopeNorm(vcenter=chance, vmin=0, vmax=1), "PuOr_r"
    else:
        norm, cmap = matplotlib.colors.Normalize(0, 1), "viridis"
    _, bar = _annotated_heatmap(
        ax, table, cmap=cmap, fmt=".2f", norm=norm, label="Jaccard index", mask=hidden, bounds=bounds
    )
    if chance is not None:
        bar.ax.axhline(chance, **CHANCE_STYLE)
        bar.set_ticks([0.0, chance, 1.0], labels=["0", f"chance\n{chance:.2f}", "1"])
    ax.set_xlabel("calibration set" + (" (diagonal: two seeds)" if (diagonal & ~hidden).any() else ""))
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
    """:func:`calibration_heatmap` next to :func:`overlap_heatmap` (full width). Returns the Figure.

    >>> calibration_figure(sensitivity)        # a reapkit.study.sensitivity.Sensitivity: intervals, chance, title
    <Figure size 825x435 with 4 Axes>
    >>> from reapkit.study.tables import expected_jaccard
    >>> calibration_figure(loss_matrix, overlap, chance=expected_jaccard(16, 8), title="REAP at 50%")
    <Figure size 825x435 with 4 Axes>
    """
    loss_bounds = overlap_bounds = None
    if hasattr(loss_matrix, "loss_matrix") and hasattr(loss_matrix, "overlap_matrix"):
        result = loss_matrix
        low, high = interval("delta_loss")
        loss_matrix, delta = result.loss_matrix("delta_loss").drop(columns=UNPRUNED, errors="ignore"), False
        loss_bounds = tuple(result.loss_matrix(c).drop(columns=UNPRUNED, errors="ignore") for c in (low, high))
        overlap = result.overlap_matrix("jaccard")
        overlap_bounds = tuple(result.overlap_matrix(c) for c in interval("jaccard"))
        if chance is None and "chance" in result.overlap:
            chance = float(result.overlap["chance"].iloc[0])
        if title is None:
            title = f"{label(result.criterion)} pruning {result.ratio:.0%} of the experts, calibrated on each set (95% CIs under the values)"
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    calibration_heatmap(loss_matrix, delta=delta, bounds=loss_bounds, ax=left)
    overlap_heatmap(overlap, chance=chance, bounds=overlap_bounds, ax=right)
    if title:
        fig.suptitle(title, fontsize=7)
    return fig


@styled
def calibration_size(table: pd.DataFrame, *, criterion: str = "reap", fig=None):
    """Sensitivity to the calibration's size and sample: left, how many kept experts each plan shares
    with the plan of the largest calibration pooled over seeds (Jaccard, mean over layers; chance line);
    right, Δ loss with each plan's 95% interval (paired with the unpruned model). One point per
    calibration seed, slightly apart; the line joins the means over seeds.

        >>> calibration_size(size_table)   # reapkit.study.sensitivity.calibration_size(model, tokenizer, eval_batches)
        <Figure size 825x360 with 2 Axes>

    Returns the Figure.
    """
    if is_empty(table):
        return no_data_figure(fig, title="calibration size")
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.4), layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True)
    color = criterion_color(criterion)
    seeds = sorted(set(table["seed"]))
    sizes = sorted(set(table["samples"]))
    shift = {s: 1.06 ** (i - (len(seeds) - 1) / 2) for i, s in enumerate(seeds)}
    low, high = interval("delta_loss")
    for ax, column in ((left, "jaccard"), (right, "delta_loss")):
        means = table.groupby("samples")[column].mean().reindex(sizes)
        ax.plot(sizes, means.to_numpy(), color=color, linewidth=1.4, label="mean over seeds", zorder=3)
        for i, seed in enumerate(seeds):
            part = table[table["seed"] == seed].sort_values("samples")
            x = part["samples"] * shift[seed]
            kwargs = dict(color=color, marker="os^Dv"[i % 5], markersize=3, linestyle="none", alpha=0.8)
            if column == "delta_loss" and low in part:
                err = np.vstack([part[column] - part[low], part[high] - part[column]]).clip(min=0)
                ax.errorbar(x, part[column], yerr=err, elinewidth=0.7, capsize=1.2, label=f"seed {seed}", **kwargs)
            else:
                ax.plot(x, part[column], label=f"seed {seed}", **kwargs)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("calibration samples per domain")
    if "chance" in table:
        chance_line(left, float(table["chance"].mean()))
    left.set_ylim(0, 1.02)
    left.set_title("kept experts shared with the largest calibration", loc="left")
    left.set_ylabel("Jaccard (mean over layers)")
    right.set_title("loss increase after pruning", loc="left")
    right.set_ylabel("Δ loss vs unpruned (nats)")
    right.tick_params(labelbottom=True)
    legend_below(
        fig, [right], ncols=len(seeds) + 1, title=f"{label(criterion)}; bars: 95% CI paired with the unpruned model"
    )
    return fig
