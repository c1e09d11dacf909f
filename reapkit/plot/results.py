"""Figures of what compression costs: metrics against the fraction removed (with intervals), per-layer
sensitivity, block reconstruction error. (Calibration sensitivity: `reapkit.plot.calibration`.)

    >>> compression_figure(results)                     # loss and top-1 agreement, every method, 95% CIs
    <Figure size 825x412.5 with 2 Axes>
    >>> study_figure(results, metrics=["delta_loss", "kl"])   # one column per domain, shared y per row
    <Figure size 825x585 with 10 Axes>
    >>> layer_sensitivity(pd.DataFrame({"layer": [0, 1, 2], "delta_loss": [0.3, 0.1, 0.05]}))   # [, delta_loss_lo, _hi]
    <Axes: title={'left': 'one layer pruned at a time, 50% of its experts'}, ...>
    >>> scores_figure(lm_rows)                           # long-form scores (lm-eval): a panel per task and metric
    <Figure size 825x390 with 2 Axes>

Results frames follow the schema of :mod:`reapkit.measure.schema` (label, method, ratio, domain, loss,
kl, agreement, <metric>_lo / <metric>_hi). Curves are keyed by `label` (one name per curve) or,
in frames without it, by `criterion`; colours come from :func:`reapkit.plot.theme.criterion_color`
and line styles from the method (merges dashed, global budget dotted).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import (
    ALL,
    CRITERION,
    DELTA_LOSS,
    DOMAIN,
    LABEL,
    LOSS,
    METHOD,
    METRIC_LABELS,
    RATIO,
    hi,
    interval_columns,
    lo,
    select,
    wide_results,
    with_delta_loss,
)
from reapkit.plot.theme import (
    COLUMN,
    MIN_TEXT,
    TWO_COLUMN,
    axes,
    criterion_color,
    domain_linestyle,
    integer_axis,
    is_empty,
    label,
    legend_below,
    method_linestyle,
    no_data,
    no_data_figure,
    percent_axis,
    reference_line,
    styled,
)
from reapkit.study.tables import curve_table

__all__ = [
    "loss_vs_ratio",
    "loss_vs_ratio_by_domain",
    "study_curves",
    "study_figure",
    "compression_figure",
    "layer_sensitivity",
    "scores_figure",
    "reconstruction_by_layer",
]

_BAND_NOTE = {"ci": "bands: each method's own 95% CI", "range": "bands: min-max over runs"}


def _short(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric).split(" (")[0]


def _hue(results: pd.DataFrame, hue):
    if hue is not None:
        return hue
    return LABEL if LABEL in results.columns else CRITERION


def _prepare(results, metric):
    results = wide_results(results)  # long-form rows (lm-eval scores) as columns
    if LABEL in results.columns and CRITERION in results.columns and results[LABEL].isna().any():
        results = results.assign(**{LABEL: results[LABEL].fillna(results[CRITERION])})  # a plain prune's label
    if (
        metric == DELTA_LOSS
        and DELTA_LOSS not in results.columns
        and LOSS in results.columns
        and (results[RATIO] == 0).any()
    ):
        return with_delta_loss(results)
    return results


def _focus_limits(data, metric, hue):
    """y limits fitted to every curve but random pruning when random is far off the others' range."""
    if hue not in data.columns or "random" not in set(data[hue]):
        return None
    others = data.loc[data[hue] != "random", metric].dropna()
    rand = data.loc[data[hue] == "random", metric].dropna()
    if others.empty or rand.empty:
        return None
    low, high = float(others.min()), float(others.max())
    for column in (lo(metric), hi(metric)):
        if column in data.columns:
            values = data.loc[data[hue] != "random", column].dropna()
            if not values.empty:
                low, high = min(low, float(values.min())), max(high, float(values.max()))
    span = (high - low) or abs(high) * 1e-3 or 1e-6
    if rand.max() > high + 2 * span or rand.min() < low - 2 * span:
        return low - 0.08 * span, high + 0.08 * span, (float(rand.min()), float(rand.max()))
    return None


def _draw_curves(ax, data, metric, hue, *, markers=True):
    """Lines (and interval bands) of `metric` per `hue` value; returns the band kinds drawn."""
    table = curve_table(data, metric, hue=hue)
    kinds = set()
    methods = dict(zip(data[hue], data[METHOD])) if METHOD in data.columns and hue in data.columns else {}
    for name, part in table.groupby(hue, sort=False, dropna=False):
        name = None if (isinstance(name, float) and np.isnan(name)) else name
        if hue == DOMAIN:
            color, linestyle = "black", domain_linestyle(name)
        else:
            color, linestyle = (
                criterion_color(name if name is not None else metric),
                method_linestyle(name, methods.get(name)),
            )
        bold = str(name) == "reap"
        text = (str(name) if hue == DOMAIN else label(name)) if name is not None else metric
        runs = int(part.loc[part[RATIO] != 0, "runs"].max()) if (part[RATIO] != 0).any() else 1
        if runs > 1:
            text += f" (mean of {runs})"
        ax.plot(
            part[RATIO],
            part["mean"],
            color=color,
            linestyle=linestyle,
            marker="o" if markers else None,
            markersize=2.2,
            linewidth=1.6 if bold else 1.0,
            zorder=3 if bold else 2,
            label=text,
        )
        banded = part[part["band"] != "none"]
        if not banded.empty and (part["hi"] > part["lo"]).any():
            ax.fill_between(part[RATIO], part["lo"], part["hi"], color=color, alpha=0.18, linewidth=0, zorder=1)
            kinds |= set(banded["band"])
    return kinds


_XLABEL = "experts removed"


def _band_note(axes_list) -> str | None:
    """The band note of the first Axes that has one in its x label, taken out of every x label
    (a figure legend shows it once)."""
    note = None
    for ax in axes_list:
        text = ax.get_xlabel()
        if text.startswith(_XLABEL + " ("):
            note = note or text[len(_XLABEL) + 2 : -1]
            ax.set_xlabel(_XLABEL)
    return note


def _finish(ax, metric, kinds):
    percent_axis(ax, "x")
    ax.set_xlabel(_XLABEL + (f" ({'; '.join(_BAND_NOTE[k] for k in sorted(kinds))})" if kinds else ""))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if metric == DELTA_LOSS:
        reference_line(ax, 0.0, zorder=0)


@styled
def loss_vs_ratio(
    results: pd.DataFrame,
    *,
    metric: str = LOSS,
    domain: str | None = ALL,
    hue: str | None = None,
    focus: bool = False,
    legend: bool = True,
    ax=None,
):
    """`metric` (loss, delta_loss, kl, agreement, ...) against the fraction of experts removed, one
    line per `hue` value (default: `label`, else `criterion`), with the ratio-0 baseline starting every line.

        >>> loss_vs_ratio(results, metric="agreement", domain="all")
        <Axes: title={'left': 'top-1 agreement (all)'}, ...>

    Bands: the 95% bootstrap interval when the frame has <metric>_lo / <metric>_hi, otherwise the
    min-max over repeated runs (random seeds); a note above the axes says which. `focus`: when random
    pruning is far worse than every other method, the y axis fits the others and a note gives random's range.
    """
    own = ax is None
    fig, ax = axes(ax, (COLUMN, 2.6))
    ax.set_title(_short(metric) + (f" ({domain})" if domain else ""), loc="left")
    data = results if is_empty(results) else select(_prepare(results, metric), domain=domain)
    if is_empty(data) or metric not in data.columns or data[metric].dropna().empty:
        return no_data(ax)
    hue = _hue(data, hue)
    kinds = _draw_curves(ax, data, metric, hue)
    limits = _focus_limits(data, metric, hue) if focus else None
    if limits:
        ax.set_ylim(limits[0], limits[1])
        _off_scale(ax, limits, text=f"random: {limits[2][0]:.3g} to {limits[2][1]:.3g}, off scale")
    _finish(ax, metric, kinds)
    if legend and own:
        _figure_legend(fig, [ax], ncols=2)
    elif legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0)
    return ax


def _off_scale(ax, limits, *, text: str):
    """A note, in random's colour, on the side of the axes where random pruning lies off scale."""
    below = limits[2][0] < limits[0]
    ax.text(
        0.98,
        0.02 if below else 0.98,
        text,
        transform=ax.transAxes,
        ha="right",
        va="bottom" if below else "top",
        fontsize=MIN_TEXT,
        color=criterion_color("random"),
    )


def study_curves(results: pd.DataFrame, *, metric: str = LOSS, domain: str = ALL, focus: bool = True, ax=None):
    """:func:`loss_vs_ratio` of a study frame with `focus` on (random pruning off scale when far worse) and no legend.

    >>> study_curves(results, metric="kl", domain="code")
    <Axes: title={'left': 'KL to unpruned (code)'}, ...>
    """
    return loss_vs_ratio(results, metric=metric, domain=domain, focus=focus, legend=False, ax=ax)


def _domains(results, domains, metrics=()):
    """The domains to draw: `domains`, or those of `results` with a value of one of `metrics`, "all" first."""
    if domains is not None:
        return list(domains)
    if DOMAIN not in results.columns:
        return [None]
    present = [m for m in metrics if m in results.columns]
    if present:
        results = results[results[present].notna().any(axis=1)]
    return sorted(dict.fromkeys(results[DOMAIN]), key=lambda d: (d != ALL, str(d)))


def _figure_legend(fig, axes_list, *, loc="outside lower center", ncols=4):
    note = _band_note(axes_list)
    handles, labels = {}, []
    for ax in axes_list:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc=loc, ncols=ncols, title=note)


@styled
def study_figure(results: pd.DataFrame, *, metrics=(DELTA_LOSS, "kl"), domains=None, focus: bool = True, fig=None):
    """A grid of :func:`study_curves`: one row per metric (one y scale per row: the domains are
    compared), one column per domain ("all" first); one legend. Returns the Figure.

        >>> study_figure(results, metrics=["delta_loss", "agreement"])
        <Figure size 825x585 with 10 Axes>

    The default metrics compare domains by Δ loss (each domain against its own unpruned loss) and KL.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if is_empty(results):
        return no_data_figure(fig, title="compression study")
    results = wide_results(results)
    domains = _domains(results, domains, metrics)
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 0.9 + 1.5 * len(metrics)), layout="constrained")
    grid = fig.subplots(len(metrics), len(domains), squeeze=False, sharex=True, sharey="row")
    for i, metric in enumerate(metrics):
        data = _prepare(results, metric)
        hue = _hue(data, None)
        for j, domain in enumerate(domains):
            ax = loss_vs_ratio(data, metric=metric, domain=domain, legend=False, ax=grid[i, j])
            ax.set_title("", loc="left")
            ax.set_title(str(domain) if i == 0 else "", loc="center")
            for text in list(ax.texts):
                if text.get_text().startswith("random"):
                    text.remove()
            if j:
                ax.set_ylabel("")
            if i < len(metrics) - 1:
                ax.set_xlabel("")
        limits = _focus_limits(data, metric, hue) if focus and metric in data.columns else None
        if limits:
            grid[i, 0].set_ylim(limits[0], limits[1])
            _off_scale(grid[i, -1], limits, text="random: off scale")
    _figure_legend(fig, grid.ravel())
    return fig


@styled
def compression_figure(
    results: pd.DataFrame, *, domain: str = ALL, metrics=(DELTA_LOSS, "agreement"), focus: bool = True, fig=None
):
    """Loss against compression for every method with intervals, and top-1 agreement beside it
    (two columns wide, one legend below). Returns the Figure.

        >>> compression_figure(results)                    # results of reapkit.study.experiments.compression_study
        <Figure size 825x412.5 with 2 Axes>
        >>> compression_figure(results, metrics=["loss", "agreement"])   # absolute loss
        <Figure size 825x412.5 with 2 Axes>

    Loss is drawn as Δ loss against the unpruned model by default: its interval (paired, when the
    study computed it) is what tells two methods apart; absolute losses share the wide spread of
    the evaluation sequences.
    """
    if is_empty(results):
        return no_data_figure(fig, title="compression")
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.75), layout="constrained")
    panels = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(panels, metrics):
        loss_vs_ratio(results, metric=metric, domain=domain, focus=focus, legend=False, ax=ax)
    _figure_legend(fig, panels, ncols=4)
    return fig


@styled
def scores_figure(results: pd.DataFrame, *, hue: str | None = None, fig=None):
    """One :func:`loss_vs_ratio` panel per task and metric of long-form results (e.g. lm-eval scores
    from `reapkit.measure.harness.lm_eval_plans`), one legend. Returns the Figure.

        >>> scores_figure(lm_rows)                         # e.g. acc on one task, bits_per_byte on another
        <Figure size 825x390 with 2 Axes>

    Bands: the normal 95% interval from each score's stderr, where the task gives one.
    """
    from reapkit.measure.schema import METRIC

    if is_empty(results) or METRIC not in results.columns or results[METRIC].dropna().empty:
        return no_data_figure(fig, title="scores vs compression")
    panels = results.dropna(subset=[METRIC])[[DOMAIN, METRIC]].drop_duplicates().values.tolist()
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 0.9 + 1.7 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for (domain, metric), ax in zip(panels, grid):
        loss_vs_ratio(results, metric=metric, domain=domain, hue=hue, legend=False, ax=ax)
        ax.set_title(f"{metric}\n{domain}", loc="left")
        ax.set_xlabel(ax.get_xlabel().replace("own 95% CI", "value ± 1.96 stderr"))
        ax.tick_params(labelbottom=True)  # every panel reads on its own (shared x hides inner labels)
    for ax in grid[len(panels) :]:
        ax.axis("off")
    _figure_legend(fig, grid[: len(panels)])
    return fig


@styled
def layer_sensitivity(frame: pd.DataFrame, *, metric: str = DELTA_LOSS, ratio: float | None = 0.5, ax=None):
    """Per-layer sensitivity: Δ loss when `ratio` of the experts of one layer at a time are pruned,
    one bar per layer, with the 95% interval (paired with the unpruned model) when the frame has
    <metric>_lo / <metric>_hi.

        >>> layer_sensitivity(pd.DataFrame({"layer": [0, 1, 2], "delta_loss": [0.3, 0.1, 0.05]}))
        <Axes: title={'left': 'one layer pruned at a time, 50% of its experts'}, ...>
    """
    fig, ax = axes(ax, (COLUMN, 2.0))
    ax.set_title(
        "one layer pruned at a time" + (f", {ratio:.0%} of its experts" if ratio is not None else ""), loc="left"
    )
    if is_empty(frame) or metric not in frame.columns:
        return no_data(ax)
    data = (
        frame.groupby("layer")[[c for c in (metric, lo(metric), hi(metric)) if c in frame.columns]].mean().sort_index()
    )
    x = np.arange(len(data))
    errors = None
    if lo(metric) in data and hi(metric) in data:
        errors = np.vstack([data[metric] - data[lo(metric)], data[hi(metric)] - data[metric]]).clip(min=0)
    color = criterion_color(frame[CRITERION].iloc[0]) if CRITERION in frame.columns else criterion_color("reap")
    ax.bar(
        x, data[metric], width=0.7, color=color, yerr=errors, error_kw=dict(elinewidth=0.7, capsize=1.5, ecolor="black")
    )
    reference_line(ax, 0.0)
    ax.set_xticks(x, [str(v) for v in data.index])
    ax.set_xlabel("layer pruned" + (" (bars: paired 95% CI)" if errors is not None else ""))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    return ax


@styled
def loss_vs_ratio_by_domain(results: pd.DataFrame, *, metric: str = DELTA_LOSS, hue: str | None = None, fig=None):
    """One :func:`loss_vs_ratio` panel per domain, one shared y scale (Δ loss by default: each
    domain against its own unpruned loss), one legend. Returns the Figure.

        >>> loss_vs_ratio_by_domain(results, metric="delta_loss")
        <Figure size 825x307.5 with 5 Axes>
    """
    results = results if is_empty(results) else _prepare(results, metric)
    if is_empty(results) or metric not in results.columns:
        return no_data_figure(fig, title=f"{metric} vs compression by domain")
    domains = _domains(results, None, [metric])
    n = len(domains)
    ncols = min(n, 5)
    nrows = -(-n // ncols)
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 0.55 + 1.5 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for domain, ax in zip(domains, grid):
        loss_vs_ratio(results, metric=metric, domain=domain, hue=hue, legend=False, ax=ax)
        ax.set_title("", loc="left")
        ax.set_title(str(domain))
    for i, ax in enumerate(grid[:n]):
        if i % ncols:
            ax.set_ylabel("")
    for ax in grid[n:]:
        ax.axis("off")
    _figure_legend(fig, grid[:n])
    return fig


@styled
def reconstruction_by_layer(frame: pd.DataFrame, *, hue: str = CRITERION, facet: str = RATIO, fig=None):
    """Relative L2 error of each MoE block's output (layer, rel_l2 [, rel_l2_lo, rel_l2_hi, criterion,
    ratio]) by layer: one panel per `facet` value (ratio), one colour per `hue` value (criterion), the
    95% bootstrap interval over sequences as a band. Returns the Figure.

        >>> reconstruction_by_layer(reconstruction)        # reapkit.measure.evaluate.reconstruction_error
        <Figure size 487.5x390 with 1 Axes>
    """
    if is_empty(frame) or "rel_l2" not in frame.columns:
        return no_data_figure(fig, title="block reconstruction error")
    facets = sorted(set(frame[facet])) if facet in frame.columns else [None]
    width = TWO_COLUMN if len(facets) > 1 else COLUMN
    fig = fig or plt.figure(figsize=(width, 2.6), layout="constrained")
    grid = fig.subplots(1, len(facets), squeeze=False, sharey=True)[0]
    hues = list(dict.fromkeys(frame[hue])) if hue in frame.columns else [None]
    columns = [c for c in interval_columns("rel_l2") if c in frame.columns]
    for ax, value in zip(grid, facets):
        for h in hues:
            part = select(frame, **{hue: h, facet: value}).groupby("layer")[columns].mean()
            if part.empty:
                continue
            color, bold = criterion_color(h), h == "reap"
            ax.plot(
                part.index,
                part["rel_l2"],
                marker="o",
                markersize=2.2,
                color=color,
                linewidth=1.6 if bold else 1.0,
                zorder=3 if bold else 2,
                label=label(h) if h is not None else None,
            )
            if len(columns) == 3:
                ax.fill_between(part.index, part[columns[1]], part[columns[2]], color=color, alpha=0.18, linewidth=0)
        ax.set_title(f"{value:.0%} removed" if isinstance(value, float) else "block reconstruction error", loc="left")
        integer_axis(ax, "x")
        ax.set_xlabel("layer")
    grid[0].set_ylim(bottom=0)
    grid[0].set_ylabel("relative L2 error of the block output")
    legend_below(fig, grid, title="bands: 95% CI over sequences" if len(columns) == 3 else None)
    return fig
