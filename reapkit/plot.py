"""Figures of saliency, criterion agreement, domain specialisation, expert geometry, plans and losses.

    >>> frame = scores_frame(obs, ["reap", "frequency"])      # reapkit.saliency: tidy scores
    >>> ax = saliency_heatmap(frame, criterion="reap", sort=True)
    >>> ax = saliency_curves(frame, criterion="reap", ratio=0.5)
    >>> fig = criterion_agreement(frame, ratio=0.5)
    >>> save_figure(fig, "figures/demo", "agreement")          # figures/demo/agreement.{png,pdf}

Every function takes data (pandas frames in the tidy layouts below, numpy arrays), keyword-only
options and an optional `ax=` (or `fig=` for multi-panel figures), and returns the Axes or the
Figure. Empty input gives an Axes with a "no data" note instead of an error. This module imports
neither torch nor transformers.

Layouts:

    scores    layer, expert, domain ("all" = pooled), criterion, value    (saliency.scores_frame)
    mask      layer, expert, kept [, criterion, ratio]                    (mask_frame)
    results   ratio, criterion, domain, loss [, kl, agreement, ...]       (notebook 03 results.csv)
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .plan import pruned_count

__all__ = [
    "STYLE", "style", "save_figure", "panels", "per_criterion", "distance_heatmaps", "reconstruction_by_layer", "AGREEMENT_CRITERIA",
    "saliency_heatmap", "saliency_heatmaps", "saliency_curves", "agreement_table", "criterion_agreement",
    "domain_share_table", "domain_saliency", "specialisation_table", "specialisation_by_depth",
    "distance_heatmap", "saliency_clusters", "mask_frame", "plan_mask", "plan_masks",
    "loss_vs_ratio", "loss_vs_ratio_by_domain",
]

#: The one shared style (matplotlib rc parameters) of every reapkit figure.
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "image.cmap": "viridis",
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "pdf.fonttype": 42,
    "svg.hashsalt": "reapkit",
}
#: Criteria compared in the agreement figure.
AGREEMENT_CRITERIA = ("reap", "frequency", "ean_mean", "soft_frequency")
DOMAIN_COLORS = {"code": "#4c72b0", "prose": "#dd8452", "tools": "#55a868", "math": "#c44e52", "all": "#333333"}
_PALETTE = plt.get_cmap("tab10").colors


@contextlib.contextmanager
def style():
    """Context manager applying :data:`STYLE` (each plot function uses it already).

    Interactive mode is left as the block leaves it: the inline backend switches it on when the
    kernel's first figure is created, and restoring the old value would stop later figures from
    showing below their cells.
    """
    interactive = matplotlib.is_interactive()
    try:
        with plt.rc_context(STYLE):
            try:
                yield
            finally:
                interactive = matplotlib.is_interactive()
    finally:
        matplotlib.interactive(interactive)


def _styled(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            return fn(*args, **kwargs)

    return wrapper


def _color(name, index: int):
    return DOMAIN_COLORS.get(str(name), _PALETTE[index % len(_PALETTE)])


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None},
    "svg": {"Creator": None, "Date": None},
}


def save_figure(fig, folder, name: str, *, formats=("png", "pdf"), dpi: int | None = None, close: bool = False) -> list[Path]:
    """Write `fig` as `folder/name.png` and `folder/name.pdf` (by default), byte-for-byte reproducibly.

    Metadata that would change between runs (dates, software versions) is left out; each file is
    written to a temporary sibling and renamed into place. Accepts an Axes too. Returns the paths.
    """
    if hasattr(fig, "get_figure") and not isinstance(fig, matplotlib.figure.Figure):
        fig = fig.get_figure()
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"figure name {name!r} must be a plain file name without directories or extension")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with style():
        for fmt in formats:
            if fmt not in _METADATA:
                raise ValueError(f"unsupported figure format {fmt!r}; use one of {', '.join(_METADATA)}")
            path = folder / f"{name}.{fmt}"
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            try:
                fig.savefig(tmp, format=fmt, dpi=dpi or STYLE["savefig.dpi"], metadata=_METADATA[fmt])
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            paths.append(path)
    if close:
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def panels(n: int, *, ncols: int = 3, size=(3.4, 2.8), sharex=False, sharey=False):
    """(Figure, flat array of `n` Axes) in a grid of `ncols` columns; spare axes are hidden."""
    n = max(int(n), 1)
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    with style():
        fig = plt.figure(figsize=(size[0] * ncols + 0.4, size[1] * nrows + 0.3), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def per_criterion(function, frame, criteria=None, *, ncols: int = 2, **kwargs):
    """One panel per criterion: `function(frame, criterion=c, ax=ax, **kwargs)`; returns the Figure.

        >>> per_criterion(saliency_curves, scores, ["reap", "frequency"], ratio=[0.25, 0.5])
    """
    if criteria is None:
        criteria = list(dict.fromkeys(frame["criterion"])) if not _is_empty(frame) else []
    if not criteria:
        return _no_data_figure(title=getattr(function, "__name__", None))
    fig, axes = panels(len(criteria), ncols=ncols, size=(4.2, 3.0))
    for criterion, ax in zip(criteria, axes):
        function(frame, criterion=criterion, ax=ax, **kwargs)
    return fig


def _axes(ax, figsize=(5.0, 3.2)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _no_data(ax, message: str = "no data"):
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _no_data_figure(fig=None, message: str = "no data", title: str | None = None):
    if fig is None:
        fig = plt.figure(figsize=(4, 2.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    _no_data(ax, message)
    if title:
        ax.set_title(title)
    return fig


def _is_empty(data) -> bool:
    return data is None or len(data) == 0


def _select(frame: pd.DataFrame, **conditions) -> pd.DataFrame:
    for column, value in conditions.items():
        if value is not None and column in frame.columns:
            frame = frame[frame[column] == value]
    return frame


def _matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """layer x expert table of `value` (mean over duplicates)."""
    return frame.pivot_table(index="layer", columns="expert", values="value", aggfunc="mean").sort_index()


def _layer_ticks(ax, layers, axis="y"):
    positions = np.arange(len(layers))
    step = max(1, len(layers) // 12)
    (ax.set_yticks if axis == "y" else ax.set_xticks)(positions[::step])
    (ax.set_yticklabels if axis == "y" else ax.set_xticklabels)([str(v) for v in list(layers)[::step]])


# --------------------------------------------------------------------------------------------
# Saliency
# --------------------------------------------------------------------------------------------

@_styled
def saliency_heatmap(frame: pd.DataFrame, *, criterion: str = "reap", domain: str = "all", sort: bool = False,
                     normalise: bool = True, ax=None, cmap: str = "viridis", colorbar: bool = True):
    """Layers x experts heatmap of one criterion's scores.

    `sort=True` orders experts within each layer by descending score (the x axis becomes the rank);
    `normalise=True` divides each layer by its maximum so that layers of different scale compare.
    """
    fig, ax = _axes(ax, (6, 3))
    data = _select(frame, criterion=criterion, domain=domain) if not _is_empty(frame) else frame
    title = f"{criterion}" + (f" ({domain})" if domain not in (None, "all") else "")
    if _is_empty(data):
        _no_data(ax)
        ax.set_title(title)
        return ax
    table = _matrix(data)
    values = table.to_numpy(dtype=float)
    if normalise:
        peak = np.nanmax(np.abs(values), axis=1, keepdims=True)
        values = np.divide(values, peak, out=np.zeros_like(values), where=peak > 0)
    if sort:
        values = -np.sort(-np.nan_to_num(values, nan=-np.inf), axis=1)
        values[np.isinf(values)] = np.nan
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, origin="upper")
    ax.set_xlabel("expert rank in layer" if sort else "expert")
    ax.set_ylabel("layer")
    _layer_ticks(ax, table.index)
    if not sort:
        step = max(1, table.shape[1] // 16)
        ax.set_xticks(np.arange(table.shape[1])[::step])
        ax.set_xticklabels([str(c) for c in table.columns[::step]])
    ax.set_title(title)
    if colorbar:
        fig.colorbar(image, ax=ax, label="score / layer max" if normalise else "score", shrink=0.9)
    return ax


@_styled
def saliency_heatmaps(frame: pd.DataFrame, *, criteria=None, domain: str = "all", sort: bool = False,
                      normalise: bool = True, fig=None):
    """One :func:`saliency_heatmap` per criterion, stacked; returns the Figure."""
    if criteria is None:
        criteria = list(dict.fromkeys(frame["criterion"])) if not _is_empty(frame) else []
    if not criteria:
        return _no_data_figure(fig, title="saliency")
    n = len(criteria)
    fig = fig or plt.figure(figsize=(6.5, 1.2 + 1.6 * n), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for criterion, ax in zip(criteria, axes):
        saliency_heatmap(frame, criterion=criterion, domain=domain, sort=sort, normalise=normalise, ax=ax)
    return fig


@_styled
def saliency_curves(frame: pd.DataFrame, *, criterion: str = "reap", domain: str = "all", ratio: float | None = None,
                    normalise: bool = True, log: bool = False, ax=None):
    """Scores of each layer sorted in descending order, one line per layer, with the cut-off of `ratio`
    (a fraction of experts removed, or a list of them).

    Experts to the right of a dashed line are the ones a plan at that ratio removes.
    """
    fig, ax = _axes(ax)
    data = _select(frame, criterion=criterion, domain=domain) if not _is_empty(frame) else frame
    ax.set_title(f"{criterion}: sorted scores" + (f" ({domain})" if domain not in (None, "all") else ""))
    if _is_empty(data):
        return _no_data(ax)
    table = _matrix(data)
    cmap = plt.get_cmap("viridis")
    n_layers = len(table)
    for i, (layer, row) in enumerate(table.iterrows()):
        values = np.sort(row.dropna().to_numpy(dtype=float))[::-1]
        if normalise and values.size and np.max(np.abs(values)) > 0:
            values = values / np.max(np.abs(values))
        ax.plot(np.arange(values.size), values, color=cmap(i / max(n_layers - 1, 1)), label=f"layer {layer}",
                marker="o" if values.size <= 8 else None)
    ratios = [] if ratio is None else [ratio] if np.isscalar(ratio) else list(ratio)
    for r in ratios:
        n = table.shape[1]
        keep = n - pruned_count(n, r)
        ax.axvline(keep - 0.5, color="0.2", linestyle="--", linewidth=1)
        ax.text(keep - 0.5, 1.0, f" prune {r:.0%}", transform=ax.get_xaxis_transform(), va="top", ha="left", fontsize=7,
                rotation=90)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("expert rank in layer")
    ax.set_ylabel("score / layer max" if normalise else "score")
    if n_layers <= 8:
        ax.legend(loc="upper right")
    else:
        sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(table.index.min(), table.index.max()))
        fig.colorbar(sm, ax=ax, label="layer")
    return ax


def agreement_table(frame: pd.DataFrame, *, criteria=AGREEMENT_CRITERIA, ratio: float = 0.5, domain: str = "all") -> pd.DataFrame:
    """Per layer and pair of criteria: Spearman rank correlation of the scores, and the overlap
    (Jaccard index) of the sets of experts each would prune at `ratio`.

    Columns: layer, criterion_a, criterion_b, spearman, overlap. Criteria missing from `frame` are skipped.
    """
    from scipy.stats import spearmanr

    columns = ["layer", "criterion_a", "criterion_b", "spearman", "overlap"]
    if _is_empty(frame):
        return pd.DataFrame(columns=columns)
    data = _select(frame, domain=domain)
    present = [c for c in criteria if c in set(data["criterion"])]
    tables = {c: _matrix(data[data["criterion"] == c]) for c in present}
    rows = []
    for layer in sorted(set(data["layer"])):
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                x, y = tables[a].loc[layer].to_numpy(float), tables[b].loc[layer].to_numpy(float)
                ok = ~(np.isnan(x) | np.isnan(y))
                x, y = x[ok], y[ok]
                rho = float("nan")
                if x.size > 1 and np.ptp(x) > 0 and np.ptp(y) > 0:
                    rho = float(spearmanr(x, y).statistic)
                k = pruned_count(x.size, ratio)
                if k == 0:
                    overlap = 1.0
                else:
                    pa = set(np.argsort(x, kind="stable")[:k].tolist())
                    pb = set(np.argsort(y, kind="stable")[:k].tolist())
                    overlap = len(pa & pb) / len(pa | pb)
                rows.append((layer, a, b, rho, overlap))
    return pd.DataFrame(rows, columns=columns)


@_styled
def criterion_agreement(frame: pd.DataFrame, *, criteria=AGREEMENT_CRITERIA, ratio: float = 0.5, domain: str = "all", fig=None):
    """Two panels by layer: Spearman correlation between criteria, and overlap of the experts they prune.

    `frame` is a scores frame, or an :func:`agreement_table` already computed. Returns the Figure.
    """
    table = frame if (not _is_empty(frame) and "spearman" in frame.columns) else agreement_table(frame, criteria=criteria, ratio=ratio, domain=domain)
    if _is_empty(table):
        return _no_data_figure(fig, message="no data (needs two criteria)", title="criterion agreement")
    fig = fig or plt.figure(figsize=(8, 3.2), layout="constrained")
    ax_rho, ax_overlap = fig.subplots(1, 2, sharex=True)
    pairs = list(dict.fromkeys(zip(table["criterion_a"], table["criterion_b"])))
    for i, (a, b) in enumerate(pairs):
        part = table[(table["criterion_a"] == a) & (table["criterion_b"] == b)].sort_values("layer")
        kwargs = dict(color=_PALETTE[i % 10], marker="o", label=f"{a} / {b}")
        ax_rho.plot(part["layer"], part["spearman"], **kwargs)
        ax_overlap.plot(part["layer"], part["overlap"], **kwargs)
    ax_rho.set_ylim(-1.05, 1.05)
    ax_rho.axhline(0, color="0.8", linewidth=0.8)
    ax_rho.set_title("rank correlation (Spearman)")
    ax_rho.set_xlabel("layer")
    ax_rho.set_ylabel("Spearman ρ")
    ax_overlap.set_ylim(-0.05, 1.05)
    ax_overlap.set_title(f"overlap of pruned sets at {ratio:.0%}")
    ax_overlap.set_xlabel("layer")
    ax_overlap.set_ylabel("Jaccard index")
    layers = sorted(set(table["layer"]))
    ax_rho.set_xticks(layers[:: max(1, len(layers) // 12)])
    ax_overlap.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


# --------------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------------

def domain_share_table(frame: pd.DataFrame, *, criterion: str = "frequency") -> pd.DataFrame:
    """Per layer, expert and domain: the expert's `share` of the domain's total score in that layer
    (sums to 1 over experts) and its `enrichment` = share x experts (1 = what a uniform router gives).

    Columns: layer, expert, domain, share, enrichment. Uses the per-domain rows (not "all").
    """
    columns = ["layer", "expert", "domain", "share", "enrichment"]
    if _is_empty(frame):
        return pd.DataFrame(columns=columns)
    data = frame[(frame["criterion"] == criterion) & (frame["domain"] != "all")]
    if data.empty:
        return pd.DataFrame(columns=columns)
    data = data.groupby(["layer", "domain", "expert"], as_index=False)["value"].mean()
    total = data.groupby(["layer", "domain"])["value"].transform("sum")
    experts = data.groupby(["layer", "domain"])["expert"].transform("count")
    data["share"] = np.where(total > 0, data["value"] / total.where(total > 0, 1), 0.0)
    data["enrichment"] = data["share"] * experts
    return data[columns].sort_values(["layer", "domain", "expert"], ignore_index=True)


@_styled
def domain_saliency(frame: pd.DataFrame, *, criterion: str = "frequency", layers=None, ax=None, annotate: bool = True):
    """Which experts serve which domain: rows (layer, domain), columns experts, colour = enrichment
    (share of the domain's score x experts; 1 = uniform, log scale). Each expert's dominant domain
    is marked with a dot in its row."""
    table = domain_share_table(frame, criterion=criterion)
    if layers is not None and not table.empty:
        table = table[table["layer"].isin(list(layers))]
    fig, ax = _axes(ax, (6.5, 1.0 + 0.22 * max(len(table.groupby(["layer", "domain"])) if not table.empty else 4, 4)))
    ax.set_title(f"domain enrichment ({criterion})")
    if table.empty:
        return _no_data(ax, "no data (needs per-domain scores)")
    pivot = table.pivot_table(index=["layer", "domain"], columns="expert", values="enrichment")
    values = np.log2(np.clip(pivot.to_numpy(float), 1 / 16, 16))
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="RdBu_r", vmin=-4, vmax=4)
    ax.set_yticks(np.arange(len(pivot.index)))
    ax.set_yticklabels([f"L{layer} {domain}" for layer, domain in pivot.index])
    ax.set_xticks(np.arange(pivot.shape[1])[:: max(1, pivot.shape[1] // 16)])
    ax.set_xticklabels([str(c) for c in pivot.columns[:: max(1, pivot.shape[1] // 16)]])
    ax.set_xlabel("expert")
    layers_ = [layer for layer, _ in pivot.index]
    for i in range(1, len(layers_)):
        if layers_[i] != layers_[i - 1]:
            ax.axhline(i - 0.5, color="white", linewidth=1.5)
    if annotate:
        share = table.pivot_table(index=["layer", "expert"], columns="domain", values="share")
        dominant = share.idxmax(axis=1)
        rows = {key: i for i, key in enumerate(pivot.index)}
        cols = {e: j for j, e in enumerate(pivot.columns)}
        for (layer, expert), domain in dominant.items():
            if (layer, domain) in rows and expert in cols:
                ax.plot(cols[expert], rows[(layer, domain)], marker=".", color="black", markersize=3)
    fig.colorbar(image, ax=ax, label="log2 enrichment", shrink=0.9)
    return ax


def specialisation_table(frame: pd.DataFrame, *, criterion: str = "frequency") -> pd.DataFrame:
    """Per layer and expert: `dominant` domain and `specialisation` = 1 - H(p(domain | expert)) / log(#domains),
    where p(domain | expert) is proportional to the expert's share of each domain (domain sizes cancel);
    0 = serves all domains alike, 1 = serves one domain only. `usage` = the expert's mean share.
    Columns: layer, expert, dominant, specialisation, usage."""
    columns = ["layer", "expert", "dominant", "specialisation", "usage"]
    shares = domain_share_table(frame, criterion=criterion)
    if shares.empty:
        return pd.DataFrame(columns=columns)
    pivot = shares.pivot_table(index=["layer", "expert"], columns="domain", values="share").fillna(0.0)
    p = pivot.to_numpy(float)
    total = p.sum(axis=1, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(q > 0, q * np.log(q), 0.0), axis=1)
    d = p.shape[1]
    spec = 1 - entropy / np.log(d) if d > 1 else np.zeros(len(q))
    spec[total[:, 0] <= 0] = 0.0
    out = pd.DataFrame({
        "layer": pivot.index.get_level_values(0), "expert": pivot.index.get_level_values(1),
        "dominant": np.asarray(pivot.columns)[np.argmax(p, axis=1)], "specialisation": spec, "usage": p.mean(axis=1),
    })
    return out[columns].reset_index(drop=True)


@_styled
def specialisation_by_depth(frame: pd.DataFrame, *, criterion: str = "frequency", hue: str | None = None, ax=None):
    """Domain specialisation by depth: each expert as a dot (coloured by its dominant domain) and the
    usage-weighted mean per layer as a line. `frame` is a scores frame or a :func:`specialisation_table`;
    with `hue` (a column such as "run" or "model") one line per value and no dots."""
    fig, ax = _axes(ax)
    ax.set_title(f"domain specialisation by depth ({criterion})")
    if _is_empty(frame):
        return _no_data(ax)
    table = frame if "specialisation" in frame.columns else specialisation_table(frame, criterion=criterion)
    if table.empty:
        return _no_data(ax, "no data (needs per-domain scores)")
    groups = [(None, table)] if hue is None or hue not in table.columns else list(table.groupby(hue, sort=True))
    if hue is None or hue not in table.columns:
        rng = np.random.default_rng(0)
        for i, domain in enumerate(sorted(set(table["dominant"]))):
            part = table[table["dominant"] == domain]
            jitter = rng.uniform(-0.15, 0.15, len(part))
            ax.scatter(part["layer"] + jitter, part["specialisation"], s=10, alpha=0.7, color=_color(domain, i), label=domain)
    for i, (name, part) in enumerate(groups):
        weights = part["usage"].where(part["usage"] > 0, 0) + 1e-12
        mean = (part["specialisation"] * weights).groupby(part["layer"]).sum() / weights.groupby(part["layer"]).sum()
        ax.plot(mean.index, mean.to_numpy(), color="black" if name is None else _PALETTE[i % 10], marker="o",
                label="mean (usage-weighted)" if name is None else str(name))
    layers = sorted(set(table["layer"]))
    ax.set_xticks(layers[:: max(1, len(layers) // 12)])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("specialisation")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

@_styled
def distance_heatmap(distances, clustering=None, *, n_clusters: int | None = None, title: str | None = None, fig=None):
    """Angular distance matrix ordered by average-linkage clustering, with its dendrogram above.

    `clustering` is a :class:`reapkit.geometry.Clustering` (computed when omitted); cluster
    boundaries are outlined when it has labels or `n_clusters` is given. Returns the Figure.
    """
    from scipy.cluster import hierarchy

    from .geometry import cluster, clusters_at

    d = np.asarray(distances if distances is not None else np.zeros((0, 0)), dtype=float)
    if d.size == 0:
        return _no_data_figure(fig, title=title or "expert distances")
    if clustering is None:
        clustering = cluster(d, n_clusters=n_clusters)
    elif n_clusters is not None:  # a copy: the caller's clustering keeps its labels
        clustering = dataclasses.replace(clustering, labels=clusters_at(clustering, n_clusters))
    order = np.asarray(clustering.order)
    fig = fig or plt.figure(figsize=(4.6, 5.2), layout="constrained")
    ax_tree, ax_map = fig.subplots(2, 1, height_ratios=[1, 4])
    if clustering.linkage.size:
        hierarchy.dendrogram(clustering.linkage, ax=ax_tree, no_labels=True, color_threshold=0,
                             above_threshold_color="0.3", link_color_func=lambda _: "0.3")
        ax_tree.set_xlim(0, 10 * len(order))
    ax_tree.axis("off")
    image = ax_map.imshow(d[np.ix_(order, order)], cmap="magma_r", vmin=0, vmax=max(0.5, float(d.max())), interpolation="nearest")
    ticks = np.arange(len(order))[:: max(1, len(order) // 32)]
    ax_map.set_xticks(ticks)
    ax_map.set_xticklabels([str(order[t]) for t in ticks], rotation=90)
    ax_map.set_yticks(ticks)
    ax_map.set_yticklabels([str(order[t]) for t in ticks])
    ax_map.set_xlabel("expert (dendrogram order)")
    if clustering.labels is not None:
        labels = np.asarray(clustering.labels)[order]
        start = 0
        for i in range(1, len(labels) + 1):
            if i == len(labels) or labels[i] != labels[start]:
                ax_map.add_patch(matplotlib.patches.Rectangle((start - 0.5, start - 0.5), i - start, i - start,
                                                              fill=False, edgecolor="cyan", linewidth=1.2))
                start = i
    fig.colorbar(image, ax=ax_map, label="angular distance", shrink=0.8)
    ax_tree.set_title(title or "expert distances")
    return fig


@_styled
def distance_heatmaps(distances: dict, clusterings: dict | None = None, *, n_clusters: int | None = None, ncols: int = 4):
    """One :func:`distance_heatmap` per entry of `distances` ({title or (space, layer): [E, E] matrix}),
    side by side; `clusterings` {same key: Clustering} reuses clusterings. Returns the Figure."""
    if not distances:
        return _no_data_figure(title="expert distances")
    n = len(distances)
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig = plt.figure(figsize=(3.6 * ncols + 0.3, 4.2 * nrows + 0.2), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(nrows, ncols, squeeze=False)).ravel()
    for (key, d), sub in zip(distances.items(), subfigs):
        title = f"{key[0]} space, layer {key[1]}" if isinstance(key, tuple) and len(key) == 2 else str(key)
        distance_heatmap(d, (clusterings or {}).get(key), n_clusters=n_clusters, title=title, fig=sub)
    for sub in subfigs[n:]:
        sub.set_visible(False)
    return fig


@_styled
def saliency_clusters(scores, clustering=None, *, labels=None, ratio: float | None = None, title: str | None = None, ax=None):
    """Saliency of each expert of one layer as bars in dendrogram order, coloured by cluster; with
    `ratio`, the experts a plan would prune are drawn hatched and pale.

    `scores` [E]; `clustering` a :class:`reapkit.geometry.Clustering` (for order and labels) or
    None; `labels` overrides the cluster ids.
    """
    fig, ax = _axes(ax, (6, 2.8))
    ax.set_title(title or "saliency by cluster")
    s = np.asarray(scores if scores is not None else [], dtype=float).ravel()
    if s.size == 0:
        return _no_data(ax)
    order = np.asarray(clustering.order) if clustering is not None else np.arange(s.size)
    if labels is None:
        labels = clustering.labels if clustering is not None and clustering.labels is not None else np.zeros(s.size, int)
    labels = np.asarray(labels)
    pruned = np.zeros(s.size, bool)
    if ratio is not None:
        pruned[np.argsort(-s, kind="stable")[s.size - pruned_count(s.size, ratio):]] = True
    cmap = plt.get_cmap("tab20")
    for x, e in enumerate(order):
        ax.bar(x, s[e], color=cmap(int(labels[e]) % 20), alpha=0.35 if pruned[e] else 1.0,
               hatch="///" if pruned[e] else None, edgecolor="0.3" if pruned[e] else "none", linewidth=0.5)
    ax.set_xticks(np.arange(s.size)[:: max(1, s.size // 32)])
    ax.set_xticklabels([str(order[t]) for t in range(0, s.size, max(1, s.size // 32))], rotation=90)
    ax.set_xlim(-0.6, s.size - 0.4)
    ax.set_xlabel("expert (dendrogram order); colour = cluster" + ("; hatched = pruned" if ratio is not None else ""))
    ax.set_ylabel("score")
    return ax


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------

def mask_frame(kept, num_experts=None, **extra) -> pd.DataFrame:
    """Tidy kept/pruned mask (layer, expert, kept) from a plan (anything with `.kept` and
    `.num_experts`) or from dicts {layer: kept experts} and {layer: experts}; `extra` columns are added."""
    if hasattr(kept, "kept") and hasattr(kept, "num_experts"):
        kept, num_experts = kept.kept, kept.num_experts
    if num_experts is None:
        raise ValueError("mask_frame needs num_experts ({layer: experts}) when given a dict of kept experts")
    rows = [(int(layer), e, e in set(kept[layer])) for layer in sorted(kept) for e in range(int(num_experts[layer]))]
    frame = pd.DataFrame(rows, columns=["layer", "expert", "kept"])
    for key, value in extra.items():
        frame[key] = value
    return frame


@_styled
def plan_mask(mask, *, title: str | None = None, ax=None):
    """Layers x experts grid: kept experts dark, pruned ones light. `mask` is a :func:`mask_frame`
    or a plan (anything with `.kept` and `.num_experts`)."""
    if mask is not None and hasattr(mask, "kept") and not isinstance(mask, pd.DataFrame):
        mask = mask_frame(mask)
    fig, ax = _axes(ax, (5, 2.4))
    ax.set_title(title or "kept experts")
    if _is_empty(mask):
        return _no_data(ax)
    table = mask.pivot_table(index="layer", columns="expert", values="kept", aggfunc="max").sort_index()
    values = table.to_numpy(dtype=float)
    cmap = matplotlib.colors.ListedColormap(["#f0e0d0", "#2a4d69"])
    ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(np.arange(table.shape[1]) - 0.5, minor=True)
    ax.set_yticks(np.arange(table.shape[0]) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    _layer_ticks(ax, table.index)
    ax.set_xticks(np.arange(table.shape[1])[:: max(1, table.shape[1] // 16)])
    ax.set_xticklabels([str(c) for c in table.columns[:: max(1, table.shape[1] // 16)]])
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    kept_n = int(np.nansum(values))
    ax.text(1.0, 1.0, f"{kept_n}/{int(np.isfinite(values).sum())} kept", transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    return ax


@_styled
def plan_masks(masks: pd.DataFrame, *, row: str = "criterion", col: str = "ratio", fig=None):
    """Grid of :func:`plan_mask` panels, one per (`row`, `col`) value of a mask frame with those columns."""
    if _is_empty(masks):
        return _no_data_figure(fig, title="kept experts")
    rows = sorted(set(masks[row])) if row in masks.columns else [None]
    cols = sorted(set(masks[col])) if col in masks.columns else [None]
    fig = fig or plt.figure(figsize=(2.6 * len(cols) + 0.5, 1.7 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            part = _select(masks, **{row: r, col: c})
            name = " ".join(f"{k}={v:.0%}" if k == "ratio" else f"{v}" for k, v in ((row, r), (col, c)) if v is not None)
            plan_mask(part, title=name, ax=axes[i, j])
    return fig


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

def _curves(results: pd.DataFrame, metric: str, hue: str):
    """{hue value: DataFrame(ratio, mean, lo, hi)}; ratio-0 baseline rows join every curve."""
    data = results.dropna(subset=[metric])
    baseline = data[data["ratio"] == 0]
    rest = data[data["ratio"] != 0]
    names = list(dict.fromkeys(rest[hue])) if hue in rest.columns else [None]
    out = {}
    for name in names:
        part = rest if name is None else rest[rest[hue] == name]
        part = pd.concat([baseline, part]) if not baseline.empty else part
        stats = part.groupby("ratio")[metric].agg(["mean", "min", "max"]).sort_index()
        out[name] = stats
    if not names or (not out and not baseline.empty):
        out[None] = baseline.groupby("ratio")[metric].agg(["mean", "min", "max"])
    return out


@_styled
def loss_vs_ratio(results: pd.DataFrame, *, metric: str = "loss", domain: str | None = "all", hue: str = "criterion", ax=None):
    """`metric` (loss, kl, agreement, ...) against the fraction of experts removed, one line per `hue`
    value (mean over repeated runs, band = min..max). Rows at ratio 0 (the unpruned model) start every line."""
    fig, ax = _axes(ax)
    ax.set_title(f"{metric} vs compression" + (f" ({domain})" if domain else ""))
    data = results if _is_empty(results) else _select(results, domain=domain)
    if _is_empty(data) or metric not in data.columns or data[metric].dropna().empty:
        return _no_data(ax)
    for i, (name, stats) in enumerate(_curves(data, metric, hue).items()):
        color = _color(name, i) if hue == "domain" else _PALETTE[i % 10]
        ax.plot(stats.index, stats["mean"], marker="o", color=color, label=str(name) if name is not None else metric)
        if (stats["max"] > stats["min"]).any():
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.15, linewidth=0)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("experts removed")
    ax.set_ylabel(metric)
    ax.legend()
    return ax


@_styled
def loss_vs_ratio_by_domain(results: pd.DataFrame, *, metric: str = "loss", hue: str = "criterion", fig=None):
    """One :func:`loss_vs_ratio` panel per domain (shared x axis), lines per `hue`. Returns the Figure."""
    if _is_empty(results) or metric not in results.columns:
        return _no_data_figure(fig, title=f"{metric} vs compression by domain")
    domains = list(dict.fromkeys(results["domain"])) if "domain" in results.columns else [None]
    domains = sorted(domains, key=lambda d: (d == "all", str(d)))
    n = len(domains)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = fig or plt.figure(figsize=(3.3 * ncols + 0.4, 2.6 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for domain, ax in zip(domains, axes):
        loss_vs_ratio(results, metric=metric, domain=domain, hue=hue, ax=ax)
        ax.set_title(str(domain))
        if ax is not axes[0] and ax.get_legend() is not None:
            ax.get_legend().remove()
    for ax in axes[n:]:
        ax.axis("off")
    return fig


@_styled
def reconstruction_by_layer(frame: pd.DataFrame, *, hue: str = "criterion", style_by: str = "ratio", ax=None):
    """Relative L2 error of each MoE block's output (layer, rel_l2 [, criterion, ratio]) by layer:
    one colour per `hue` value, one line style per `style_by` value."""
    fig, ax = _axes(ax)
    ax.set_title("block reconstruction error")
    if _is_empty(frame) or "rel_l2" not in frame.columns:
        return _no_data(ax)
    hues = list(dict.fromkeys(frame[hue])) if hue in frame.columns else [None]
    styles = sorted(set(frame[style_by])) if style_by in frame.columns else [None]
    dashes = ["-", "--", ":", "-."]
    for i, h in enumerate(hues):
        for j, st in enumerate(styles):
            part = _select(frame, **{hue: h, style_by: st}).groupby("layer")["rel_l2"].mean()
            if part.empty:
                continue
            label = " ".join(f"{v:.0%}" if isinstance(v, float) else str(v) for v in (h, st) if v is not None)
            ax.plot(part.index, part.to_numpy(), marker="o", color=_PALETTE[i % 10], linestyle=dashes[j % 4], label=label or None)
    layers = sorted(set(frame["layer"]))
    ax.set_xticks(layers[:: max(1, len(layers) // 12)])
    ax.set_xlabel("layer")
    ax.set_ylabel("relative L2 error")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


# --------------------------------------------------------------------------------------------
# The REAP study (reapkit.study): methods against compression, calibration sensitivity
# --------------------------------------------------------------------------------------------

#: Line style of each method of a study frame (column `method`); REAP is drawn bold.
_METHOD_STYLE = {"prune": "-", "merge": "--", "global": ":"}
_STUDY_COLORS = {"reap": "#c44e52", "frequency": "#4c72b0", "soft_frequency": "#64b5cd", "ean_mean": "#55a868",
                 "random": "#8c8c8c", "m_smoe": "#8172b3", "hc_smoe": "#937860", "global_reap": "#da8bc3"}


@_styled
def study_curves(results: pd.DataFrame, *, metric: str = "loss", domain: str = "all", focus: bool = True, ax=None):
    """`metric` against the fraction of experts removed, one line per method (`label` column of a
    `reapkit.study.compression_study` frame): pruning criteria solid, merges dashed, the global
    budget dotted, REAP bold; random pruning is the mean over seeds with a min-max band.

    `focus`: when random pruning is far worse than every other method, the y axis is fitted to the
    other methods and a note gives random's range (otherwise their differences are invisible)."""
    fig, ax = _axes(ax)
    ax.set_title(f"{metric} ({domain})" if domain else metric)
    data = results if _is_empty(results) else _select(results, domain=domain)
    if _is_empty(data) or metric not in data.columns or data[metric].dropna().empty:
        return _no_data(ax)
    key = "label" if "label" in data.columns else "criterion"
    for i, name in enumerate(dict.fromkeys(data[key])):
        part = data[data[key] == name]
        stats = part.groupby("ratio")[metric].agg(["mean", "min", "max"]).sort_index()
        method = part["method"].iloc[0] if "method" in part.columns else "prune"
        color = _STUDY_COLORS.get(str(name), _PALETTE[i % 10])
        ax.plot(stats.index, stats["mean"], marker="o", color=color, linestyle=_METHOD_STYLE.get(method, "-"),
                linewidth=2.6 if name == "reap" else 1.4, zorder=3 if name == "reap" else 2,
                label=str(name) + (f" (mean of {part['seed'].nunique()})" if name == "random" and "seed" in part else ""))
        if (stats["max"] > stats["min"]).any():
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.18, linewidth=0)
    others = data.loc[data[key] != "random", metric].dropna() if "random" in set(data[key]) else None
    if focus and others is not None and not others.empty:
        lo, hi = float(others.min()), float(others.max())
        rand = data.loc[data[key] == "random", metric].dropna()
        span = (hi - lo) or abs(hi) * 1e-3 or 1e-6
        if rand.max() > hi + 2 * span or rand.min() < lo - 2 * span:
            ax.set_ylim(lo - 0.15 * span, hi + 0.15 * span)
            ax.text(0.02, 0.98, f"random: {rand.min():.3g}..{rand.max():.3g} (off scale)", transform=ax.transAxes,
                    ha="left", va="top", fontsize=7, color=_STUDY_COLORS["random"])
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("experts removed")
    ax.set_ylabel({"kl": "KL to unpruned (nats)", "top1_agreement": "top-1 agreement"}.get(metric, metric))
    return ax


@_styled
def study_figure(results: pd.DataFrame, *, metrics=("loss", "kl"), domains=None, focus: bool = True, fig=None):
    """The study figure: a grid of :func:`study_curves`, one row per metric and one column per
    domain ("all" first); one legend for the whole figure. Returns the Figure."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if _is_empty(results):
        return _no_data_figure(fig, title="compression study")
    if domains is None:
        domains = sorted(dict.fromkeys(results["domain"]), key=lambda d: (d != "all", str(d)))
    fig = fig or plt.figure(figsize=(2.9 * len(domains) + 1.6, 2.5 * len(metrics) + 0.4), layout="constrained")
    axes = fig.subplots(len(metrics), len(domains), squeeze=False, sharex=True)
    for i, metric in enumerate(metrics):
        for j, domain in enumerate(domains):
            ax = study_curves(results, metric=metric, domain=domain, focus=focus, ax=axes[i, j])
            ax.set_title(str(domain) if i == 0 else "")
            if j:
                ax.set_ylabel("")
            if i < len(metrics) - 1:
                ax.set_xlabel("")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center")
    return fig


def _annotated_heatmap(ax, table: pd.DataFrame, *, cmap, fmt: str, vmin=None, vmax=None, label=""):
    values = table.to_numpy(dtype=float)
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(np.arange(table.shape[1]), [str(c) for c in table.columns], rotation=30, ha="right")
    ax.set_yticks(np.arange(table.shape[0]), [str(r) for r in table.index])
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            red, green, blue, _ = image.cmap(image.norm(v))
            light = 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5
            ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=7, color="black" if light else "white")
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label=label)
    return ax


@_styled
def calibration_heatmap(loss_matrix: pd.DataFrame, *, delta: bool = True, ax=None):
    """Evaluation domain x calibration set (`reapkit.study.calibration_sensitivity`): the loss
    after pruning, or with `delta` its increase over the unpruned model (column ``"unpruned"``)."""
    fig, ax = _axes(ax, (4.4, 3.2))
    if _is_empty(loss_matrix):
        return _no_data(ax)
    table = loss_matrix
    if delta and "unpruned" in table.columns:
        table = table.drop(columns="unpruned").sub(table["unpruned"], axis=0)
    ax.set_title("loss increase after pruning" if delta else "loss after pruning")
    _annotated_heatmap(ax, table, cmap="magma_r", fmt=".3g",
                       label="Δ loss" if delta else "loss")
    ax.set_xlabel("calibration set")
    ax.set_ylabel("evaluation domain")
    return ax


@_styled
def overlap_heatmap(overlap: pd.DataFrame, *, ax=None):
    """Calibration set x calibration set: mean over layers of the Jaccard index of the kept experts."""
    fig, ax = _axes(ax, (4.0, 3.2))
    if _is_empty(overlap):
        return _no_data(ax)
    ax.set_title("kept-expert overlap (Jaccard)")
    _annotated_heatmap(ax, overlap, cmap="viridis", fmt=".2f", vmin=0, vmax=1, label="Jaccard")
    ax.set_xlabel("calibration set")
    ax.set_ylabel("calibration set")
    return ax


@_styled
def calibration_figure(loss_matrix: pd.DataFrame, overlap: pd.DataFrame, *, delta: bool = True, fig=None):
    """:func:`calibration_heatmap` next to :func:`overlap_heatmap`. Returns the Figure."""
    fig = fig or plt.figure(figsize=(9.6, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    calibration_heatmap(loss_matrix, delta=delta, ax=left)
    overlap_heatmap(overlap, ax=right)
    ratio, criterion = loss_matrix.attrs.get("ratio"), loss_matrix.attrs.get("criterion")
    if ratio is not None:
        fig.suptitle(f"{criterion or 'reap'} pruning at {ratio:.0%}, calibrated on each set")
    return fig


__all__ += ["study_curves", "study_figure", "calibration_heatmap", "overlap_heatmap", "calibration_figure"]
