"""Figures that compare methods by their paired gap to REAP: a forest plot per ratio (or per domain), and
pruning against merging at equal parameters.

    >>> gap_forest(gaps)                               # gaps: reapkit.study.gaps.gap_table(sequences)
    <Figure size 825x219 with 2 Axes>
    >>> gap_forest(gaps, by="domain", ratio=0.5)       # one panel per evaluation domain
    <Figure size 825x219 with 5 Axes>
    >>> pruning_vs_merging(results, gaps)              # Δ loss against parameters, and each merge's gap to REAP
    <Figure size 487.5x300 with 1 Axes>

A gap is a method's metric minus REAP's on the same evaluation sequences, with its paired 95%
bootstrap interval: the one rule for "is there a difference" (`reapkit.study.gaps`).
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, DELTA_LOSS, METRIC_LABELS, better, interval_columns, select
from reapkit.plot.theme import (
    MIN_TEXT,
    TWO_COLUMN,
    criterion_color,
    is_empty,
    label,
    legend_below,
    method_linestyle,
    no_data_figure,
    reference_line,
    styled,
)
from reapkit.study.tables import curve_table

__all__ = ["gap_forest", "pruning_vs_merging"]

#: The order of methods down a forest plot: pruning criteria, random, merges, budgets.
_FAMILY = {"prune": 0, "merge": 2, "global": 3, "water": 3, "evolution": 3}


def _order(gaps: pd.DataFrame, hue: str) -> list:
    methods = dict(zip(gaps[hue], gaps["method"])) if "method" in gaps.columns else {}
    names = list(dict.fromkeys(gaps[hue]))
    return sorted(names, key=lambda n: (_FAMILY.get(methods.get(n), 1) + (n == "random"), names.index(n)))


def _unit(metric: str) -> str:
    text = METRIC_LABELS.get(metric, metric)
    return text[text.index("(") :] if "(" in text else ""


@styled
def gap_forest(
    gaps: pd.DataFrame,
    *,
    metric: str = "loss",
    by: str = "ratio",
    domain: str = ALL,
    ratio: float | None = None,
    hue: str = "label",
    fig=None,
):
    """Forest plot: each method's gap to the reference (REAP) with its paired 95% interval, one row per
    method, one panel per ratio (`by="ratio"`, on `domain`) or per evaluation domain (`by="domain"`, at
    `ratio`). Filled: the interval excludes 0 (a difference); hollow: within noise. A method far off the
    others' scale is drawn at the panel's edge with its value.

        >>> from reapkit.study.gaps import gap_table
        >>> gap_forest(gap_table(sequences, metrics=["loss"]))
        <Figure size 825x219 with 2 Axes>

    Returns the Figure.
    """
    columns = interval_columns(metric, "gap")
    if is_empty(gaps) or columns[0] not in gaps.columns:
        return no_data_figure(fig, "no data (needs paired gaps: reapkit.study.gaps.gap_table)", title="gaps to REAP")
    if by == "ratio":
        data = select(gaps, domain=domain)
        panels = sorted(set(data["ratio"]))
    else:
        at = ratio if ratio is not None else min(set(gaps["ratio"]), key=lambda r: (abs(r - 0.5), -r))
        data = gaps[np.isclose(gaps["ratio"], at)]
        panels = sorted(set(data["domain"]), key=lambda d: (d != ALL, str(d)))
    if data.empty:
        return no_data_figure(fig, "no data", title="gaps to REAP")
    reference = label(data["reference"].iloc[0]) if "reference" in data.columns else "REAP"
    names = _order(data, hue)
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 0.95 + 0.17 * len(names)), layout="constrained")
    grid = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    y = {name: i for i, name in enumerate(names)}
    for ax, value in zip(grid, panels):
        part = data[data[by] == value] if by == "domain" else data[np.isclose(data["ratio"], value)]
        _forest_panel(ax, part, columns, hue, y)
        ax.set_title(f"{value:.1%}".replace(".0%", "%") if by == "ratio" else str(value), loc="center")
        ax.set_xlabel(f"gap {_unit(metric)}".replace("/token", "").strip())
    grid[0].set_yticks(range(len(names)), [label(n) + (" (mean of seeds)" if n == "random" else "") for n in names])
    grid[0].set_ylim(len(names) - 0.5, -0.5)
    grid[0].set_ylabel("method")
    direction = "worse" if better(metric) == "lower" else "better"
    where = (
        f"on {domain}, at each share of experts removed"
        if by == "ratio"
        else f"at {data['ratio'].iloc[0]:.1%} removed, per evaluation domain".replace(".0%", "%")
    )
    fig.suptitle(
        f"{METRIC_LABELS.get(metric, metric).split(' (')[0]} of each method minus {reference}'s, {where} "
        f"(> 0: {direction} than {reference})",
        fontsize=7,
    )
    handles = [
        matplotlib.lines.Line2D(
            [], [], color="0.3", marker="o", linestyle="-", markersize=3.5, label="paired 95% CI excludes 0"
        ),
        matplotlib.lines.Line2D(
            [],
            [],
            color="0.3",
            marker="o",
            markerfacecolor="white",
            linestyle="-",
            markersize=3.5,
            label="within noise",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    return fig


def _forest_panel(ax, part: pd.DataFrame, columns: list, hue: str, y: dict):
    """One panel of `gap_forest`: a point and interval per method, methods far off scale at the edge."""
    gap, low, high = columns
    ends = part[[low, high]].to_numpy(float)
    others = part[part[hue] != "random"][[low, high]].to_numpy(float)
    span = np.nanmax(np.abs(others)) if others.size and np.isfinite(others).any() else np.nanmax(np.abs(ends))
    limit = 1.15 * (span if np.isfinite(span) and span > 0 else 1.0)
    reference_line(ax, 0.0, axis="x")
    for row in part.itertuples(index=False):
        name, value, lo_, hi_ = getattr(row, hue), getattr(row, gap), getattr(row, low), getattr(row, high)
        color = criterion_color(name)
        within = lo_ <= 0 <= hi_
        if abs(value) > limit:  # off scale: an arrow at the edge with the value
            edge = np.sign(value) * limit
            ax.plot(edge, y[name], marker=">" if value > 0 else "<", color=color, markersize=4, clip_on=False)
            ax.text(
                edge - np.sign(value) * 0.08 * limit,
                y[name],
                f"{value:+.2f}",
                ha="right" if value > 0 else "left",
                va="center",
                fontsize=MIN_TEXT,
                color=color,
            )
            continue
        ax.errorbar(
            value,
            y[name],
            xerr=[[value - max(lo_, -limit)], [min(hi_, limit) - value]],
            color=color,
            elinewidth=1.2,
            capsize=0,
            marker="o",
            markersize=3.5,
            markerfacecolor="white" if within else color,
            markeredgewidth=0.9,
            zorder=3,
        )
    ax.set_xlim(-limit, limit)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=3, symmetric=True, min_n_ticks=3))
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)


def _parameter_axis(results: pd.DataFrame):
    """(column, axis label, formatter) of the size axis: parameters when the results carry them."""
    if "parameters" in results.columns and results["parameters"].notna().any():
        top = float(results["parameters"].max())
        scale, unit = (1e9, "B") if top >= 1e9 else (1e6, "M") if top >= 1e6 else (1e3, "k")
        formatter = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / scale:g}{unit}")
        return "parameters", "parameters of the compressed model", formatter
    return "kept_share", "experts kept", matplotlib.ticker.PercentFormatter(1.0, decimals=0)


@styled
def pruning_vs_merging(
    results: pd.DataFrame,
    gaps: pd.DataFrame | None = None,
    *,
    prune=("reap", "frequency"),
    merge=None,
    metric: str = DELTA_LOSS,
    domain: str = ALL,
    fig=None,
):
    """Pruning against merging at equal parameters: left, `metric` (Δ loss) against the compressed
    model's parameters (each method's own 95% CI as a band; the unpruned model at the right end);
    right, each merge's paired gap to REAP at each size (`gaps`: `reapkit.study.gaps.gap_table`).
    Merges are dashed, pruning solid, one colour per method.

        >>> from reapkit.study.gaps import gap_table
        >>> pruning_vs_merging(results, gap_table(sequences))      # results with a `parameters` column
        <Figure size 487.5x300 with 1 Axes>

    Results without `parameters` are drawn against the share of experts kept. Returns the Figure.
    """
    data = select(results, domain=domain) if not is_empty(results) else results
    if merge is None:  # every merge method of the results
        merge = list(dict.fromkeys(data.loc[data["method"] == "merge", "label"])) if "method" in data.columns else []
    names = [*prune, *merge]
    if is_empty(data) or not set(merge) & set(data.get("label", data.get("criterion", pd.Series()))):
        return no_data_figure(fig, "no data (needs merged and pruned variants)", title="pruning vs merging")
    hue = "label" if "label" in data.columns else "criterion"
    data = data[data[hue].isin(names) | (data["ratio"] == 0)].assign(kept_share=lambda f: 1 - f["ratio"])
    column, xlabel, formatter = _parameter_axis(data)
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.7), layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True)
    sizes = data.groupby("ratio")[column].mean()
    table = curve_table(data, metric, hue=hue)
    for name in [n for n in names if n in set(table[hue])]:
        part = table[table[hue] == name].assign(x=lambda f: f["ratio"].map(sizes))
        style = dict(
            color=criterion_color(name),
            linestyle=method_linestyle(name, "merge" if name in merge else "prune"),
            linewidth=1.6 if name == "reap" else 1.0,
        )
        left.plot(
            part["x"],
            part["mean"],
            marker="o",
            markersize=2.2,
            label=label(name),
            zorder=3 if name == "reap" else 2,
            **style,
        )
        left.fill_between(part["x"], part["lo"], part["hi"], color=style["color"], alpha=0.15, linewidth=0)
    reference_line(left, 0.0)
    left.set_title(METRIC_LABELS.get(metric, metric).split(" (")[0] + f" ({domain})", loc="left")
    left.set_ylabel(METRIC_LABELS.get(metric, metric))
    columns = interval_columns("loss", "gap")
    right.set_title("merge minus REAP, same sequences", loc="left")
    if gaps is not None and columns[0] in gaps.columns:
        part = select(gaps, domain=domain)
        part = part[part[hue if hue in part.columns else "label"].isin(merge)]
        reference_line(right, 0.0)
        for i, name in enumerate(merge):
            rows = part[part[hue if hue in part.columns else "label"] == name].assign(x=lambda f: f["ratio"].map(sizes))
            offset = (i - (len(merge) - 1) / 2) * 0.012 * (sizes.max() - sizes.min() or 1)
            color = criterion_color(name)
            right.errorbar(
                rows["x"] + offset,
                rows[columns[0]],
                yerr=np.vstack([rows[columns[0]] - rows[columns[1]], rows[columns[2]] - rows[columns[0]]]).clip(min=0),
                color=color,
                linestyle=method_linestyle(name, "merge"),
                marker="o",
                markersize=3,
                capsize=1.5,
                elinewidth=0.8,
                linewidth=0.8,
            )
        right.set_ylabel("loss gap to REAP (nats)")
    else:
        right.text(0.5, 0.5, "no paired gaps given", transform=right.transAxes, ha="center", color="0.4")
    right.tick_params(labelbottom=True)
    for ax in (left, right):
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_formatter(formatter)
        ax.locator_params(axis="x", nbins=6)
    legend_below(fig, [left], ncols=len(names), title="bands and bars: 95% CI (right: paired)")
    return fig
