"""Angular distances between experts and their hierarchical clustering.

    >>> vectors = output_vectors(obs, layer=2)                  # [E, H] mean routed output
    >>> d = angular_distances(vectors)                          # [E, E] in [0, 1]
    >>> d = distance_matrix(obs, 2, "output")                   # the same in one call
    >>> d = distance_matrix(model, 2, "weights")                # flattened expert weights
    >>> c = cluster(d, n_clusters=8)                            # average linkage
    >>> c.linkage.shape, c.order.shape, c.labels.shape          # scipy linkage, leaf order, cluster ids
    ((15, 4), (16,), (16,))

The angular distance of two vectors is arccos(cosine similarity) / pi: 0 for the same direction,
0.5 for orthogonal vectors, 1 for opposite ones. It is a metric, so average linkage on it is
well defined. A zero vector (an expert that received no calibration tokens has a zero mean
output) has no direction: its distance to every other expert is 0.5 and to itself 0.

Spaces:

    weights   the expert's parameters (gate/up and down projections, biases) flattened, from a model
    output    the expert's mean output over the tokens routed to it (output_sum / count), from Observations
    router    the expert's row of the router weight matrix, from a model

The functions that read a model (`model_vectors`) or observations (`output_vectors`) are
separate from the pure numpy ones (`angular_distances`, `cluster`, `clusters_at`); this module
imports neither torch nor transformers itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from reapkit.errors import InvalidInput

if TYPE_CHECKING:
    import pandas as pd

SPACES = ("weights", "output", "router")

__all__ = [
    "SPACES",
    "Clustering",
    "cluster_table",
    "space_agreement",
    "angular_distances",
    "cluster",
    "clusters_at",
    "cut_height",
    "coselection_lift",
    "model_vectors",
    "output_vectors",
    "expert_vectors",
    "distance_matrix",
    "distance_matrices",
]


# --------------------------------------------------------------------------------------------
# Pure numpy
# --------------------------------------------------------------------------------------------


def cut_height(linkage, n_clusters: int) -> float:
    """The height at which cutting a dendrogram leaves `n_clusters` clusters: midway between the merge
    heights on either side of the cut (NaN when there is no such cut).

        >>> cut_height(cluster(d).linkage, 4)
        0.46034261464352655
    """
    heights = np.sort(np.asarray(linkage, dtype=float).reshape(-1, 4)[:, 2]) if np.size(linkage) else np.zeros(0)
    k = len(heights) + 1 - int(n_clusters)  # merges below the cut
    if not 0 < k <= len(heights) or n_clusters < 2:
        return float("nan")
    return float((heights[k - 1] + heights[k]) / 2) if k < len(heights) else float(heights[-1])


def coselection_lift(coselect) -> np.ndarray:
    """[E, E]: how often two experts share a token's top-k, over what independent routing with the same
    per-expert frequencies gives (1 = chance); the diagonal (an expert with itself) is NaN.

        >>> lift = coselection_lift(obs.coselection()[0])        # layer 0
        >>> lift.shape, round(float(np.nanmax(lift)), 2)           # the pair chosen together most above chance
        ((16, 16), 4.28)

    `coselect` [E, E]: co-selection counts, tokens per expert on the diagonal. With T tokens,
    independent routing expects C_ii C_jj / T tokens on both; T = trace / top-k, and top-k = 1 + the
    off-diagonal total over the trace (each routed token brings top-k - 1 partners).
    """
    c = np.asarray(coselect, dtype=float)
    diag = np.diag(c).copy()
    trace = diag.sum()
    lift = np.full(c.shape, np.nan)
    if trace <= 0:
        return lift
    top_k = 1 + (c.sum() - trace) / trace
    expected = np.outer(diag, diag) / (trace / top_k)
    np.divide(c, expected, out=lift, where=expected > 0)
    np.fill_diagonal(lift, np.nan)
    return lift


def angular_distances(vectors, other=None) -> np.ndarray:
    """arccos(cosine similarity) / pi between the rows of `vectors` ([N, D]; with `other` [M, D]: [N, M]).

    Computed in float64; zero rows are at distance 0.5 from everything but themselves.
    """
    a = np.asarray(vectors, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"angular_distances expects a 2-D array [experts, features], got shape {a.shape}")
    b = a if other is None else np.asarray(other, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != a.shape[1]:
        raise ValueError(f"the two sets of vectors must have the same number of features, got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = np.outer(na, nb)
    cos = np.divide(a @ b.T, denom, out=np.zeros((a.shape[0], b.shape[0])), where=denom > 0)
    dist = np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi
    if other is None:
        np.fill_diagonal(dist, 0.0)
        dist = (dist + dist.T) / 2  # exact symmetry for scipy
    return dist


@dataclass
class Clustering:
    """Average-linkage clustering of experts: scipy `linkage` [E-1, 4], dendrogram leaf `order`, and
    `labels` (cluster id per expert, 0-based, numbered in leaf order) when a cluster count was asked for."""

    linkage: np.ndarray
    order: np.ndarray
    labels: np.ndarray | None = None

    @property
    def n_clusters(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1 if self.labels.size else 0

    def members(self) -> list[list[int]]:
        """Experts of each cluster, by cluster id."""
        if self.labels is None:
            raise InvalidInput("this clustering has no cluster labels; call cluster(..., n_clusters=N)")
        return [sorted(int(i) for i in np.flatnonzero(self.labels == c)) for c in range(self.n_clusters)]


def cluster(distances, *, n_clusters: int | None = None, method: str = "average") -> Clustering:
    """Hierarchical clustering of a square distance matrix (scipy, `method` linkage, optimal leaf order)."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"cluster expects a square distance matrix, got shape {d.shape}")
    n = d.shape[0]
    if n < 2:
        linkage = np.zeros((0, 4))
        order = np.arange(n)
    else:
        condensed = squareform((d + d.T) / 2, checks=False)
        linkage = hierarchy.linkage(condensed, method=method)
        linkage = hierarchy.optimal_leaf_ordering(linkage, condensed)
        order = hierarchy.leaves_list(linkage)
    result = Clustering(linkage, np.asarray(order, dtype=int))
    if n_clusters is not None:
        result.labels = clusters_at(result, n_clusters)
    return result


def clusters_at(clustering, n_clusters: int) -> np.ndarray:
    """Cut a clustering (a `Clustering` or a scipy linkage matrix) into `n_clusters` clusters.

    Returns 0-based labels per expert, numbered in the order the clusters appear along the leaves.
    """
    from scipy.cluster import hierarchy

    linkage = clustering.linkage if isinstance(clustering, Clustering) else np.asarray(clustering, dtype=np.float64)
    n = linkage.shape[0] + 1 if linkage.size else (len(clustering.order) if isinstance(clustering, Clustering) else 1)
    if not isinstance(n_clusters, (int, np.integer)) or not 1 <= n_clusters <= max(n, 1):
        raise InvalidInput(
            f"n_clusters must be an integer between 1 and the number of experts ({n}), got {n_clusters!r}"
        )
    if n < 2:
        return np.zeros(n, dtype=int)
    raw = hierarchy.fcluster(linkage, t=n_clusters, criterion="maxclust")
    order = hierarchy.leaves_list(linkage)
    renumber: dict[int, int] = {}
    for leaf in order:
        renumber.setdefault(int(raw[leaf]), len(renumber))
    return np.array([renumber[int(r)] for r in raw], dtype=int)


# --------------------------------------------------------------------------------------------
# Reading vectors from observations and models
# --------------------------------------------------------------------------------------------


def _position(layers, layer: int) -> int:
    layers = list(layers)
    if layer not in layers:
        raise InvalidInput(f"layer {layer} is not an MoE layer; MoE layers (decoder indices) are {layers}")
    return layers.index(layer)


def output_vectors(obs, layer: int, *, domains=None) -> np.ndarray:
    """Mean routed output of each expert of decoder layer `layer` ([E, H]) from `Observations`.

    Experts that received no tokens get a zero vector.
    """
    pos = _position(obs.layers, layer)
    obs.require("output_sum", "count", purpose="the 'output' space (mean routed output of each expert)")
    stats = obs.pooled(domains, names=("output_sum", "count"))
    total = stats["output_sum"][pos].double().numpy()
    count = stats["count"][pos].double().numpy()
    E = obs.num_experts[pos]
    return np.divide(total, count[:, None], out=np.zeros_like(total), where=count[:, None] > 0)[:E]


def model_vectors(model, layer: int, space: str) -> np.ndarray:
    """Expert vectors of decoder layer `layer` read from `model`: `router` (router weight rows, [E, H])
    or `weights` ([E, E] vectors with the same inner products, hence the same angular distances, as
    all expert parameters flattened: built from their Gram matrix on the model's device, so a
    layer of a large model never becomes one [E, P] array)."""
    from reapkit.model.layer import moe_layers

    if space not in ("weights", "router"):
        raise InvalidInput(
            f"model_vectors reads the 'weights' or 'router' space, got {space!r} "
            "(the 'output' space comes from observations: output_vectors(obs, layer))"
        )
    layers = {moe.index: moe for moe in moe_layers(model)}
    _position(sorted(layers), layer)
    if space == "router":
        return layers[layer].router_weight.detach().float().cpu().numpy().astype(np.float64)
    tensors = layers[layer].expert_tensors(router=False).values()
    gram = sum(flat @ flat.T for flat in (t.detach().reshape(len(t), -1).float() for t in tensors))
    values, vectors = np.linalg.eigh(gram.cpu().double().numpy())
    return vectors * np.sqrt(np.clip(values, 0, None))


def expert_vectors(source, layer: int, space: str, *, domains=None) -> np.ndarray:
    """Vectors of one space: `output` from `Observations`, `weights` / `router` from a model."""
    if space not in SPACES:
        raise InvalidInput(f"unknown space {space!r}; choose one of {', '.join(SPACES)}")
    is_obs = hasattr(source, "pooled") and hasattr(source, "layers")
    if space == "output":
        if not is_obs:
            raise TypeError("the 'output' space needs Observations (mean routed outputs), not a model")
        return output_vectors(source, layer, domains=domains)
    if is_obs:
        raise TypeError(f"the {space!r} space reads expert weights, so it needs the model, not Observations")
    return model_vectors(source, layer, space)


def distance_matrix(source, layer: int, space: str = "output", *, domains=None) -> np.ndarray:
    """The [E, E] angular distance matrix of decoder layer `layer` in `space` (see `expert_vectors`)."""
    return angular_distances(expert_vectors(source, layer, space, domains=domains))


def distance_matrices(*, model=None, obs=None, layers=None, spaces=SPACES) -> dict[tuple[str, int], np.ndarray]:
    """{(space, layer): [E, E] distances} for every requested space whose source was given.

    `output` needs `obs`; `weights` and `router` need `model`. `layers` defaults to all MoE layers.
    """
    result = {}
    for space in spaces:
        source = obs if space == "output" else model
        if source is None:
            continue
        if layers is not None:
            chosen = list(layers)
        elif space == "output":
            chosen = obs.layers
        else:
            from reapkit.model.discover import architecture_for

            chosen = [i for i, _ in architecture_for(model).moe_blocks(model)]
        for layer in chosen:
            result[(space, layer)] = distance_matrix(source, layer, space)
    return result


def cluster_table(clusterings: dict) -> pd.DataFrame:
    """Tidy table of {(space, layer): Clustering}: space, layer, expert, cluster, leaf (position in
    the dendrogram order), cluster_size."""
    import pandas as pd

    rows = []
    for (space, layer), c in clusterings.items():
        leaf = np.empty(len(c.order), dtype=int)
        leaf[np.asarray(c.order, dtype=int)] = np.arange(len(c.order))
        labels = c.labels if c.labels is not None else np.zeros(len(c.order), dtype=int)
        sizes = np.bincount(labels) if len(labels) else np.zeros(0, int)
        for e in range(len(c.order)):
            rows.append((space, layer, e, int(labels[e]), int(leaf[e]), int(sizes[labels[e]])))
    return pd.DataFrame(rows, columns=["space", "layer", "expert", "cluster", "leaf", "cluster_size"])


def space_agreement(distances: dict) -> pd.DataFrame:
    """How alike two spaces see the experts of a layer: Spearman correlation of the pairwise
    distances (upper triangles) for every pair of spaces in {(space, layer): [E, E]}.
    Columns: layer, space_a, space_b, spearman."""
    import pandas as pd
    from scipy.stats import spearmanr

    rows = []
    layers = sorted({layer for _, layer in distances})
    for layer in layers:
        spaces = [s for s in SPACES if (s, layer) in distances]
        for i, a in enumerate(spaces):
            for b in spaces[i + 1 :]:
                da, db = distances[(a, layer)], distances[(b, layer)]
                iu = np.triu_indices(len(da), 1)
                x, y = da[iu], db[iu]
                rho = (
                    float(spearmanr(x, y).statistic) if x.size > 1 and np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
                )
                rows.append((layer, a, b, rho))
    return pd.DataFrame(rows, columns=["layer", "space_a", "space_b", "spearman"])
