"""Figures of expert geometry: distance matrices with dendrograms, saliency on the dendrogram, co-selection.

>>> distance_heatmap(d, n_clusters=4, title="layer 3")          # d: [E, E] angular distances
>>> distance_heatmaps({("output", 3): d1, ("weights", 3): d2})   # one colour scale, one colour bar
>>> saliency_dendrogram(d, scores, ratio=0.5)                   # leaves coloured by saliency, pruned marked
>>> coactivation_matrix(coselect[layer])                        # [E, E] top-k co-selection counts
"""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from reapkit.errors import InvalidInput
from reapkit.plot.theme import (
    COLUMN,
    MISSING_COLOR,
    TWO_COLUMN,
    axes,
    index_ticks,
    no_data,
    no_data_figure,
    styled,
)
from reapkit.select.plan import pruned_count
from reapkit.study.tables import coselect_order, is_flat

__all__ = ["distance_heatmap", "distance_heatmaps", "saliency_clusters", "saliency_dendrogram", "coactivation_matrix"]

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


def _draw_distance(ax_tree, ax_map, d, clustering, norm, title):
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
    ax_tree.axis("off")
    shown = np.ma.masked_where(np.eye(len(order), dtype=bool), d[np.ix_(order, order)])
    cmap = plt.get_cmap(_DISTANCE_CMAP).with_extremes(bad="white")
    image = ax_map.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest")
    index_ticks(ax_map, order, "x", max_ticks=16, rotation=90)
    index_ticks(ax_map, order, "y", max_ticks=16)
    ax_map.tick_params(labelsize=5.5)
    ax_map.set_xlabel("expert (dendrogram order)")
    if clustering.labels is not None and not flat:
        labels = np.asarray(clustering.labels)[order]
        start = 0
        for i in range(1, len(labels) + 1):
            if i == len(labels) or labels[i] != labels[start]:
                ax_map.add_patch(
                    matplotlib.patches.Rectangle(
                        (start - 0.5, start - 0.5), i - start, i - start, fill=False, edgecolor="#56B4E9", linewidth=1.0
                    )
                )
                start = i
    ax_tree.set_title(title + ("\n(flat tree: no clusters)" if flat and len(order) > 2 else ""))
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

        >>> distance_heatmap(d, n_clusters=4, title="output space, layer 3")

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
    return fig


@styled
def distance_heatmaps(
    distances: dict, clusterings: dict | None = None, *, n_clusters: int | None = None, ncols: int = 4
):
    """One :func:`distance_heatmap` per entry of `distances` ({title or (space, layer): [E, E] matrix}),
    side by side, on one colour scale with one colour bar; `clusterings` {same key: Clustering}
    reuses clusterings. Returns the Figure.

        >>> distance_heatmaps({("output", 3): d_out, ("weights", 3): d_w}, n_clusters=4)
    """
    if not distances:
        return no_data_figure(title="expert distances")
    n = len(distances)
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    norm = _distance_norm(distances.values())
    width = TWO_COLUMN if ncols > 1 else COLUMN
    fig = plt.figure(figsize=(width, (width / ncols) * 1.2 * nrows + 0.2), layout="constrained")
    grid = fig.subplots(2 * nrows, ncols, squeeze=False, height_ratios=[1, 4] * nrows)
    maps = []
    for i, (key, d) in enumerate(distances.items()):
        r, c = divmod(i, ncols)
        d = np.asarray(d, float)
        title = f"{key[0]}, layer {key[1]}" if isinstance(key, tuple) and len(key) == 2 else str(key)
        clustering = _clustering(d, (clusterings or {}).get(key), n_clusters)
        image = _draw_distance(grid[2 * r, c], grid[2 * r + 1, c], d, clustering, norm, title)
        maps.append(grid[2 * r + 1, c])
    for j in range(n, nrows * ncols):
        r, c = divmod(j, ncols)
        grid[2 * r, c].axis("off")
        grid[2 * r + 1, c].axis("off")
    for ax in maps[1:]:
        if ax.get_subplotspec().colspan.start:
            ax.set_ylabel("")
    fig.colorbar(image, ax=maps, label="angular distance", shrink=0.8, pad=0.01)
    return fig


def _pruned(scores: np.ndarray, ratio) -> np.ndarray:
    pruned = np.zeros(scores.size, bool)
    if ratio is not None:
        pruned[np.argsort(-scores, kind="stable")[scores.size - pruned_count(scores.size, ratio) :]] = True
    return pruned


@styled
def saliency_clusters(
    scores,
    clustering=None,
    *,
    labels=None,
    ratio: float | None = None,
    title: str | None = None,
    log: bool = False,
    ax=None,
):
    """Saliency of each expert of one layer as bars in dendrogram order, grouped by cluster (alternating
    grey shades, cluster ids above); with `ratio`, the experts a plan would prune are hatched and pale.

        >>> saliency_clusters(reap_scores[layer], clustering, ratio=0.5)

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
    pruned = _pruned(s, ratio)
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
                fontsize=5.5,
                color="0.3",
            )
    if log and (s > 0).any():
        ax.set_yscale("log")
    index_ticks(ax, order, "x", max_ticks=32, rotation=90)
    ax.tick_params(axis="x", labelsize=5.5)
    ax.set_xlim(-0.6, s.size - 0.4)
    ax.set_xlabel(
        "expert (dendrogram order)"
        + ("; brackets: clusters" if len(runs) > 1 else "")
        + ("; hatched: pruned" if ratio is not None else "")
    )
    ax.set_ylabel("score")
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
    log: bool = True,
    title: str | None = None,
    ax=None,
):
    """The dendrogram of angular distances with each leaf (expert) coloured by its saliency and the
    experts a plan prunes marked with a cross below their leaf (the REAP paper's figure).

        >>> saliency_dendrogram(d, reap_scores[layer], ratio=0.5)

    `distances` [E, E]; `scores` [E]; `pruned` (a boolean [E] or a list of experts) overrides the
    experts `ratio` would prune by `scores`. A flat dendrogram (no cluster structure) says so.
    """
    from scipy.cluster import hierarchy

    fig, ax = axes(ax, (TWO_COLUMN, 2.0))
    ax.set_title(title or f"expert dendrogram, leaves coloured by {criterion}")
    d = np.asarray(distances if distances is not None else np.zeros((0, 0)), dtype=float)
    s = np.asarray(scores if scores is not None else [], dtype=float).ravel()
    if d.size == 0 or s.size == 0:
        return no_data(ax)
    if d.shape != (s.size, s.size):
        raise ValueError(f"distances {d.shape} and scores ({s.size},) must describe the same experts")
    clustering = _clustering(d, clustering, None)
    order = np.asarray(clustering.order)
    if pruned is None:
        mask = _pruned(s, ratio)
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
    ax.set_ylim(-0.12 * top, top * 1.05)
    ax.set_xlim(0, 10 * s.size)
    ax.set_xticks(x, [str(e) for e in order], rotation=90)
    ax.tick_params(axis="x", labelsize=5 if s.size > 32 else 6, length=0)
    ax.set_xlabel(f"expert (×: pruned, {gone.sum()} of {s.size})" if gone.any() else "expert")
    ax.set_ylabel("angular distance")
    ax.spines["bottom"].set_visible(False)
    fig.colorbar(
        points,
        ax=ax,
        label=f"{criterion} score" + (" (log)" if isinstance(norm, matplotlib.colors.LogNorm) else ""),
        pad=0.01,
        shrink=0.9,
    )
    if is_flat(clustering.linkage) and s.size > 2:
        ax.text(0.01, 0.98, "flat: no cluster structure", transform=ax.transAxes, va="top", fontsize=6, color="0.3")
    return ax


@styled
def coactivation_matrix(
    coselect, *, order=None, clustering=None, normalise: str | None = "jaccard", title: str | None = None, ax=None
):
    """Expert x expert co-selection of one layer (how often two experts are in the same token's top-k),
    in dendrogram order, the diagonal blank.

        >>> coactivation_matrix(coselect[layer])                 # [E, E] counts; diagonal = tokens per expert

    `normalise="jaccard"`: C_ij / (C_ii + C_jj - C_ij), the share of the tokens routed to either
    expert that go to both (needs the per-expert token counts on the diagonal); None: raw counts.
    Order: `order` (expert indices), else `clustering` (a Clustering), else average linkage on the
    experts' co-selection profiles.
    """
    fig, ax = axes(ax, (COLUMN, 2.8))
    ax.set_title(title or "expert co-selection (top-k)")
    c = np.asarray(coselect if coselect is not None else np.zeros((0, 0)), dtype=float)
    if c.size == 0:
        return no_data(ax)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"coactivation_matrix expects one layer's [experts, experts] matrix, got shape {c.shape}")
    label = "co-selected tokens"
    if normalise == "jaccard":
        diag = np.diag(c)
        union = diag[:, None] + diag[None, :] - c
        c = np.divide(c, union, out=np.zeros_like(c), where=union > 0)
        label = "co-selection (Jaccard of token sets)"
    elif normalise is not None:
        raise InvalidInput(f"normalise must be 'jaccard' or None, got {normalise!r}")
    if order is None:
        order = np.asarray(clustering.order) if clustering is not None else coselect_order(coselect)
    order = np.asarray(order)
    shown = np.ma.masked_where(np.eye(len(order), dtype=bool), c[np.ix_(order, order)])
    off = shown.compressed()
    vmax = float(off.max()) if off.size and off.max() > 0 else 1.0
    cmap = plt.get_cmap("Greys").with_extremes(bad="white")
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    index_ticks(ax, order, "x", max_ticks=16, rotation=90)
    index_ticks(ax, order, "y", max_ticks=16)
    ax.tick_params(labelsize=5.5)
    ax.set_xlabel("expert (dendrogram order)")
    fig.colorbar(image, ax=ax, label=label, shrink=0.9, pad=0.02)
    return ax
