"""REAM grouping: REAP's kept experts as centroids, each filled greedily with its nearest unassigned experts.

    >>> saliency = np.array([0.9, 0.1, 0.5, 0.2])
    >>> d = np.array([[0, .1, .6, .3], [.1, 0, .5, .4], [.6, .5, 0, .2], [.3, .4, .2, 0]])
    >>> ream_groups(saliency, d, keep=2, group_size=2)     # centroid first, then its members
    [[0, 1], [2, 3]]
    >>> ream_groups(saliency, d, keep=2, group_size=16)    # the most salient centroid fills first
    [[0, 1, 3], [2]]

REAM (Router-weighted Expert Activation Merging, arXiv 2604.04356), after the authors' code
SamsungSAILMontreal/ream at commit 84a3030716a0059589e9d10e2ea049e32b76cfa6 (``ream/ream.py``
`pseudo_group`, ``ream/merger.py`` `Merger.fit`), with its defaults (``grouping="ream"``,
``saliency="reap"``, ``use_gate_output=True``, ``gated_sim=True``, ``group_size=16``):

- **Centroids**: the `keep` experts of highest REAP saliency in the layer (those REAP pruning
  keeps; ties to the higher id, as the code's reversed ``argsort`` does).
- **Distance** (`ream_distances`): ``d = 1 - (s_out + s_gate) / 2`` where ``s_out = (cos(o_i, o_j)
  + 1) / 2`` with ``o_j`` the expert's mean *gated* output over all tokens (every expert run on
  every token, its output multiplied by the router probability p_j(t); statistic
  ``prob_output_sum``), and ``s_gate = 1 - D_ij / max D`` with ``D`` the Euclidean distance
  between the experts' unit-normalised router-logit columns over all tokens (computed exactly
  from the router-logit Gram matrix, statistic ``logit_gram``). The diagonal is 0.
- **Grouping** (`ream_groups`): centroids in descending saliency each take the nearest experts
  not yet assigned (other centroids are already assigned) until the group holds `group_size`
  experts (REAM's C, 16 by default); it stops once every expert is assigned. The code's own check
  (``k < n // C``) lets through targets that leave experts unassigned (its later ``assert``
  fails); here ``keep * group_size >= n`` is required, the exact condition.
- **Merge weights**: the members' REAP saliencies, normalised; a saliency of 0 is replaced by
  ``min(0.5, smallest positive saliency)`` first, as the code does.

Where this differs from the code, and why: the code's saliency is computed from outputs already
multiplied by the softmax probability (``gated_sim``) and again by the top-k probability, i.e.
``mean p^2 ||f||`` (p the softmax probability, not renormalised over the top k); here the
saliency is reapkit's REAP criterion (``mean g ||f||``), as this workbench defines REAP. On the demo
model (scripts/reference_ream.py) the two pick 27 of the same 32 centroids (keep 8 of 16, 4 layers);
given the same saliency, the groups are identical (tests/unit/test_ream.py). The code averages per-batch means and counts padding tokens; here sums run
over the real tokens. The code merges layer by layer, re-running the calibration data through each
merged layer before observing the next (``sequential=True``); here every layer is grouped from one
observation of the unmerged model.
"""

from __future__ import annotations

import numpy as np

from reapkit.errors import InvalidInput
from reapkit.select.grouping import per_layer

__all__ = ["ream_distances", "ream_groups", "ream_weights", "check_group_size", "raise_zeros", "ream_grouping"]

EPS = 1e-8  # the code's normalize_rows and cosine epsilon


def _cosine(a: np.ndarray) -> np.ndarray:
    unit = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), EPS)
    return unit @ unit.T


def _column_distances(gram: np.ndarray) -> np.ndarray:
    """Euclidean distances between the unit-normalised columns whose Gram matrix is `gram` (norm + eps, as the code)."""
    scale = 1.0 / (np.sqrt(np.maximum(np.diag(gram), 0.0)) + EPS)
    unit_gram = gram * scale[:, None] * scale[None, :]
    sq = np.diag(unit_gram)[:, None] + np.diag(unit_gram)[None, :] - 2 * unit_gram
    return np.sqrt(np.maximum(sq, 0.0))


def ream_distances(gated_outputs: np.ndarray, logit_gram: np.ndarray | None = None) -> np.ndarray:
    """REAM's expert distances [E, E] (float32, as the code keeps them) from the statistics of one layer.

    `gated_outputs` [E, H]: sum (or mean) over all tokens of p_j(t) f_j(t); `logit_gram` [E, E]:
    sum over all tokens of l(t) l(t)^T of the router logits (None: output similarity alone, the
    code's ``use_gate_output=False``).
    """
    similarity = (_cosine(np.asarray(gated_outputs, dtype=np.float64)) + 1) / 2
    if logit_gram is not None:
        gate_distance = _column_distances(np.asarray(logit_gram, dtype=np.float64))
        top = gate_distance.max()
        similarity = (similarity + (1 - gate_distance / top if top > 0 else np.ones_like(gate_distance))) / 2
    d = (1 - similarity).astype(np.float32)
    np.fill_diagonal(d, 0)
    return d


def check_group_size(num_experts: int, keep: int, group_size: int, layer=None) -> None:
    """Refuse a REAM target the greedy grouping cannot reach: `keep` groups of at most `group_size` experts."""
    if not isinstance(group_size, (int, np.integer)) or isinstance(group_size, bool) or group_size < 1:
        raise InvalidInput(f"REAM's group size must be a positive whole number of experts, got {group_size!r}")
    if keep * group_size < num_experts:
        where = f"layer {layer}: " if layer is not None else ""
        raise InvalidInput(
            f"{where}REAM cannot merge {num_experts} experts into {keep} groups of at most {group_size} "
            f"(group_size); choose group_size of at least {-(-num_experts // keep)} or keep of at least "
            f"{-(-num_experts // group_size)}"
        )


def ream_groups(saliency, distances, *, keep: int, group_size: int = 16) -> list[list[int]]:
    """REAM's groups of one layer: one per centroid, in descending centroid saliency, centroid first.

    Members after the centroid are in ascending id, as the code orders them.
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    n = len(saliency)
    check_group_size(n, keep, group_size)
    centroids = np.argsort(saliency, kind="stable")[::-1][:keep]
    label = np.full(n, -1)
    label[centroids] = np.arange(keep)
    for centroid in centroids:
        group = [centroid]
        for e in np.argsort(distances[centroid], kind="stable"):
            if len(group) >= group_size:
                break
            if e != centroid and label[e] == -1:
                group.append(e)
        label[group] = label[centroid]
        if (label >= 0).all():
            break
    return [[int(c)] + [int(e) for e in np.flatnonzero(label == i) if e != c] for i, c in enumerate(centroids)]


def raise_zeros(saliency) -> np.ndarray:
    """`saliency` with each 0 raised to min(0.5, the smallest positive one), as REAM's `Merger.fit` does."""
    saliency = np.asarray(saliency, dtype=np.float64)
    positive = saliency[saliency > 0]
    return np.where(saliency > 0, saliency, min(0.5, positive.min()) if len(positive) else 1.0)


def ream_weights(saliency, members) -> list[float]:
    """The merge weights of `members`: their saliencies (zeros raised, `raise_zeros`), normalised."""
    w = raise_zeros(saliency)[list(members)]
    return [float(v) for v in w / w.sum()]


@per_layer
def ream_grouping(inputs, pos, ids, keep):
    """REAM's groups of one layer's experts `ids` (local indices), from reapkit's observations."""
    counts = inputs.stat("count", pos)[ids]
    saliency = raise_zeros(inputs.stat("reap_sum", pos)[ids] / np.maximum(counts, 1))
    distances = ream_distances(
        inputs.stat("prob_output_sum", pos)[ids], inputs.stat("router_gram", pos)[np.ix_(ids, ids)]
    )
    size = inputs.options["group_size"]
    check_group_size(len(ids), keep, size, layer=inputs.layers[pos])
    return ream_groups(saliency, distances, keep=keep, group_size=size)
