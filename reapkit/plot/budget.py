"""How non-uniform budgets compare with uniform REAP at equal size: paired differences with 95% intervals.

    >>> budget_figure(budget_results)            # budget_results: reapkit.study.budget.budget_comparison(...)
    <Figure size 825x285 with 2 Axes>

One panel per metric; per budget (experts removed), one point per search: its difference to uniform REAP
on the same held-out sequences, with the paired 95% bootstrap interval; the line at 0 is uniform REAP.
Filled: the interval excludes 0; hollow: within noise.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import METRIC_LABELS
from reapkit.plot.theme import (
    COLUMN,
    TWO_COLUMN,
    criterion_color,
    is_empty,
    label,
    legend_below,
    no_data_figure,
    reference_line,
    styled,
)

__all__ = ["budget_figure"]


@styled
def budget_figure(frame: pd.DataFrame, *, metrics=("kl", "agreement"), fig=None):
    """Each search's difference to uniform REAP (`delta`, `delta_lo`, `delta_hi` of `budget_comparison`)
    against the fraction of experts removed, one panel per metric. Returns the Figure."""
    if is_empty(frame) or "delta" not in frame.columns:
        return no_data_figure(fig, "no data (needs reapkit.study.budget.budget_comparison)", title="budget searches")
    if fig is None:
        fig = plt.figure(figsize=(TWO_COLUMN if len(metrics) > 1 else COLUMN, 1.9), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    ratios = sorted(frame.ratio.unique())
    searches = [s for s in dict.fromkeys(frame.search) if s != "uniform"]
    offsets = np.linspace(-0.2, 0.2, len(searches)) if len(searches) > 1 else [0.0]
    for ax, metric in zip(axes, metrics):
        part = frame[frame.metric == metric]
        for offset, search in zip(offsets, searches):
            rows = part[part.search == search].set_index("ratio").reindex(ratios)
            x = np.arange(len(ratios)) + offset
            y, lo, hi = rows.delta.to_numpy(), rows.delta_lo.to_numpy(), rows.delta_hi.to_numpy()
            method = f"{search}_{part['criterion'].iloc[0] if 'criterion' in part.columns else 'reap'}"  # water_reap
            color, name = criterion_color(method), label(method)  # as every figure names and colours it
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor=color, elinewidth=0.8, capsize=1.5, label=name)
            beyond = (lo > 0) | (hi < 0)
            ax.scatter(x[beyond], y[beyond], color=color, s=14, zorder=3)
            ax.scatter(x[~beyond], y[~beyond], facecolor="white", edgecolor=color, s=14, zorder=3)
        reference_line(ax, 0.0)
        ax.set_xticks(np.arange(len(ratios)), [f"{r:.0%}" for r in ratios])
        ax.set_xlabel("experts removed")
        ax.set_ylabel("difference to uniform REAP")
        ax.set_title(METRIC_LABELS.get(metric, metric), loc="left")
    legend_below(fig, list(axes), ncols=len(searches))
    return fig
