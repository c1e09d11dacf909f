"""Figures of calibration domains: which experts serve which domain, and specialisation by depth.

>>> domain_saliency(scores, criterion="frequency")
<Axes: title={'left': 'domain enrichment (frequency)'}, ...>
>>> specialisation_by_depth(scores)
<Axes: title={'center': 'specialisation by depth (frequency)'}, ...>
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.plot.theme import (
    COLUMN,
    MISSING_COLOR,
    TWO_COLUMN,
    axes,
    criterion_color,
    domain_marker,
    index_ticks,
    integer_axis,
    is_empty,
    no_data,
    styled,
)
from reapkit.study.tables import domain_share_table, specialisation_table

__all__ = ["domain_saliency", "specialisation_by_depth"]


@styled
def domain_saliency(frame: pd.DataFrame, *, criterion: str = "frequency", layers=None, ax=None, annotate: bool = True):
    """Which experts serve which domain: rows (layer, domain), columns experts, colour = enrichment
    (share of the domain's score x experts; 1 = uniform; log2 scale, symmetric around 1).

        >>> domain_saliency(scores, criterion="frequency", layers=[1, 3])
        <Axes: title={'left': 'domain enrichment (frequency)'}, ...>

    Experts a domain never routes to are grey (not the loudest colour); each expert's dominant
    domain is marked with a dot in its row.
    """
    table = domain_share_table(frame, criterion=criterion)
    if layers is not None and not table.empty:
        table = table[table["layer"].isin(list(layers))]
    rows = len(table.groupby(["layer", "domain"])) if not table.empty else 4
    fig, ax = axes(ax, (TWO_COLUMN, 0.6 + 0.11 * max(rows, 4)))
    ax.set_title(f"domain enrichment ({criterion})", loc="left")
    if table.empty:
        return no_data(ax, "no data (needs per-domain scores)")
    pivot = table.pivot_table(index=["layer", "domain"], columns="expert", values="enrichment")
    raw = pivot.to_numpy(float)
    with np.errstate(divide="ignore"):
        values = np.ma.masked_invalid(np.where(raw > 0, np.log2(raw), np.nan))
    finite = np.abs(values.compressed())
    limit = float(np.clip(np.ceil(np.percentile(finite, 98)), 1, 6)) if finite.size else 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=MISSING_COLOR)
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-limit, vmax=limit)
    extend = "both" if finite.size and finite.max() > limit else "neither"
    ax.set_yticks(np.arange(len(pivot.index)), [f"L{layer} {domain}" for layer, domain in pivot.index])
    ax.tick_params(axis="y", labelsize=5.5)
    index_ticks(ax, pivot.columns, "x", max_ticks=32)
    ax.set_xlabel("expert")
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
    bar = fig.colorbar(image, ax=ax, label="enrichment", shrink=0.95, pad=0.01, extend=extend)
    bar.set_ticks(np.arange(-limit, limit + 1, max(1, limit // 2)))
    bar.set_ticklabels([f"{2**t:g}" if t >= 0 else f"1/{2**-t:g}" for t in bar.get_ticks()])
    if np.ma.getmaskarray(values).any():
        ax.text(
            1.0,
            1.0,
            "grey: never routed; dot: dominant domain",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=6,
            color="0.35",
        )
    return ax


@styled
def specialisation_by_depth(frame: pd.DataFrame, *, criterion: str = "frequency", hue: str | None = None, ax=None):
    """Domain specialisation by depth: each expert as a grey marker (shape = its dominant domain) and
    the usage-weighted mean per layer as a black line.

        >>> specialisation_by_depth(scores)
        <Axes: title={'center': 'specialisation by depth (frequency)'}, ...>

    `frame` is a scores frame or a :func:`reapkit.study.tables.specialisation_table`; with `hue` (a column
    such as "run" or "model") one line per value (colour per value) and no markers.
    """
    fig, ax = axes(ax, (COLUMN, 2.1))
    ax.set_title(f"specialisation by depth ({criterion})")
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
                edgecolors="0.45",
                linewidths=0.5,
                label=f"{domain}",
                zorder=2,
            )
    for name, part in groups:
        weights = part["usage"].where(part["usage"] > 0, 0) + 1e-12
        mean = (part["specialisation"] * weights).groupby(part["layer"]).sum() / weights.groupby(part["layer"]).sum()
        ax.plot(
            mean.index,
            mean.to_numpy(),
            color="black" if name is None else criterion_color(name),
            marker="o",
            markersize=2.5,
            label="mean (usage-weighted)" if name is None else str(name),
            zorder=3,
        )
    integer_axis(ax, "x")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("specialisation (0 = all domains alike)")
    legend = ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        borderaxespad=0,
        handletextpad=0.2,
        title=None if grouped else "dominant domain",
        title_fontsize=6,
    )
    legend._legend_box.align = "left"
    return ax
