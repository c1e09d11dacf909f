"""Figures comparing criteria: agreement by layer (with chance levels) and REAP against frequency per expert.

>>> criterion_agreement(scores, criteria=["reap", "frequency", "ean_mean"], ratio=0.5)
>>> reap_vs_frequency(scores, layer=3, ratio=0.5)
>>> criterion_vs_ablation(table)     # table = reapkit.study.ablation.ablation_correlation(obs, costs, criteria)
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, select
from reapkit.plot.theme import (
    COLUMN,
    TWO_COLUMN,
    axes,
    chance_line,
    criterion_color,
    integer_axis,
    is_empty,
    no_data,
    no_data_figure,
    styled,
)
from reapkit.select.criteria import DEFAULT_CRITERIA
from reapkit.select.plan import pruned_count
from reapkit.study.tables import agreement_table

__all__ = ["criterion_agreement", "criterion_vs_ablation", "reap_vs_frequency"]

_PAIR_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")


@styled
def criterion_agreement(
    frame: pd.DataFrame,
    *,
    criteria=DEFAULT_CRITERIA,
    ratio: float = 0.5,
    domain: str = ALL,
    reference: str | None = None,
    fig=None,
):
    """Two panels by layer: Spearman correlation between criteria (0 and the 95% band of unrelated
    rankings shaded), and the overlap (Jaccard) of the experts they prune (chance level dotted).

        >>> criterion_agreement(scores, criteria=["reap", "frequency", "ean_mean"], ratio=0.5)

    `frame` is a scores frame, or an :func:`reapkit.study.tables.agreement_table`. Each pair is drawn in
    the colour of its second criterion and a marker of its first; `reference` (default: the first
    criterion) keeps only the pairs with it. Returns the Figure.
    """
    table = (
        frame
        if (not is_empty(frame) and "spearman" in frame.columns)
        else agreement_table(frame, criteria=criteria, ratio=ratio, domain=domain)
    )
    if is_empty(table):
        return no_data_figure(fig, message="no data (needs two criteria)", title="criterion agreement")
    if reference is not None:
        table = table[(table["criterion_a"] == reference) | (table["criterion_b"] == reference)]
    fig = fig or plt.figure(figsize=(TWO_COLUMN, 2.1), layout="constrained")
    ax_rho, ax_overlap = fig.subplots(1, 2, sharex=True)
    pairs = list(dict.fromkeys(zip(table["criterion_a"], table["criterion_b"])))
    firsts = list(dict.fromkeys(a for a, _ in pairs))
    layers = sorted(set(table["layer"]))
    band = (
        table.groupby("layer")[["spearman_lo", "spearman_hi"]].mean().reindex(layers)
        if "spearman_lo" in table
        else None
    )
    if band is not None:
        ax_rho.fill_between(
            layers,
            band["spearman_lo"],
            band["spearman_hi"],
            color="0.9",
            linewidth=0,
            zorder=0,
            label="95% of random rankings",
            step="mid" if len(layers) > 1 else None,
        )
        if len(layers) == 1:
            ax_rho.axhspan(band["spearman_lo"].iloc[0], band["spearman_hi"].iloc[0], color="0.9", zorder=0)
    ax_rho.axhline(0, color="0.5", linewidth=0.6, zorder=1)
    for a, b in pairs:
        part = table[(table["criterion_a"] == a) & (table["criterion_b"] == b)].sort_values("layer")
        kwargs = dict(
            color=criterion_color(b),
            marker=_PAIR_MARKERS[firsts.index(a) % len(_PAIR_MARKERS)],
            markersize=3,
            linewidth=1.0,
            label=f"{a} vs {b}",
        )
        ax_rho.plot(part["layer"], part["spearman"], **kwargs)
        ax_overlap.plot(part["layer"], part["overlap"], **kwargs)
    if "overlap_chance" in table:
        chance = table.groupby("layer")["overlap_chance"].mean().reindex(layers)
        if np.ptp(chance.to_numpy()) < 1e-9:
            chance_line(ax_overlap, float(chance.iloc[0]))
        else:
            ax_overlap.plot(
                layers, chance.to_numpy(), color="0.45", linestyle=(0, (1, 1.5)), linewidth=0.8, label="chance"
            )
    ax_rho.set_ylim(-1.05, 1.05)
    ax_rho.set_title("rank correlation of scores")
    ax_rho.set_xlabel("layer")
    ax_rho.set_ylabel("Spearman ρ")
    ax_overlap.set_ylim(-0.02, 1.02)
    ax_overlap.set_title(
        f"overlap of pruned sets at {ratio:.0%} removed"
        if "spearman" not in getattr(frame, "columns", [])
        else "overlap of pruned sets"
    )
    ax_overlap.set_xlabel("layer")
    ax_overlap.set_ylabel("Jaccard index")
    integer_axis(ax_rho, "x")
    handles, labels = ax_overlap.get_legend_handles_labels()
    h2, l2 = ax_rho.get_legend_handles_labels()
    handles += [h for h, lab in zip(h2, l2) if lab.startswith("95%")]
    labels += [lab for lab in l2 if lab.startswith("95%")]
    fig.legend(handles, labels, loc="outside right center")
    return fig


def _pruned_mask(values: np.ndarray, ratio: float) -> np.ndarray:
    """Experts a uniform plan at `ratio` prunes from scores `values` (lowest first, stable ties)."""
    k = pruned_count(values.size, ratio)
    mask = np.zeros(values.size, bool)
    mask[np.argsort(values, kind="stable")[:k]] = True
    return mask


@styled
def reap_vs_frequency(
    frame: pd.DataFrame,
    *,
    layer=None,
    ratio: float = 0.5,
    domain: str = ALL,
    x: str = "frequency",
    y: str = "reap",
    ax=None,
):
    """Each expert as a point: routing frequency (x) against its REAP score, mean gate x ||output|| (y),
    marked by which criterion keeps it at `ratio`: kept by both (black), only by REAP (REAP's colour),
    only by frequency (frequency's colour), pruned by both (hollow grey).

        >>> reap_vs_frequency(scores, layer=3, ratio=0.5)

    This shows when the two disagree: rarely routed experts with large gated outputs (top left) are
    kept by REAP only. `layer=None` pools every layer (frequency as the share of its layer's tokens,
    cut-offs per layer); with one layer, the two cut-offs are drawn as lines. `x` / `y` choose other
    criteria of the scores frame.
    """
    fig, ax = axes(ax, (COLUMN, 2.5))
    ax.set_title(f"{y} vs {x}" + (f", layer {layer}" if layer is not None else "") + f" ({ratio:.0%} removed)")
    data = select(frame, domain=domain, layer=layer) if not is_empty(frame) else frame
    if is_empty(data) or not {x, y} <= set(data["criterion"]):
        return no_data(ax, f"no data (needs {x} and {y} scores)")
    rows = []
    for lay, part in data.groupby("layer"):
        table = part.pivot_table(index="expert", columns="criterion", values="value", aggfunc="mean")
        if x not in table or y not in table:
            continue
        xv, yv = table[x].to_numpy(float), table[y].to_numpy(float)
        total = xv.sum()
        share = xv / total if (layer is None and total > 0) else xv
        rows.append(
            pd.DataFrame(
                {
                    "layer": lay,
                    "expert": table.index,
                    "x": share,
                    "y": yv,
                    "pruned_x": _pruned_mask(xv, ratio),
                    "pruned_y": _pruned_mask(yv, ratio),
                }
            )
        )
    points = pd.concat(rows, ignore_index=True)
    groups = [
        ("kept by both", ~points.pruned_x & ~points.pruned_y, dict(color="black")),
        (f"kept by {y} only", points.pruned_x & ~points.pruned_y, dict(color=criterion_color(y), marker="^")),
        (f"kept by {x} only", ~points.pruned_x & points.pruned_y, dict(color=criterion_color(x), marker="v")),
        (
            "pruned by both",
            points.pruned_x & points.pruned_y,
            dict(facecolors="none", edgecolors="0.5", linewidths=0.6),
        ),
    ]
    for label, selected, kwargs in groups:
        part = points[selected]
        ax.scatter(
            part["x"],
            part["y"],
            s=12,
            label=f"{label} ({len(part)})",
            zorder=2,
            **({"linewidths": 0} | kwargs) if "edgecolors" not in kwargs else kwargs,
        )
    if layer is not None and len(points):
        for col, pruned, draw in (("x", "pruned_x", ax.axvline), ("y", "pruned_y", ax.axhline)):
            kept_values = points.loc[~points[pruned], col]
            gone_values = points.loc[points[pruned], col]
            if len(kept_values) and len(gone_values):
                draw((kept_values.min() + gone_values.max()) / 2, color="0.5", linestyle="--", linewidth=0.6, zorder=1)
    ax.set_xlabel(
        f"{x} (share of layer's routed tokens)"
        if layer is None and x == "frequency"
        else "routing frequency (tokens)"
        if x == "frequency"
        else x
    )
    ax.set_ylabel("REAP score: mean gate × ‖output‖" if y == "reap" else y)
    ax.margins(0.05)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0, handletextpad=0.2)
    return ax


@styled
def criterion_vs_ablation(table: pd.DataFrame, *, ax=None):
    """Each criterion's rank correlation with the single-expert ablation cost, one dot per MoE layer
    with its 95% interval, criteria ordered by their mean; the band unrelated rankings fall in shaded.

        >>> criterion_vs_ablation(table)   # reapkit.study.ablation.ablation_correlation(obs, costs, criteria)

    Returns the Figure.
    """
    if is_empty(table):
        return no_data_figure(None if ax is None else ax.figure, title="criteria against ablation")
    fig, ax = axes(ax, figsize=(COLUMN, 2.4))
    order = table.groupby("criterion")["rho"].mean().sort_values(ascending=False).index.tolist()
    layers = sorted(set(table["layer"]))
    ax.axhspan(
        table["chance_lo"].mean(), table["chance_hi"].mean(), color="0.9", zorder=0, label="95% of random rankings"
    )
    ax.axhline(0, color="0.5", linewidth=0.6, zorder=1)
    width = 0.6 / max(len(layers), 1)
    for x, criterion in enumerate(order):
        part = table[table["criterion"] == criterion].set_index("layer").reindex(layers)
        offsets = x - 0.3 + width * (np.arange(len(layers)) + 0.5)
        ax.errorbar(
            offsets,
            part["rho"],
            yerr=[part["rho"] - part["lo"], part["hi"] - part["rho"]],
            fmt="o",
            markersize=3,
            linewidth=0.8,
            color=criterion_color(criterion),
        )
    ax.set_xticks(range(len(order)), order, rotation=40, ha="right")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman ρ with ablation cost")
    ax.set_title(f"criteria against single-expert ablation ({len(layers)} layers)")
    ax.legend(loc="lower left")
    return fig
