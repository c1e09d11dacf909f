"""How merge methods group experts: each function takes `MergeInputs` and returns every layer's groups.

    >>> import numpy as np
    >>> linkage_groups(np.array([[0.0], [0.1], [5.0], [5.2]]), keep=2)   # the first E - k merges replayed
    [[0, 1], [2, 3]]
    >>> second_order_distance(np.array([[0.0, 1.0], [1.0, 0.0]])).round(3)   # 1 - cos between rows
    array([[0., 1.],
           [1., 0.]])

A grouping function gets the `reapkit.select.merge_methods.MergeInputs` of one plan (pooled
statistics, target `keep`, layers) and returns, per MoE layer position, a list of groups of
original expert ids that together cover the layer's experts. `per_layer` turns a function of one
layer's experts into one (and keeps experts of different routing groups, `n_group`, apart).

The faithful methods follow the REAP repository's code (CerebrasResearch/reap at commit
1970473c51ca3caeb98c10392f15b3a08a672974: `src/reap/cluster.py` `hierarchical_clustering`,
`linkage_to_labels`, `mc_smoe_clustering`; `src/reap/main.py` ~356 `cluster`; `src/reap/metrics.py`
`euclidean_distance`, `cosine_distance`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "hc_smoe_faithful",
    "hc_smoe_routed",
    "linkage_groups",
    "m_smoe_faithful",
    "m_smoe_router_rows",
    "per_layer",
    "second_order_distance",
]


def per_layer(fn):
    """A grouping function from `fn(inputs, pos, ids, keep)`: groups (local indices into `ids`) of one
    layer's experts `ids`, `keep` of them; with `n_group` routing groups each is grouped alone."""

    def group(inputs) -> list[list[list[int]]]:
        out = []
        for pos in range(len(inputs.layers)):
            total, n_group = inputs.num_experts[pos], inputs.n_group
            size, per_group = total // n_group, inputs.keep // n_group
            groups = []
            for g in range(n_group):
                ids = np.arange(g * size, (g + 1) * size)
                groups += [[int(ids[i]) for i in members] for members in fn(inputs, pos, ids, per_group)]
            out.append(groups)
        return out

    group.__name__ = getattr(fn, "__name__", "group")
    group.__doc__ = fn.__doc__
    return group


def linkage_groups(features: np.ndarray, keep: int, *, method: str = "average") -> list[list[int]]:
    """Groups of rows of `features` from scipy's `method` linkage of their Euclidean distances: the
    first E - keep merges of the linkage replayed (the REAP code's `linkage_to_labels`), so exactly
    `keep` groups, ordered by their lowest member."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    n = len(features)
    labels = np.arange(n)
    if keep < n:
        merges = linkage(pdist(np.asarray(features, dtype=np.float64)), method=method)
        for step in range(n - keep):
            a, b = int(merges[step, 0]), int(merges[step, 1])
            labels[(labels == a) | (labels == b)] = n + step
    groups = [sorted(int(e) for e in np.flatnonzero(labels == c)) for c in np.unique(labels)]
    return sorted(groups)


def second_order_distance(distance: np.ndarray) -> np.ndarray:
    """1 - cos between the rows of a distance matrix (how the REAP code turns M-SMoE's router-logit
    distance into the distance it assigns experts by, `main.py` ~356)."""
    rows = np.asarray(distance, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(rows, axis=1), 1e-8)
    return 1.0 - (rows @ rows.T) / (norms[:, None] * norms[None, :])


def _order(values: np.ndarray) -> np.ndarray:
    """Indices by descending value, ties to the lower index."""
    return np.argsort(-values, kind="stable")


@per_layer
def hc_smoe_faithful(inputs, pos, ids, keep):
    """HC-SMoE: average linkage of the experts' mean outputs over *all* tokens, Euclidean."""
    tokens = max(float(inputs.stat("tokens", pos)), 1.0)
    return linkage_groups(inputs.stat("all_output_sum", pos)[ids] / tokens, keep)


@per_layer
def hc_smoe_routed(inputs, pos, ids, keep):
    """HC-SMoE-style on the mean outputs over the tokens routed to each expert (an expert never routed: 0)."""
    counts = inputs.stat("count", pos)[ids]
    return linkage_groups(inputs.stat("output_sum", pos)[ids] / np.maximum(counts, 1)[:, None], keep)


@per_layer
def m_smoe_router_rows(inputs, pos, ids, keep):
    """M-SMoE-style per layer: the `keep` most frequent experts dominant, the others join the dominant
    whose router weight row is most cosine-similar."""
    counts, rows = inputs.stat("count", pos)[ids], inputs.router_rows(pos)[ids]
    dominant = sorted(int(i) for i in _order(counts)[:keep])
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit[dominant].T
    groups = {d: [d] for d in dominant}
    for e in range(len(counts)):
        if e not in groups:
            groups[dominant[int(np.argmax(similarity[e]))]].append(e)  # argmax: ties to the lower dominant
    return [sorted(g) for g in groups.values()]


def m_smoe_faithful(inputs) -> list[list[list[int]]]:
    """M-SMoE as the REAP code runs it (`mc_smoe_clustering`): `keep` x layers dominant experts in all,
    each layer's most frequent first, the rest the globally most frequent; every other expert joins
    the dominant nearest by the second-order router-logit distance. Layers keep different counts."""
    L = len(inputs.layers)
    proba = [inputs.stat("count", pos) / max(float(inputs.stat("tokens", pos)), 1.0) for pos in range(L)]
    dominant = {(pos, int(np.argmax(p))) for pos, p in enumerate(proba)}  # argmax: ties to the lower id
    candidates = [(-p[e], pos, e) for pos, p in enumerate(proba) for e in range(len(p)) if (pos, e) not in dominant]
    candidates.sort(key=lambda c: c[0])  # stable: ties stay in (layer, expert) order, as the reference's sort
    dominant |= {(pos, e) for _, pos, e in candidates[: max(L * inputs.keep - L, 0)]}
    out = []
    for pos in range(L):
        tokens = max(float(inputs.stat("tokens", pos)), 1.0)
        distance = second_order_distance(inputs.stat("router_distance_sum", pos) / tokens)
        leaders = sorted(e for p, e in dominant if p == pos)
        groups = {d: [d] for d in leaders}
        for e in range(len(proba[pos])):
            if e not in groups:
                groups[leaders[int(np.argmin(distance[e, leaders]))]].append(e)  # argmin: ties to the lower id
        out.append([sorted(g) for g in groups.values()])
    return out
