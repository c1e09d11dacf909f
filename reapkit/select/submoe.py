"""Sub-MoE grouping: k-means of the experts' characteristic activations, merges spent across paired layers.

    >>> ca = [np.eye(4)[[0, 0, 1, 2, 3, 3]] + 0.01 * np.arange(6)[:, None]] * 2   # two layers, 6 experts
    >>> labels = submoe_labels(ca, keep=4, layers_per_block=2, seed=42)
    >>> [len(set(layer)) for layer in labels]                  # 4 experts per layer on average
    [4, 4]
    >>> [sorted(groups_of(layer)) for layer in labels][0]
    [[0, 1], [2], [3], [4, 5]]

Sub-MoE (Li et al., arXiv 2506.23266) as the official REAP code runs it: CerebrasResearch/reap at
commit 1970473 (``experiments/submoe_v2.sh``: ``--expert-sim characteristic_activation
--cluster-method kmeans --multi-layer 2 --merge-method submoe``; ``src/reap/cluster.py``
`KMeansCostTableV2`, `multi_layer_kmeans_clustering_on_ca`). Only ``submoe_v2.sh`` runs there:
``submoe.sh`` asks for ``online_characteristic_activation_dist`` with k-means, which
``src/reap/main.py`` `cluster` rejects with a ValueError for multi-layer k-means, and the
per-layer k-means path hands `merge` pairwise distances instead of labels.

- **Features**: each expert's characteristic activation (its mean output over *all* tokens,
  routed or not; statistic ``all_output_sum`` / ``tokens``), scaled to unit length (float32).
- **Cost tables** (`kmeans_costs`): for every number of merges m = 1 .. E-1 of a layer,
  ``scipy.cluster.vq.kmeans2(features, E - m, minit="++")`` and its cost, the summed Euclidean
  distance of the experts to their centroids.
- **Paired layers** (`submoe_labels`): consecutive MoE layers in blocks of `layers_per_block` (2)
  share a budget of ``keep * layers`` experts; each merge goes to the layer whose table has the
  lower cost at its next number of merges (the *total* cost at that level, not the increase, as the
  code compares). The layers of a block may so end with different expert counts.
- **Seed**: the code seeds numpy's global generator with 42 (accelerate ``set_seed``) and draws
  every k-means from it in layer order, then m order; here one ``RandomState(seed)`` is drawn
  from in the same order, which gives the same labels.

An empty k-means cluster (kmeans2 keeps its centroid and warns) leaves a layer with fewer experts
than planned, as in the code, whose labels are renumbered the same way. A layer of a block that is
given no merge keeps its experts; the code's `KMeansCostTableV2.return_optimal_merge` fails there
(it reads an attribute ``distances`` the V2 table does not have).

The merge (`reapkit.compress.svd_merge`, the plan's ``combine="svd"``) weights each group's
members by routed frequency, as the code's ``expert_frequency / total_tokens``; the merged expert
takes the slot and router row of the most frequent member (the code's dominant expert). The code
keeps the router and gives every member the merged expert (``reference_router="tied"``); reapkit
saves the smaller model. ``layers_per_block=1`` clusters each layer alone (the same count in every
layer, a stock checkpoint); the default 2 follows ``--multi-layer 2``.
"""

from __future__ import annotations

import warnings

import numpy as np

from reapkit.errors import InvalidInput

__all__ = ["unit_features", "kmeans_costs", "spend_merges", "submoe_labels", "groups_of", "submoe_grouping"]


def unit_features(ca) -> np.ndarray:
    """`ca` [E, H] scaled to unit rows in float32, as the code's ``ca / torch.linalg.norm(ca)``."""
    import torch

    t = torch.as_tensor(np.asarray(ca), dtype=torch.float32)
    return (t / torch.linalg.norm(t, dim=-1, keepdim=True)).numpy()


def kmeans_costs(features: np.ndarray, max_merges: int, rng) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """`(costs, labels)`: for m = 1 .. `max_merges` merges, the k-means cost (``costs[m - 1]``) and labels (``labels[m]``)."""
    from scipy.cluster.vq import kmeans2

    n = len(features)
    costs, labels = np.full(max_merges, np.inf), {}
    for m in range(1, max_merges + 1):
        k = n - m
        if k <= 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "One of the clusters is empty": the code goes on too
            centroids, assigned = kmeans2(features, k=k, minit="++", seed=rng)
        labels[m] = assigned
        costs[m - 1] = float(
            sum(np.linalg.norm(features[assigned == c] - centroids[c], axis=-1).sum() for c in np.unique(assigned))
        )
    return costs, labels


def spend_merges(costs: list[np.ndarray], merges: int) -> list[int]:
    """Merges per layer: each of `merges` goes to the layer whose cost at its next level is lowest (ties: first)."""
    done = [0] * len(costs)
    for _ in range(merges):
        best, best_cost = -1, np.inf
        for i, table in enumerate(costs):
            if done[i] < len(table) and table[done[i]] < best_cost:
                best, best_cost = i, table[done[i]]
        if best < 0:
            break
        done[best] += 1
    return done


def _renumber(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1]


def submoe_labels(characteristic, *, keep: int, layers_per_block: int = 2, seed: int = 42) -> list[np.ndarray]:
    """Cluster labels per layer (contiguous from 0) for `characteristic` [E, H] activations of each MoE layer."""
    if not isinstance(layers_per_block, (int, np.integer)) or layers_per_block < 1:
        raise InvalidInput(f"layers_per_block must be a positive whole number of layers, got {layers_per_block!r}")
    rng = np.random.RandomState(seed)
    out = []
    for start in range(0, len(characteristic), layers_per_block):
        block = [unit_features(ca) for ca in characteristic[start : start + layers_per_block]]
        merges = sum(len(f) for f in block) - keep * len(block)
        if merges <= 0:
            out += [np.arange(len(f)) for f in block]
            continue
        tables = [kmeans_costs(f, len(f) - 1, rng) for f in block]
        spent = spend_merges([costs for costs, _ in tables], merges)
        for f, (_, labels), m in zip(block, tables, spent):
            out.append(_renumber(labels[m]) if m > 0 else np.arange(len(f)))
    return out


def groups_of(labels) -> list[list[int]]:
    """The members of each cluster label, in label order, ascending ids."""
    labels = np.asarray(labels)
    return [[int(e) for e in np.flatnonzero(labels == c)] for c in np.unique(labels)]


def submoe_grouping(inputs) -> list[list[list[int]]]:
    """Sub-MoE's groups of every MoE layer from reapkit's observations (``all_output_sum / tokens``)."""
    characteristic = [
        inputs.stat("all_output_sum", pos) / max(float(inputs.stat("tokens", pos)), 1.0)
        for pos in range(len(inputs.layers))
    ]
    labels = submoe_labels(
        characteristic, keep=inputs.keep, layers_per_block=inputs.options["layers_per_block"], seed=inputs.seed
    )
    return [groups_of(layer) for layer in labels]
