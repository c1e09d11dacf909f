"""Figures of calibration domains: which experts serve which domain, and specialisation by depth.

>>> domain_saliency(scores, criterion="frequency")
<Axes: title={'left': 'domain enrichment (frequency)'}, ...>
>>> specialisation_by_depth(scores)
<Axes: title={'left': 'specialisation by depth (frequency)'}, ...>
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import interval_columns
from reapkit.plot.theme import (
    COLUMN,
    MIN_TEXT,
    MISSING_COLOR,
    TWO_COLUMN,
    axes,
    criterion_color,
    domain_marker,
    index_ticks,
    integer_axis,
    is_empty,
    label,
    legend_below,
    no_data,
    styled,
)
from reapkit.study.tables import domain_share_table, specialisation_by_layer, specialisation_table

__all__ = ["domain_saliency", "specialisation_by_depth"]


@styled
def domain_saliency(
    frame: pd.DataFrame,
    *,
    criterion: str = "frequency",
    layers=None,
    top_k: int | None = None,
    ax=None,
    annotate: bool = True,
):
    """Which experts serve which domain: rows (layer, domain), columns experts, colour = enrichment
    (the expert's share of the domain's routed tokens x experts; 1 = uniform), log2 scale symmetric
    around 1 up to the largest possible, experts / `top_k` (an expert gets at most one of a token's
    top-k slots).

        >>> domain_saliency(scores, criterion="frequency", top_k=obs.top_k)
        <Axes: title={'left': 'domain enrichment (frequency)'}, ...>

    Experts a domain never routes to are grey (not the loudest colour); each expert's dominant
    domain is marked with a dot in its row.
    """
    table = domain_share_table(frame, criterion=criterion)
    if layers is not None and not table.empty:
        table = table[table["layer"].isin(list(layers))]
    rows = len(table.groupby(["layer", "domain"])) if not table.empty else 4
    fig, ax = axes(ax, (TWO_COLUMN, 0.75 + 0.12 * max(rows, 4)))
    ax.set_title(f"domain enrichment ({label(criterion)})", loc="left")
    if table.empty:
        return no_data(ax, "no data (needs per-domain scores)")
    pivot = table.pivot_table(index=["layer", "domain"], columns="expert", values="enrichment")
    raw = pivot.to_numpy(float)
    with np.errstate(divide="ignore"):
        values = np.ma.masked_invalid(np.where(raw > 0, np.log2(raw), np.nan))
    experts = pivot.shape[1]
    limit = (
        float(np.log2(experts / top_k)) if top_k else float(np.ceil(np.nanmax(np.abs(values.compressed()), initial=1)))
    )
    limit = max(limit, 1.0)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=MISSING_COLOR)
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-limit, vmax=limit)
    low = values.compressed()
    extend = "min" if low.size and low.min() < -limit else "neither"
    ax.set_yticks(np.arange(len(pivot.index)), [f"L{layer} {domain}" for layer, domain in pivot.index])
    index_ticks(ax, pivot.columns, "x", max_ticks=32)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer, domain")
    layers_ = [layer for layer, _ in pivot.index]
    for i in range(1, len(layers_)):
        if layers_[i] != layers_[i - 1]:
            ax.axhline(i - 0.5, color="white", linewidth=1.2)
    if annotate:
        share = table.pivot_table(index=["layer", "expert"], columns="domain", values="share")
        dominant = share.idxmax(axis=1)
        where = {key: i for i, key in enumerate(pivot.index)}
        cols = {e: j for j, e in enumerate(pivot.columns)}
        for (layer, expert), domain in dominant.items():
            if (layer, domain) in where and expert in cols and share.loc[(layer, expert)].max() > 0:
                ax.plot(cols[expert], where[(layer, domain)], marker=".", color="black", markersize=2.5)
    bar = fig.colorbar(image, ax=ax, shrink=0.95, pad=0.01, extend=extend)
    bar.set_label("enrichment (share × experts)" + (f"; max {experts // top_k}" if top_k else ""))
    ticks = np.arange(-np.floor(limit), np.floor(limit) + 1, max(1, int(limit) // 3))
    bar.set_ticks(ticks, labels=[f"{2**t:g}" if t >= 0 else f"1/{2**-t:g}" for t in ticks])
    notes = ["dot: dominant domain"] + (["grey: never routed"] if np.ma.getmaskarray(values).any() else [])
    ax.text(
        1.0, 1.0, "; ".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=MIN_TEXT, color="0.35"
    )
    return ax


@styled
def specialisation_by_depth(frame: pd.DataFrame, *, criterion: str = "frequency", hue: str | None = None, ax=None):
    """Domain specialisation by depth: each expert as a grey marker (shape = its dominant domain) and
    the usage-weighted mean per layer in black with its 95% bootstrap interval over the layer's experts.

        >>> specialisation_by_depth(scores)
        <Axes: title={'left': 'specialisation by depth (frequency)'}, ...>

    `frame` is a scores frame or a :func:`reapkit.study.tables.specialisation_table`; with `hue` (a column
    such as "run" or "model") one line per value (colour per value) and no markers. The legend goes
    below (with `ax`, left to the caller: `reapkit.plot.theme.legend_below`).
    """
    own = ax is None
    fig, ax = axes(ax, (COLUMN, 2.6))
    ax.set_title(f"specialisation by depth ({label(criterion)})", loc="left")
    if is_empty(frame):
        return no_data(ax)
    table = frame if "specialisation" in frame.columns else specialisation_table(frame, criterion=criterion)
    if table.empty:
        return no_data(ax, "no data (needs per-domain scores)")
    grouped = hue is not None and hue in table.columns
    groups = list(table.groupby(hue, sort=True)) if grouped else [(None, table)]
    if not grouped:
        rng = np.random.default_rng(0)
        for domain in sorted(set(table["dominant"])):
            part = table[table["dominant"] == domain]
            jitter = rng.uniform(-0.18, 0.18, len(part))
            ax.scatter(
                part["layer"] + jitter,
                part["specialisation"],
                s=9,
                marker=domain_marker(domain),
                facecolors="none",
                edgecolors="0.55",
                linewidths=0.5,
                label=f"expert, mostly {domain}",
                zorder=2,
            )
    for name, part in groups:
        means = specialisation_by_layer(part)
        mean, low, high = interval_columns("specialisation")
        ax.errorbar(
            means["layer"],
            means[mean],
            yerr=np.vstack([means[mean] - means[low], means[high] - means[mean]]).clip(min=0),
            color="black" if name is None else criterion_color(name),
            marker="o",
            markersize=3,
            capsize=2,
            elinewidth=0.8,
            label="usage-weighted mean, 95% CI" if name is None else label(name),
            zorder=3,
        )
    integer_axis(ax, "x")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("specialisation (0: all domains alike)")
    if own:
        legend_below(fig, [ax], ncols=2)
    return ax
