"""Figures comparing criteria: a criterion x criterion agreement matrix, and REAP against frequency per expert.

>>> criterion_agreement(scores, criteria=["reap", "frequency", "ean_mean"], ratio=0.5)
<Axes: title={'left': 'agreement of criteria, 50% removed'}, ...>
>>> reap_vs_frequency(scores, ratio=0.5)                     # one panel per layer, each with its own cut-offs
<Figure size 825x330 with 4 Axes>
>>> criterion_vs_ablation(ablation)                          # scores against single-expert ablation cost
<Figure size 825x360 with 2 Axes>
>>> ablation_rank_correlation(correlations)                  # each criterion's per-layer rho with that cost
<Figure size 487.5x360 with 1 Axes>
>>> joint_vs_singles(plan_costs)                             # a plan's removed experts together against alone
<Figure size 487.5x375 with 1 Axes>
"""

from __future__ import annotations

import textwrap

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, display_name, interval, select
from reapkit.plot.theme import (
    CHANCE_STYLE,
    COLUMN,
    MIN_TEXT,
    REFERENCE_STYLE,
    TWO_COLUMN,
    axes,
    criterion_color,
    is_empty,
    label,
    legend_below,
    no_data,
    no_data_figure,
    plain_log_axis,
    reference_line,
    styled,
    undefined_cells,
)
from reapkit.select.plan import pruned_count
from reapkit.study.tables import (
    agreement_table,
    expected_jaccard,
    jaccard_band,
    spearman_band,
    uniform_plans,
    value_table,
)

__all__ = [
    "criterion_agreement",
    "reap_vs_frequency",
    "criterion_vs_ablation",
    "ablation_rank_correlation",
    "joint_vs_singles",
]


def _ink(image, value) -> str:
    """Black or white text, whichever reads on the cell's colour."""
    red, green, blue, _ = image.cmap(image.norm(value))
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"


@styled
def criterion_agreement(
    frame: pd.DataFrame, *, criteria=None, ratio: float = 0.5, domain: str = ALL, ax=None, **routing
):
    """Criterion x criterion: above the diagonal the Spearman rank correlation of their scores, below
    it the overlap (Jaccard) of the experts their plans prune at `ratio`, each the mean over layers.
    The overlap's colours diverge at its chance level (white = what two random plans share), rho's at
    0; a star marks a mean beyond the central 95% of what chance gives for that many layers; the
    diagonal is undefined (hatched).

        >>> criterion_agreement(scores, criteria=["reap", "frequency", "ean_mean"], ratio=0.5)
        <Axes: title={'left': 'agreement of criteria, 50% removed'}, ...>

    `frame`: a scores frame (plans by `reapkit.study.tables.uniform_plans`; `routing`: n_group,
    topk_group, top_k) or an `agreement_table`. Returns the Axes.
    """
    fig, ax = axes(ax, (COLUMN, 3.2))
    table = (
        frame
        if (not is_empty(frame) and "spearman" in frame.columns)
        else agreement_table(frame, criteria=criteria, ratio=ratio, domain=domain, **routing)
    )
    ax.set_title(f"agreement of criteria, {ratio:.0%} removed", loc="left")
    if is_empty(table):
        return no_data(ax, "no data (needs two criteria)")
    names = list(dict.fromkeys([*table["criterion_a"], *table["criterion_b"]]))
    n, layers = len(names), int(table["layer"].nunique())
    experts, removed = int(table["experts"].min()), pruned_count(int(table["experts"].min()), ratio)
    rho_band, jac_band = spearman_band(experts, layers), jaccard_band(experts, removed, layers)
    rho, jac = np.full((n, n), np.nan), np.full((n, n), np.nan)
    for (a, b), part in table.groupby(["criterion_a", "criterion_b"]):
        i, j = sorted((names.index(a), names.index(b)))
        rho[i, j], jac[j, i] = part["spearman"].mean(), part["overlap"].mean()
    chance = expected_jaccard(experts, removed)
    transparent = (0, 0, 0, 0)
    rho_image = ax.imshow(
        np.ma.masked_invalid(rho), cmap=plt.get_cmap("RdBu_r").with_extremes(bad=transparent), vmin=-1, vmax=1
    )
    norm = matplotlib.colors.TwoSlopeNorm(vcenter=chance, vmin=0, vmax=1) if 0 < chance < 1 else None
    jac_image = ax.imshow(
        np.ma.masked_invalid(jac), cmap=plt.get_cmap("PuOr_r").with_extremes(bad=transparent), norm=norm
    )
    undefined_cells(ax, [(i, i) for i in range(n)])
    for (i, j), value in np.ndenumerate(np.where(np.isfinite(rho), rho, jac)):
        if np.isfinite(value):
            low, high = rho_band if i < j else jac_band
            star = "*" if value < low or value > high else ""
            image = rho_image if i < j else jac_image
            ax.text(
                j, i, f"{value:.2f}{star}", ha="center", va="center", fontsize=MIN_TEXT + 0.5, color=_ink(image, value)
            )
    ticks = [label(c) for c in names]
    ax.set_xticks(range(n), ticks, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), ticks)
    ax.tick_params(length=0)
    ax.set_xlabel(f"criterion (*: beyond 95% of chance, mean of {layers} layer{'s' * (layers > 1)})")
    ax.set_ylabel("criterion")
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(rho_image, ax=ax, location="bottom", shrink=0.75, aspect=30, pad=0.03)
    bar.set_label("Spearman ρ of scores (above the diagonal)")
    bar = fig.colorbar(jac_image, ax=ax, location="bottom", shrink=0.75, aspect=30, pad=0.03)
    bar.set_label("Jaccard of pruned sets (below the diagonal)")
    bar.set_ticks([0.0, chance, 1.0], labels=["0", f"chance {chance:.2f}", "1"])
    bar.ax.axvline(chance, **CHANCE_STYLE)
    return ax


def _points(data: pd.DataFrame, x: str, y: str, ratio: float, routing: dict) -> pd.DataFrame:
    """Per expert: share of its layer's routed tokens (x), score (y), and which plan prunes it."""
    plans = uniform_plans(data, [x, y], ratio=ratio, **routing)
    rows = []
    for name in (x, y):
        if name not in plans:
            return pd.DataFrame()
    xt, yt = value_table(data[data["criterion"] == x]), value_table(data[data["criterion"] == y])
    for layer in plans[x].layers:
        xv, yv = xt.loc[layer].to_numpy(float), yt.loc[layer].to_numpy(float)
        total = np.nansum(xv)
        rows.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "expert": np.arange(xv.size),
                    "x": xv / total if total > 0 and x == "frequency" else xv,
                    "y": yv,
                    "pruned_x": np.isin(np.arange(xv.size), plans[x].removed(layer)),
                    "pruned_y": np.isin(np.arange(yv.size), plans[y].removed(layer)),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


@styled
def reap_vs_frequency(
    frame: pd.DataFrame,
    *,
    layers=None,
    ratio: float = 0.5,
    domain: str = ALL,
    x: str = "frequency",
    y: str = "reap",
    ncols: int = 4,
    fig=None,
    **routing,
):
    """Each expert as a point, one panel per layer (its own scale and cut-offs): share of the layer's
    routed tokens (x) against its REAP score, mean gate x ||output|| (y), marked by which criterion's
    plan keeps it at `ratio`: both (black), REAP only (REAP's colour), frequency only (frequency's),
    neither (hollow grey). The grey lines are each plan's cut-off in that layer.

        >>> reap_vs_frequency(scores, ratio=0.5, layers=[0, 3])
        <Figure size 825x330 with 2 Axes>

    Experts in the top left (rarely routed, large gated outputs) are the ones REAP keeps and frequency
    prunes. `layers`: the layers to draw (default all); `x` / `y`: other criteria; `routing`: n_group,
    topk_group, top_k (`reapkit.study.tables.uniform_plans`). Returns the Figure.
    """
    data = select(frame, domain=domain) if not is_empty(frame) else frame
    if layers is not None and not is_empty(data):
        data = data[data["layer"].isin(list(layers))]
    points = pd.DataFrame() if is_empty(data) else _points(data, x, y, ratio, routing)
    if points.empty:
        return no_data_figure(fig, f"no data (needs {x} and {y} scores)", title=f"{label(y)} vs {label(x)}")
    shown = sorted(set(points["layer"]))
    ncols = min(ncols, len(shown))
    nrows = -(-len(shown) // ncols)
    width = TWO_COLUMN if ncols > 1 else COLUMN
    fig = fig or plt.figure(figsize=(width, 0.75 + 1.45 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    groups = [
        ("kept by both", lambda p: ~p.pruned_x & ~p.pruned_y, dict(color="black", marker="o")),
        (f"kept by {label(y)} only", lambda p: p.pruned_x & ~p.pruned_y, dict(color=criterion_color(y), marker="^")),
        (f"kept by {label(x)} only", lambda p: ~p.pruned_x & p.pruned_y, dict(color=criterion_color(x), marker="v")),
        ("pruned by both", lambda p: p.pruned_x & p.pruned_y, dict(facecolors="none", edgecolors="0.45", marker="o")),
    ]
    counts = {name: int(pick(points).sum()) for name, pick, _ in groups}
    for ax, layer in zip(grid, shown):
        part = points[points["layer"] == layer]
        for name, pick, kwargs in groups:
            chosen = part[pick(part)]
            width_ = 0.6 if "edgecolors" in kwargs else 0
            ax.scatter(
                chosen["x"], chosen["y"], s=10, linewidths=width_, zorder=2, label=f"{name} ({counts[name]})", **kwargs
            )
        for col, pruned, axis in (("x", "pruned_x", "x"), ("y", "pruned_y", "y")):
            kept, gone = part.loc[~part[pruned], col], part.loc[part[pruned], col]
            if len(kept) and len(gone):
                reference_line(ax, (kept.min() + gone.max()) / 2, axis=axis)
        ax.set_title(f"layer {layer}", loc="left")
        ax.margins(0.08)
        if x == "frequency":
            ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=3, steps=[1, 2, 5, 10]))  # whole percents
    for ax in grid[len(shown) :]:
        ax.axis("off")
    grid[0].plot([], [], label="each plan's cut-off", **REFERENCE_STYLE)
    for i, ax in enumerate(grid[: len(shown)]):
        ax.set_xlabel("tokens routed" if x == "frequency" else label(x))
        ax.set_ylabel(
            ("REAP score (gate × ‖output‖)" if y == "reap" else f"{label(y)} score") if i % ncols == 0 else ""
        )
    legend_below(fig, grid[: len(shown)], title=f"{ratio:.0%} of each layer's experts removed by each criterion's plan")
    return fig


@styled
def criterion_vs_ablation(table: pd.DataFrame, *, criteria=None, ncols: int = 4, fig=None):
    """Criterion scores against the ground truth: each expert's score (divided by its layer's mean, so
    layers share one axis; log scale) against the loss increase when that expert alone is ablated, with
    its 95% interval; one panel per criterion, titled with the mean over layers of the Spearman rank
    correlation between score and cost. A criterion that ranks experts by what they cost lies on a
    rising band.

        >>> criterion_vs_ablation(ablation)   # layer, expert, criterion, score, cost [, cost_lo, cost_hi]
        <Figure size 825x360 with 2 Axes>

    The table's `cost` is the single-expert ablation cost (e.g. Δ loss); `cost_lo` / `cost_hi` its
    interval. Returns the Figure.
    """
    from scipy.stats import spearmanr

    from reapkit.select.plan import budget_scores

    if is_empty(table) or not {"score", "cost"} <= set(table.columns):
        return no_data_figure(fig, "no data (needs ablation costs)", title="criteria against ablation")
    criteria = list(dict.fromkeys(table["criterion"])) if criteria is None else list(criteria)
    ncols = min(ncols, len(criteria))
    nrows = -(-len(criteria) // ncols)
    fig = fig or plt.figure(figsize=(TWO_COLUMN if ncols > 1 else COLUMN, 0.5 + 1.9 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    low, high = interval("cost")
    for ax, criterion in zip(grid, criteria):
        part = table[table["criterion"] == criterion].copy()
        part["x"] = part.groupby("layer")["score"].transform(lambda v: budget_scores(v.to_numpy()))
        rho = [
            spearmanr(p["score"], p["cost"]).statistic
            for _, p in part.groupby("layer")
            if len(p) > 2 and p["score"].nunique() > 1 and p["cost"].nunique() > 1
        ]
        color = criterion_color(criterion)
        shown = part[part["x"] > 0]
        if shown.empty:  # e.g. a criterion whose scores are all negative: nothing for a log axis
            ax.text(0.5, 0.5, "no positive scores", transform=ax.transAxes, ha="center", va="center", color="0.4")
            ax.set_title(label(criterion), loc="left")
            continue
        err = None
        if {low, high} <= set(part.columns):
            err = np.vstack([shown["cost"] - shown[low], shown[high] - shown["cost"]]).clip(min=0)
        ax.errorbar(
            shown["x"],
            shown["cost"],
            yerr=err,
            color=color,
            marker="o",
            markersize=2.5,
            linestyle="none",
            elinewidth=0.5,
            alpha=0.85,
        )
        reference_line(ax, 0.0)
        if shown["x"].max() / shown["x"].min() > 4:  # a narrow range (AIMER's) reads better on a linear axis
            ax.set_xscale("log")
            plain_log_axis(ax, "x")
        name = textwrap.fill(label(criterion), 22)  # a long name on two lines, not into the next panel
        ax.set_title(f"{name}\nmean ρ {np.mean(rho):.2f}" if rho else name, loc="left")
        ax.set_xlabel("score / layer mean")
    for ax in grid[len(criteria) :]:
        ax.axis("off")
    for i, ax in enumerate(grid[: len(criteria)]):
        ax.set_ylabel("ablation cost (Δ loss, nats)" if i % ncols == 0 else "")
    return fig


@styled
def ablation_rank_correlation(table: pd.DataFrame, *, ax=None):
    """Each criterion's rank correlation with the single-expert ablation cost, one dot per MoE layer
    with its 95% interval, criteria ordered by their mean; the band unrelated rankings fall in shaded.

        >>> ablation_rank_correlation(correlations)   # reapkit.study.ablation.ablation_correlation(obs, costs, criteria)
        <Figure size 487.5x360 with 1 Axes>

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
    ax.set_xticks(range(len(order)), [display_name(c) for c in order], rotation=40, ha="right")
    ax.set_xlabel("criterion (dots: MoE layers, left to right)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman ρ with ablation cost")
    ax.set_title(f"criteria against single-expert ablation ({len(layers)} layers)")
    ax.legend(loc="lower left")
    return fig


@styled
def joint_vs_singles(table: pd.DataFrame, *, ax=None):
    """Do costs add up? Per MoE layer, the loss increase from masking a plan's removed experts together
    (joint) against the sum of their single-expert ablation costs, both with their 95% paired intervals;
    on the line y = x they add up, above it the experts cost more together than alone. Both axes are
    logarithmic when every cost is positive (layers differ by orders of magnitude).

        >>> joint_vs_singles(plan_costs)   # reapkit.study.ablation.plan_ablation(model, eval_batches, plan)
        <Figure size 487.5x375 with 1 Axes>

    The whole plan's row (layer ``"all"``) is left out of the axes and named in the title. Returns the Figure.
    """
    if is_empty(table):
        return no_data_figure(None if ax is None else ax.figure, title="joint against single-expert costs")
    fig, ax = axes(ax, figsize=(COLUMN, 2.5))
    layers = table[table["layer"] != "all"]
    ax.errorbar(
        layers["singles"],
        layers["joint"],
        xerr=[layers["singles"] - layers["singles_lo"], layers["singles_hi"] - layers["singles"]],
        yerr=[layers["joint"] - layers["joint_lo"], layers["joint_hi"] - layers["joint"]],
        fmt="o",
        markersize=3,
        linewidth=0.8,
        color=criterion_color("reap"),
    )
    for row in layers.itertuples():
        ax.annotate(f"{row.layer}", (row.singles, row.joint), xytext=(3, 3), textcoords="offset points")
    positive = bool((layers[["singles", "joint"]] > 0).all().all())
    if positive:  # costs span orders of magnitude from layer to layer; intervals reaching 0 are clipped
        ax.set_xscale("log", nonpositive="clip")
        ax.set_yscale("log", nonpositive="clip")
        plain_log_axis(ax, "x")
        plain_log_axis(ax, "y")
        low = layers[["singles", "joint"]].min().min() / 2
    else:
        low = min(layers[["singles_lo", "joint_lo"]].min().min(), 0.0)
    high = max(layers[["singles_hi", "joint_hi"]].max().max(), 0.0)
    ax.plot([low, high], [low, high], **REFERENCE_STYLE, label="joint = sum of singles")
    ax.set_xlabel("sum of single-expert costs (Δ loss, nats)")
    ax.set_ylabel("removed together (Δ loss, nats)")
    whole = table[table["layer"] == "all"]
    title = "joint against single-expert costs, per layer"
    if len(whole):
        w = whole.iloc[0]
        title += f"\nwhole plan: {w.joint:+.3f} together, {w.singles:+.3f} summed"
    ax.set_title(title, loc="left")
    ax.legend(loc="upper left")
    return fig
