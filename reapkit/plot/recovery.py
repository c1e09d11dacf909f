"""Router recovery: held-out loss or KL of the pruned and the recovered model at each ratio.

    >>> table = pd.DataFrame({"ratio": [0.25, 0.25, 0.5, 0.5], "criterion": "reap", "metric": ["loss", "kl"] * 2,
    ...     "unpruned": [2.6, 0.0, 2.6, 0.0], "unpruned_lo": [2.4, 0.0, 2.4, 0.0], "unpruned_hi": [2.8, 0.0, 2.8, 0.0],
    ...     "pruned": [3.0, 0.5, 4.0, 1.5], "pruned_lo": [2.8, 0.4, 3.7, 1.3], "pruned_hi": [3.2, 0.6, 4.3, 1.7],
    ...     "recovered": [2.9, 0.4, 3.8, 1.3], "recovered_lo": [2.7, 0.3, 3.5, 1.1], "recovered_hi": [3.1, 0.5, 4.1, 1.5],
    ...     "fraction": [0.25, 0.2, 0.14, 0.13], "fraction_lo": [0.1, 0.1, 0.1, 0.1], "fraction_hi": [0.4, 0.3, 0.2, 0.2]})
    >>> recovery_plot(table, metric="kl")                 # a `reapkit.study.recovery.recovery_table`
    <Axes: title={'left': 'KL to the unpruned model (nats)'}, xlabel='experts removed', ylabel='KL (nats)'>
    >>> recovery_figure(table)                            # loss and KL side by side
    <Figure size 825x330 with 2 Axes>

Each ratio shows the pruned model (open marker) and the recovered one (filled), each with its 95 %
interval, joined by an arrow, and the recovered fraction with its paired interval written above; the
unpruned model is the thin grey reference line.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from reapkit.plot.theme import (
    COLUMN,
    MIN_TEXT,
    REFERENCE_STYLE,
    TWO_COLUMN,
    axes,
    criterion_color,
    is_empty,
    legend_below,
    no_data,
    percent_axis,
    styled,
)

__all__ = ["recovery_plot", "recovery_figure"]

_TITLES = {"loss": "held-out loss", "kl": "KL to the unpruned model (nats)"}
_LABELS = {"loss": "loss (nats per token)", "kl": "KL (nats)"}
_OFFSET = 0.012  # pruned and recovered drawn apart on the ratio axis, so their intervals do not overlap


@styled
def recovery_plot(table: pd.DataFrame, *, metric: str = "loss", ax=None):
    """Pruned and recovered `metric` against the fraction of experts removed, the unpruned model as reference."""
    fig, ax = axes(ax, (COLUMN, 2.2))
    data = table[table["metric"] == metric].sort_values("ratio") if not is_empty(table) else table
    if is_empty(data):
        no_data(ax, f"no {metric} rows")
        return ax
    color = criterion_color(data["criterion"].iloc[0])
    ratios = data["ratio"].to_numpy()
    ax.axhline(data["unpruned"].mean(), **REFERENCE_STYLE, zorder=1)
    ax.annotate(
        "unpruned", (1, data["unpruned"].mean()), xycoords=("axes fraction", "data"), ha="right", va="bottom",
        fontsize=MIN_TEXT, color="0.35",
    )  # fmt: skip
    for name, shift, face in (("pruned", -_OFFSET, "white"), ("recovered", _OFFSET, color)):
        values = data[name].to_numpy()
        errors = [values - data[f"{name}_lo"].to_numpy(), data[f"{name}_hi"].to_numpy() - values]
        ax.errorbar(
            ratios + shift, values, yerr=errors, fmt="o", color=color, markerfacecolor=face, markersize=4,
            capsize=1.5, linewidth=0.8, label=name, zorder=3,
        )  # fmt: skip
    for ratio, row in zip(ratios, data.itertuples()):
        ax.annotate(
            "", (ratio + _OFFSET, row.recovered), (ratio - _OFFSET, row.pruned),
            arrowprops={"arrowstyle": "->", "color": "0.3", "linewidth": 0.6},
        )  # fmt: skip
        ax.annotate(
            f"{row.fraction:.0%}\n[{row.fraction_lo:.0%}, {row.fraction_hi:.0%}]", (ratio, row.pruned_hi),
            xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=MIN_TEXT,
        )  # fmt: skip
    ax.set_xticks(ratios)
    percent_axis(ax)
    ax.set_xlim(ratios.min() - 0.1, ratios.max() + 0.1)
    top = data["pruned_hi"].max()
    bottom = min(data["unpruned"].min(), data["recovered_lo"].min())
    ax.set_ylim(bottom - 0.05 * (top - bottom), top + 0.3 * (top - bottom))
    ax.set_xlabel("experts removed")
    ax.set_ylabel(_LABELS.get(metric, metric))
    ax.set_title(_TITLES.get(metric, metric), loc="left")
    return ax


@styled
def recovery_figure(table: pd.DataFrame, *, metrics=("loss", "kl"), fig=None):
    """`recovery_plot` of each metric side by side, one legend below (the fraction recovered over each ratio)."""
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.2), layout="constrained")
    axes_list = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes_list, metrics):
        recovery_plot(table, metric=metric, ax=ax)
    legend_below(fig, list(axes_list), ncols=2, title="recovered fraction [95% interval] written above each ratio")
    return fig
