"""Figures of what compression costs: metrics against the fraction removed (with intervals), per-layer
sensitivity, block reconstruction error. (Calibration sensitivity: `reapkit.plot.calibration`.)

    >>> compression_figure(results)                     # loss and top-1 agreement, every method, 95% CIs
    >>> study_figure(results, metrics=["delta_loss", "kl"])   # one column per domain, shared y per row
    >>> layer_sensitivity(sensitivity)                   # layer, delta_loss [, delta_loss_lo, delta_loss_hi]
    >>> scores_figure(lm_rows)                           # long-form scores (lm-eval): a panel per task and metric

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
    lo,
    select,
    wide_results,
    with_delta_loss,
)
from reapkit.plot.theme import (
    COLUMN,
    TWO_COLUMN,
    axes,
    criterion_color,
    domain_linestyle,
    integer_axis,
    is_empty,
    method_linestyle,
    no_data,
    no_data_figure,
    percent_axis,
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

_BAND_NOTE = {"ci": "bands: 95% bootstrap CI", "range": "bands: min-max over runs"}


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
        label = str(name) if name is not None else metric
        runs = int(part.loc[part[RATIO] != 0, "runs"].max()) if (part[RATIO] != 0).any() else 1
        if runs > 1:
            label += f" (mean of {runs})"
        ax.plot(
            part[RATIO],
            part["mean"],
            color=color,
            linestyle=linestyle,
            marker="o" if markers else None,
            markersize=2.2,
            linewidth=1.6 if bold else 1.0,
            zorder=3 if bold else 2,
            label=label,
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
        label = ax.get_xlabel()
        if label.startswith(_XLABEL + " ("):
            note = note or label[len(_XLABEL) + 2 : -1]
            ax.set_xlabel(_XLABEL)
    return note


def _finish(ax, metric, kinds):
    percent_axis(ax, "x")
    ax.set_xlabel(_XLABEL + (f" ({'; '.join(_BAND_NOTE[k] for k in sorted(kinds))})" if kinds else ""))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if metric == DELTA_LOSS:
        ax.axhline(0, color="0.6", linewidth=0.5, zorder=0)


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

    Bands: the 95% bootstrap interval when the frame has <metric>_lo / <metric>_hi, otherwise the
    min-max over repeated runs (random seeds); a note above the axes says which. `focus`: when random
    pruning is far worse than every other method, the y axis fits the others and a note gives random's range.
    """
    fig, ax = axes(ax)
    ax.set_title(_short(metric) + (f" ({domain})" if domain else ""))
    data = results if is_empty(results) else select(_prepare(results, metric), domain=domain)
    if is_empty(data) or metric not in data.columns or data[metric].dropna().empty:
        return no_data(ax)
    hue = _hue(data, hue)
    kinds = _draw_curves(ax, data, metric, hue)
    limits = _focus_limits(data, metric, hue) if focus else None
    if limits:
        ax.set_ylim(limits[0], limits[1])
        ax.text(
            0.98,
            0.02 if metric != "agreement" else 0.98,
            f"random: {limits[2][0]:.3g} to {limits[2][1]:.3g}, off scale",
            transform=ax.transAxes,
            ha="right",
            va="bottom" if metric != "agreement" else "top",
            fontsize=5.5,
            color=criterion_color("random"),
        )
    _finish(ax, metric, kinds)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0)
    return ax


def study_curves(results: pd.DataFrame, *, metric: str = LOSS, domain: str = ALL, focus: bool = True, ax=None):
    """:func:`loss_vs_ratio` of a study frame with `focus` on (random pruning off scale when far worse) and no legend.

    >>> study_curves(results, metric="kl", domain="code")
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


def _figure_legend(fig, axes_list, *, loc="outside right upper", ncols=1):
    note = _band_note(axes_list)
    handles, labels = {}, []
    for ax in axes_list:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc=loc, ncols=ncols, title=note, title_fontsize=6)


@styled
def study_figure(results: pd.DataFrame, *, metrics=(DELTA_LOSS, "kl"), domains=None, focus: bool = True, fig=None):
    """A grid of :func:`study_curves`: one row per metric (one y scale per row: the domains are
    compared), one column per domain ("all" first); one legend. Returns the Figure.

        >>> study_figure(results, metrics=["delta_loss", "agreement"])

    The default metrics compare domains by Δ loss (each domain against its own unpruned loss) and KL.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if is_empty(results):
        return no_data_figure(fig, title="compression study")
    results = wide_results(results)
    domains = _domains(results, domains, metrics)
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 0.5 + 1.55 * len(metrics)), layout="constrained")
    grid = fig.subplots(len(metrics), len(domains), squeeze=False, sharex=True, sharey="row")
    for i, metric in enumerate(metrics):
        data = _prepare(results, metric)
        hue = _hue(data, None)
        for j, domain in enumerate(domains):
            ax = loss_vs_ratio(data, metric=metric, domain=domain, legend=False, ax=grid[i, j])
            ax.set_title(str(domain) if i == 0 else "")
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
            grid[i, -1].text(
                0.98,
                0.98 if metric == "agreement" else 0.02,
                "random: off scale",
                transform=grid[i, -1].transAxes,
                ha="right",
                va="top" if metric == "agreement" else "bottom",
                fontsize=5.5,
                color=criterion_color("random"),
            )
    _figure_legend(fig, grid.ravel())
    return fig


@styled
def compression_figure(
    results: pd.DataFrame, *, domain: str = ALL, metrics=(DELTA_LOSS, "agreement"), focus: bool = True, fig=None
):
    """Loss against compression for every method with intervals, and top-1 agreement beside it
    (two columns wide, one legend below). Returns the Figure.

        >>> compression_figure(results)                    # results of reapkit.study.experiments.compression_study
        >>> compression_figure(results, metrics=["loss", "agreement"])   # absolute loss

    Loss is drawn as Δ loss against the unpruned model by default: its interval (paired, when the
    study computed it) is what tells two methods apart; absolute losses share the wide spread of
    the evaluation sequences.
    """
    if is_empty(results):
        return no_data_figure(fig, title="compression")
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.35), layout="constrained")
    panels = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(panels, metrics):
        loss_vs_ratio(results, metric=metric, domain=domain, focus=focus, legend=False, ax=ax)
    _figure_legend(fig, panels, loc="outside lower center", ncols=5)
    return fig


@styled
def scores_figure(results: pd.DataFrame, *, hue: str | None = None, fig=None):
    """One :func:`loss_vs_ratio` panel per task and metric of long-form results (e.g. lm-eval scores
    from `reapkit.measure.harness.lm_eval_plans`), one legend. Returns the Figure.

        >>> scores_figure(lm_rows)                         # e.g. acc on one task, bits_per_byte on another

    Bands: the normal 95% interval from each score's stderr, where the task gives one.
    """
    from reapkit.measure.schema import METRIC

    if is_empty(results) or METRIC not in results.columns or results[METRIC].dropna().empty:
        return no_data_figure(fig, title="scores vs compression")
    panels = results.dropna(subset=[METRIC])[[DOMAIN, METRIC]].drop_duplicates().values.tolist()
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 0.55 + 1.7 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for (domain, metric), ax in zip(panels, grid):
        loss_vs_ratio(results, metric=metric, domain=domain, hue=hue, legend=False, ax=ax)
        ax.set_title(f"{metric}\n{domain}")
        ax.set_xlabel(ax.get_xlabel().replace("95% bootstrap CI", "95% CI, value ± 1.96 stderr"))
        ax.tick_params(labelbottom=True)  # every panel reads on its own (shared x hides inner labels)
    for ax in grid[len(panels) :]:
        ax.axis("off")
    _figure_legend(fig, grid[: len(panels)])
    return fig


@styled
def layer_sensitivity(frame: pd.DataFrame, *, metric: str = DELTA_LOSS, ratio: float | None = 0.5, ax=None):
    """Per-layer sensitivity: Δ loss when `ratio` of the experts of one layer at a time are pruned,
    one bar per layer, with the 95% interval when the frame has <metric>_lo / <metric>_hi.

        >>> layer_sensitivity(pd.DataFrame({"layer": [0, 1, 2], "delta_loss": [0.3, 0.1, 0.05]}))
    """
    fig, ax = axes(ax, (COLUMN, 1.9))
    ax.set_title("per-layer sensitivity" + (f": {ratio:.0%} of one layer pruned" if ratio is not None else ""))
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
    ax.axhline(0, color="0.4", linewidth=0.5)
    ax.set_xticks(x, [str(v) for v in data.index])
    ax.set_xlabel("layer pruned" + (" (error bars: 95% bootstrap CI)" if errors is not None else ""))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    return ax


@styled
def loss_vs_ratio_by_domain(results: pd.DataFrame, *, metric: str = DELTA_LOSS, hue: str | None = None, fig=None):
    """One :func:`loss_vs_ratio` panel per domain, one shared y scale (Δ loss by default: each
    domain against its own unpruned loss), one legend. Returns the Figure.

        >>> loss_vs_ratio_by_domain(results, metric="delta_loss")
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
        ax.set_title(str(domain))
    for i, ax in enumerate(grid[:n]):
        if i % ncols:
            ax.set_ylabel("")
    for ax in grid[n:]:
        ax.axis("off")
    _figure_legend(fig, grid[:n])
    return fig


@styled
def reconstruction_by_layer(frame: pd.DataFrame, *, hue: str = CRITERION, style_by: str = RATIO, ax=None):
    """Relative L2 error of each MoE block's output (layer, rel_l2 [, criterion, ratio]) by layer:
    colour = `hue` value (criterion colours), line style = `style_by` value.

        >>> reconstruction_by_layer(reconstruction)
    """
    fig, ax = axes(ax)
    ax.set_title("block reconstruction error")
    if is_empty(frame) or "rel_l2" not in frame.columns:
        return no_data(ax)
    hues = list(dict.fromkeys(frame[hue])) if hue in frame.columns else [None]
    styles = sorted(set(frame[style_by])) if style_by in frame.columns else [None]
    dashes = ["-", "--", ":", "-."]
    for h in hues:
        for j, st in enumerate(styles):
            part = select(frame, **{hue: h, style_by: st}).groupby("layer")["rel_l2"].mean()
            if part.empty:
                continue
            label = " ".join(f"{v:.0%}" if isinstance(v, float) else str(v) for v in (h, st) if v is not None)
            ax.plot(
                part.index,
                part.to_numpy(),
                marker="o",
                markersize=2.2,
                color=criterion_color(h),
                linestyle=dashes[j % 4],
                label=label or None,
            )
    integer_axis(ax, "x")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative L2 error")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0)
    return ax
