"""Figures of expert geometry: distance matrices with dendrograms, saliency on the dendrogram, co-selection.

>>> fig = distance_heatmap(d, n_clusters=4, title="layer 3")    # d: [E, E] angular distances
>>> fig = distance_heatmaps(distances)  # {("output", 3): d, ("weights", 3): ...}: one colour scale and bar
>>> ax = saliency_dendrogram(d, reap_scores[3], ratio=0.5)      # leaves coloured by saliency, pruned marked
>>> ax = coactivation_matrix(coselect[3])                       # [E, E] top-k co-selection counts of layer 3
"""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from reapkit.plot.theme import (
    COLUMN,
    MIN_TEXT,
    MISSING_COLOR,
    REFERENCE_STYLE,
    TWO_COLUMN,
    axes,
    index_ticks,
    label,
    legend_below,
    no_data,
    no_data_figure,
    percent_axis,
    plain_log_axis,
    reference_line,
    styled,
    undefined_cells,
)
from reapkit.select.geometry import coselection_lift, cut_height
from reapkit.study.tables import coselect_order, is_flat, pruned_experts

__all__ = [
    "distance_heatmap",
    "distance_heatmaps",
    "distance_histogram",
    "saliency_clusters",
    "saliency_dendrogram",
    "coactivation_matrix",
]

_DISTANCE_CMAP = "magma_r"


def _offdiagonal(d: np.ndarray) -> np.ndarray:
    return d[~np.eye(d.shape[0], dtype=bool)]


def _distance_norm(matrices) -> matplotlib.colors.Normalize:
    """Colour scale over the off-diagonal entries of every matrix (the zero diagonal does not set it)."""
    values = np.concatenate(
        [_offdiagonal(np.asarray(d, float)) for d in matrices if np.asarray(d).shape[0] > 1] or [np.zeros(0)]
    )
    if values.size == 0:
        return matplotlib.colors.Normalize(0, 1)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    return matplotlib.colors.Normalize(lo, hi)


def _clustering(d, clustering, n_clusters):
    from reapkit.select.geometry import cluster, clusters_at

    if clustering is None:
        return cluster(d, n_clusters=n_clusters)
    if n_clusters is not None:  # a copy: the caller's clustering keeps its labels
        return dataclasses.replace(clustering, labels=clusters_at(clustering, n_clusters))
    return clustering


def _draw_distance(ax_tree, ax_map, d, clustering, norm, title, *, height_label: bool = True):
    """Dendrogram (with its height axis and the cut that gives the clusters) above the distance matrix."""
    from scipy.cluster import hierarchy

    order = np.asarray(clustering.order)
    flat = is_flat(clustering.linkage)
    if clustering.linkage.size:
        hierarchy.dendrogram(
            clustering.linkage,
            ax=ax_tree,
            no_labels=True,
            color_threshold=0,
            above_threshold_color="0.3",
            link_color_func=lambda _: "0.3",
        )
        ax_tree.set_xlim(0, 10 * len(order))
    ax_tree.spines["bottom"].set_visible(False)
    ax_tree.tick_params(axis="x", bottom=False, labelbottom=False)
    ax_tree.locator_params(axis="y", nbins=3)
    ax_tree.set_ylabel("height" if height_label else "")
    n_clusters = len(set(np.asarray(clustering.labels).tolist())) if clustering.labels is not None else None
    cut = cut_height(clustering.linkage, n_clusters) if n_clusters and not flat else float("nan")
    if np.isfinite(cut):
        ax_tree.axhline(cut, label=f"the cut that gives {n_clusters} clusters (boxes below)", **REFERENCE_STYLE)
    shown = np.ma.masked_where(np.eye(len(order), dtype=bool), d[np.ix_(order, order)])
    image = ax_map.imshow(shown, cmap=plt.get_cmap(_DISTANCE_CMAP), norm=norm, interpolation="nearest")
    undefined_cells(ax_map, [(i, i) for i in range(len(order))])
    index_ticks(ax_map, order, "x", max_ticks=8, rotation=90)
    index_ticks(ax_map, order, "y", max_ticks=8)
    ax_map.set_xlabel("expert (tree order)")
    ax_map.set_ylabel("expert" if height_label else "")
    if clustering.labels is not None and not flat:
        labels = np.asarray(clustering.labels)[order]
        start = 0
        for i in range(1, len(labels) + 1):
            if i == len(labels) or labels[i] != labels[start]:
                ax_map.add_patch(
                    matplotlib.patches.Rectangle(
                        (start - 0.5, start - 0.5), i - start, i - start, fill=False, edgecolor="black", linewidth=0.9
                    )
                )
                start = i
    ax_tree.set_title(title + ("\n(flat: no clusters)" if flat and len(order) > 2 else ""), loc="left")
    return image


@styled
def distance_heatmap(
    distances,
    clustering=None,
    *,
    n_clusters: int | None = None,
    title: str | None = None,
    norm=None,
    colorbar: bool = True,
    fig=None,
):
    """Angular distance matrix ordered by average-linkage clustering, with its dendrogram above.

        >>> fig = distance_heatmap(d, n_clusters=4, title="output space, layer 3")

    `clustering` is a :class:`reapkit.select.geometry.Clustering` (computed when omitted); cluster
    boundaries are outlined when it has labels or `n_clusters` is given, unless the dendrogram is
    flat (:func:`reapkit.study.tables.is_flat`: any cut would be arbitrary). The colour scale spans the
    off-diagonal distances (the diagonal is blank); `norm` fixes it. Returns the Figure.
    """
    d = np.asarray(distances if distances is not None else np.zeros((0, 0)), dtype=float)
    if d.size == 0:
        return no_data_figure(fig, title=title or "expert distances")
    clustering = _clustering(d, clustering, n_clusters)
    fig = fig or plt.figure(figsize=(COLUMN, 3.5), layout="constrained")
    ax_tree, ax_map = fig.subplots(2, 1, height_ratios=[1, 4])
    image = _draw_distance(ax_tree, ax_map, d, clustering, norm or _distance_norm([d]), title or "expert distances")
    if colorbar:
        fig.colorbar(image, ax=ax_map, label="angular distance", shrink=0.9, pad=0.02)
    legend_below(fig, [ax_tree], ncols=1)
    return fig


@styled
def distance_heatmaps(
    distances: dict, clusterings: dict | None = None, *, n_clusters: int | None = None, ncols: int = 4
):
    """One :func:`distance_heatmap` per entry of `distances` ({title or (space, layer): [E, E] matrix}),
    on one colour scale with one colour bar; with (space, layer) keys of several spaces, one row per
    space and one column per layer. `clusterings` {same key: Clustering} reuses clusterings (their cut
    is drawn on each dendrogram's height axis). Returns the Figure.

        >>> fig = distance_heatmaps(distances, n_clusters=4)     # {(space, layer): [E, E]}
    """
    if not distances:
        return no_data_figure(title="expert distances")
    keys = list(distances)
    spaces = list(dict.fromkeys(k[0] for k in keys)) if all(isinstance(k, tuple) and len(k) == 2 for k in keys) else []
    if len(spaces) > 1:
        layers = list(dict.fromkeys(k[1] for k in keys))
        cells = {k: (spaces.index(k[0]), layers.index(k[1])) for k in keys}
        nrows, ncols = len(spaces), len(layers)
    else:
        ncols = min(len(keys), ncols)
        nrows = math.ceil(len(keys) / ncols)
        cells = {k: divmod(i, ncols) for i, k in enumerate(keys)}
    norm = _distance_norm(distances.values())
    width = TWO_COLUMN if ncols > 1 else COLUMN
    fig = plt.figure(figsize=(width, ((width - 0.6) / ncols) * 1.3 * nrows + 0.35), layout="constrained")
    grid = fig.subplots(2 * nrows, ncols, squeeze=False, height_ratios=[1, 3.2] * nrows)
    used = set()
    for key, d in distances.items():
        r, c = cells[key]
        used.add((r, c))
        d = np.asarray(d, float)
        if isinstance(key, tuple) and len(key) == 2:
            title = f"{key[0]}, layer {key[1]}"
        else:
            title = str(key)
        clustering = _clustering(d, (clusterings or {}).get(key), n_clusters)
        image = _draw_distance(grid[2 * r, c], grid[2 * r + 1, c], d, clustering, norm, title, height_label=c == 0)
        if c:
            grid[2 * r + 1, c].set_ylabel("")
        if r < nrows - 1:
            grid[2 * r + 1, c].set_xlabel("")
    for r in range(nrows):
        for c in range(ncols):
            if (r, c) not in used:
                grid[2 * r, c].axis("off")
                grid[2 * r + 1, c].axis("off")
    maps = [grid[2 * r + 1, c] for r, c in used]
    bar = fig.colorbar(image, ax=maps, shrink=0.8, pad=0.01)
    bar.set_label("angular distance (0.5: orthogonal)")
    legend_below(fig, [grid[2 * r, c] for r, c in used], ncols=1)
    return fig


@styled
def distance_histogram(distances: dict, *, ax=None):
    """Angular distances between the experts of a layer, pooled over layers, one histogram per space on one
    axis: structure (a spread, near pairs) or none (every pair near 0.5). {(space, layer): [E, E] matrix}.

        >>> ax = distance_histogram(distances)    # reapkit.select.geometry.distance_matrices(model=model, obs=obs)
    """
    own = ax is None
    fig, ax = axes(ax, (COLUMN, 2.4))
    ax.set_title("distances between experts", loc="left")
    if not distances:
        return no_data(ax)
    pooled: dict[str, list] = {}
    for key, d in distances.items():
        d = np.asarray(d, float)
        space = key[0] if isinstance(key, tuple) else str(key)
        pooled.setdefault(space, []).append(d[np.triu_indices(d.shape[0], k=1)])
    values = {space: np.concatenate(v) for space, v in pooled.items()}
    every = np.concatenate(list(values.values()))
    bins = np.linspace(0, max(0.6, float(every.max()) + 0.01), 49)
    looks = [
        dict(histtype="stepfilled", color="0.8"),
        dict(histtype="step", color="black", linewidth=1.0),
        dict(histtype="step", color="0.5", linewidth=1.6),
    ]
    for i, (space, v) in enumerate(values.items()):
        weights = np.full(v.size, 1 / v.size)
        ax.hist(v, bins=bins, weights=weights, label=f"{space} (sd {v.std():.3f})", **looks[i % len(looks)])
    reference_line(ax, 0.5, axis="x")
    ax.text(0.5, 1.0, " orthogonal", transform=ax.get_xaxis_transform(), fontsize=MIN_TEXT, color="0.35", va="top")
    percent_axis(ax, "y")
    ax.set_xlabel("angular distance between two experts of a layer")
    ax.set_ylabel("share of expert pairs")
    if own:
        legend_below(fig, [ax], ncols=2)
    return ax


@styled
def saliency_clusters(
    scores,
    clustering=None,
    *,
    labels=None,
    ratio: float | None = None,
    title: str | None = None,
    criterion: str = "reap",
    log: bool = False,
    ax=None,
):
    """Saliency of each expert of one layer as bars in dendrogram order, grouped by cluster (alternating
    grey shades, cluster ids above); with `ratio`, the experts a plan would prune are hatched and pale.

        >>> ax = saliency_clusters(reap_scores[3], clustering, ratio=0.5)      # clustering of layer 3

    `scores` [E]; `clustering` a :class:`reapkit.select.geometry.Clustering` (for order and labels) or
    None; `labels` overrides the cluster ids.
    """
    fig, ax = axes(ax, (TWO_COLUMN, 1.8))
    ax.set_title(title or "saliency by cluster", loc="left")
    s = np.asarray(scores if scores is not None else [], dtype=float).ravel()
    if s.size == 0:
        return no_data(ax)
    order = np.asarray(clustering.order) if clustering is not None else np.arange(s.size)
    if labels is None:
        labels = (
            clustering.labels if clustering is not None and clustering.labels is not None else np.zeros(s.size, int)
        )
    labels = np.asarray(labels)
    pruned = pruned_experts(s, ratio)
    shades = ("0.25", "0.6")
    runs = []  # (cluster, first position, last position) along the leaves
    for x, e in enumerate(order):
        if runs and runs[-1][0] == labels[e]:
            runs[-1][2] = x
        else:
            runs.append([labels[e], x, x])
    for i, (_, first, last) in enumerate(runs):
        for x in range(first, last + 1):
            e = order[x]
            ax.bar(
                x,
                s[e],
                width=0.8,
                color=shades[i % 2],
                alpha=0.35 if pruned[e] else 1.0,
                hatch="/////" if pruned[e] else None,
                edgecolor="0.2" if pruned[e] else "none",
                linewidth=0.4,
            )
    if len(runs) > 1:
        top = float(np.nanmax(s)) if np.isfinite(s).any() else 1.0
        ax.set_ylim(top=top * (3 if log else 1.18))
        for cid, first, last in runs:
            ax.plot(
                [first - 0.35, last + 0.35],
                [0.965, 0.965],
                color="0.3",
                linewidth=0.8,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
            ax.text(
                (first + last) / 2,
                0.955,
                str(cid),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=MIN_TEXT,
                color="0.3",
            )
    if log and (s > 0).any():
        ax.set_yscale("log")
    index_ticks(ax, order, "x", max_ticks=32, rotation=90)
    ax.tick_params(axis="x", labelsize=MIN_TEXT)
    ax.set_xlim(-0.6, s.size - 0.4)
    ax.set_xlabel("expert (tree order" + ("; hatched: pruned)" if ratio is not None else ")"))
    ax.set_ylabel(f"{label(criterion)} score")
    return ax


@styled
def saliency_dendrogram(
    distances,
    scores,
    *,
    clustering=None,
    ratio: float | None = 0.5,
    pruned=None,
    criterion: str = "reap",
    n_clusters: int | None = None,
    log: bool = True,
    title: str | None = None,
    ax=None,
):
    """The dendrogram of angular distances with each leaf (expert) coloured by its saliency and the
    experts a plan prunes marked with a cross below their leaf (the REAP paper's figure); the cut
    that gives `n_clusters` clusters (or the clustering's own labels) is drawn on the height axis.

        >>> ax = saliency_dendrogram(d, reap_scores[3], ratio=0.5, n_clusters=4)    # d: distances of layer 3

    `distances` [E, E]; `scores` [E]; `pruned` (a boolean [E] or a list of experts) overrides the
    experts `ratio` would prune by `scores`. A flat dendrogram (no cluster structure) says so.
    """
    from scipy.cluster import hierarchy

    fig, ax = axes(ax, (TWO_COLUMN, 2.1))
    ax.set_title(title or f"expert dendrogram, leaves coloured by {label(criterion)}", loc="left")
    d = np.asarray(distances if distances is not None else np.zeros((0, 0)), dtype=float)
    s = np.asarray(scores if scores is not None else [], dtype=float).ravel()
    if d.size == 0 or s.size == 0:
        return no_data(ax)
    if d.shape != (s.size, s.size):
        raise ValueError(f"distances {d.shape} and scores ({s.size},) must describe the same experts")
    clustering = _clustering(d, clustering, n_clusters)
    order = np.asarray(clustering.order)
    if pruned is None:
        mask = pruned_experts(s, ratio)
    else:
        pruned = np.asarray(pruned)
        mask = (
            pruned.astype(bool)
            if pruned.dtype == bool and pruned.size == s.size
            else np.isin(np.arange(s.size), pruned)
        )
    if clustering.linkage.size:
        hierarchy.dendrogram(
            clustering.linkage,
            ax=ax,
            no_labels=True,
            color_threshold=0,
            above_threshold_color="0.35",
            link_color_func=lambda _: "0.35",
        )
    x = 5 + 10 * np.arange(s.size)
    top = float(clustering.linkage[:, 2].max()) if clustering.linkage.size else 1.0
    norm = (
        matplotlib.colors.LogNorm(s[s > 0].min(), s.max())
        if log and (s > 0).sum() > 1 and s[s > 0].min() < s.max()
        else matplotlib.colors.Normalize(s.min(), s.max() if s.max() > s.min() else s.min() + 1)
    )
    cmap = plt.get_cmap("viridis").with_extremes(under=MISSING_COLOR, bad=MISSING_COLOR)
    leaf = s[order]
    points = ax.scatter(
        x,
        np.zeros(s.size),
        c=np.where(leaf > 0, leaf, np.nan) if isinstance(norm, matplotlib.colors.LogNorm) else leaf,
        cmap=cmap,
        norm=norm,
        s=22,
        edgecolors="0.2",
        linewidths=0.3,
        zorder=3,
        clip_on=False,
        plotnonfinite=True,
    )
    gone = mask[order]
    ax.scatter(
        x[gone],
        np.full(gone.sum(), -0.07 * top),
        marker="x",
        color="black",
        s=12,
        linewidths=0.7,
        zorder=3,
        clip_on=False,
    )
    groups = len(set(np.asarray(clustering.labels).tolist())) if clustering.labels is not None else 0
    cut = cut_height(clustering.linkage, groups) if groups > 1 and not is_flat(clustering.linkage) else float("nan")
    if np.isfinite(cut):
        ax.axhline(cut, **REFERENCE_STYLE)
        ax.text(
            10 * s.size,
            cut,
            f"cut: {groups} clusters",
            ha="right",
            va="center",
            fontsize=MIN_TEXT,
            color="0.3",
            bbox=dict(facecolor="white", edgecolor="none", pad=0.6),
        )
    ax.set_ylim(-0.12 * top, top * 1.05)
    ax.set_xlim(0, 10 * s.size)
    ax.set_xticks(x, [str(e) for e in order], rotation=90)
    ax.tick_params(axis="x", labelsize=MIN_TEXT, length=0)
    ax.set_xlabel(f"expert (×: pruned, {gone.sum()} of {s.size})" if gone.any() else "expert")
    ax.set_ylabel("height (angular distance)")
    ax.spines["bottom"].set_visible(False)
    bar = fig.colorbar(points, ax=ax, pad=0.01, shrink=0.9)
    bar.set_label(f"{label(criterion)} score" + (" (log scale)" if isinstance(norm, matplotlib.colors.LogNorm) else ""))
    if isinstance(norm, matplotlib.colors.LogNorm):
        plain_log_axis(bar.ax, "y")
    if is_flat(clustering.linkage) and s.size > 2:
        ax.text(
            0.01, 0.98, "flat: no cluster structure", transform=ax.transAxes, va="top", fontsize=MIN_TEXT, color="0.3"
        )
    return ax


@styled
def coactivation_matrix(coselect, *, order=None, clustering=None, title: str | None = None, ax=None):
    """Expert x expert co-selection of one layer: how often two experts share a token's top-k, over
    what independent routing with the same expert frequencies gives (`reapkit.study.tables.coselection_lift`;
    log scale, white = 1 = chance), in dendrogram order; the diagonal is undefined (hatched).

        >>> ax = coactivation_matrix(coselect[3])                # [E, E] counts; diagonal = tokens per expert

    Order: `order` (expert indices), else `clustering` (a Clustering), else average linkage on the
    experts' co-selection profiles. Returns the Axes.
    """
    fig, ax = axes(ax, (COLUMN, 2.8))
    ax.set_title(title or "expert co-selection (top-k)", loc="left")
    c = np.asarray(coselect if coselect is not None else np.zeros((0, 0)), dtype=float)
    if c.size == 0:
        return no_data(ax)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"coactivation_matrix expects one layer's [experts, experts] matrix, got shape {c.shape}")
    if order is None:
        order = np.asarray(clustering.order) if clustering is not None else coselect_order(coselect)
    order = np.asarray(order)
    with np.errstate(divide="ignore"):
        lift = np.log2(coselection_lift(c)[np.ix_(order, order)])
    finite = np.abs(lift[np.isfinite(lift)])
    limit = max(1.0, float(np.ceil(np.percentile(finite, 98)))) if finite.size else 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=MISSING_COLOR)
    image = ax.imshow(np.ma.masked_invalid(lift), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    undefined_cells(ax, [(i, i) for i in range(len(order))])
    index_ticks(ax, order, "x", max_ticks=16, rotation=90)
    index_ticks(ax, order, "y", max_ticks=16)
    ax.set_xlabel("expert (tree order)")
    ax.set_ylabel("expert (tree order)")
    extend = "both" if finite.size and finite.max() > limit else "neither"
    bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02, extend=extend)
    bar.set_label("co-selection / independent routing")
    step = max(1, int(limit) // 2)
    ticks = np.unique(np.r_[-np.arange(0, limit + 1, step), np.arange(0, limit + 1, step)])
    bar.set_ticks(ticks, labels=["1 (chance)" if t == 0 else f"{2**t:g}" if t > 0 else f"1/{2**-t:g}" for t in ticks])
    if np.isneginf(lift).any():
        ax.text(
            1.0,
            1.0,
            "grey: never together",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=MIN_TEXT,
            color="0.35",
        )
    return ax
