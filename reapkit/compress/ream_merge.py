"""REAM's merge of a group: align each member's neurons to the centroid's (Hungarian), then a saliency-weighted average.

    >>> from reapkit.model.layer import moe_layers
    >>> experts = moe_layers(model)[0].experts
    >>> perm = neuron_permutation(experts, 0, 0, weight_features(experts))      # an expert aligns to itself
    >>> bool((perm == np.arange(len(perm))).all())
    True

After REAM's code (SamsungSAILMontreal/ream at commit 84a3030716a0059589e9d10e2ea049e32b76cfa6,
``ream/merger.py`` `Merger._merge`, ``ream/weight_utils.py``):

- **Neuron features** (`weight_features`): for each expert and intermediate neuron, the vector
  ``[gate row | up row | down column]`` (``experts_weight_matrix``), scaled to unit length; the
  layer's vectors of all experts together are reduced by PCA to 64 dimensions
  (``torch.pca_lowrank`` after ``torch.manual_seed(0)``, projections scaled by the singular values,
  ``pca_reduce``) and scaled to unit length again.
- **Alignment** (`neuron_permutation`): ``scipy.optimize.linear_sum_assignment`` on the Euclidean
  distances between the centroid's and the member's neuron features; the member's neurons are
  reordered so that neuron i faces the centroid's neuron i (gate and up rows, down columns, and
  gate/up biases where the experts have them).
- **Average**: the centroid and the aligned members, weighted by their normalised saliencies
  (`reapkit.select.ream.ream_weights`), centroid first, in float32.

Where this differs from the code: its default cost (``merging="logits+weights"``) adds to the
weight term the distances between the neurons' activations on up to 32,768 calibration tokens
sampled at random; those per-token samples are not a statistic observations keep, so the cost here
is the weight term alone (the code's ``merging="weights"``). The layouts of transformers' fused
experts (transposed, gate and up interleaved, no gate) are read from the experts module's own
``is_transposed``, ``is_concatenated`` and ``has_gate`` attributes.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["weight_features", "neuron_permutation", "permuted", "ream_merge_group", "PCA_DIM"]

PCA_DIM = 64  # the code's pca_dim
EPS = 1e-8


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.linalg.norm(x, dim=-1, keepdim=True) + EPS)


def _as_out_in(experts, tensor: torch.Tensor) -> torch.Tensor:
    """[E, out, in] of a stored projection (transformers stores some transposed)."""
    return tensor.transpose(1, 2) if getattr(experts, "is_transposed", False) else tensor


def _gate_up_rows(experts, intermediate: int) -> list[torch.Tensor]:
    """Row indices of gate and up in the fused [2I, ...] projection (halves, or interleaved)."""
    ids = torch.arange(intermediate)
    if getattr(experts, "is_concatenated", True):
        return [ids, ids + intermediate]
    return [2 * ids, 2 * ids + 1]


def _intermediate(experts) -> int:
    return _as_out_in(experts, experts.down_proj).shape[2]


def weight_features(experts) -> torch.Tensor:
    """[E, I, d] unit neuron features of a layer's experts, d = min(64, ...) after the code's PCA."""
    down = _as_out_in(experts, experts.down_proj.detach()).float().transpose(1, 2)  # [E, I, H]
    intermediate = down.shape[1]
    if getattr(experts, "has_gate", True):
        up = _as_out_in(experts, experts.gate_up_proj.detach()).float()
        parts = [up[:, rows] for rows in _gate_up_rows(experts, intermediate)]
    else:
        parts = [_as_out_in(experts, experts.up_proj.detach()).float()]
    matrix = _unit(torch.cat([*parts, down], dim=2))  # [E, I, 3H]
    n = matrix.shape[0]
    x = matrix.flatten(0, 1)
    x = x - x.mean(dim=-2, keepdim=True)
    r = min(PCA_DIM, *x.shape)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        _, s, v = torch.pca_lowrank(x, q=r)
    finally:
        torch.random.set_rng_state(state)
    projected = x @ (v[:, :r] * s[:r].reshape(1, r))
    return _unit(projected.reshape(n, -1, r))


def neuron_permutation(experts, centroid: int, member: int, features: torch.Tensor) -> np.ndarray:
    """The order of `member`'s neurons that faces `centroid`'s (Hungarian on feature distances)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(features[centroid], features[member]).numpy()
    return linear_sum_assignment(cost)[1]


def permuted(experts, name: str, tensor: torch.Tensor, perm) -> torch.Tensor:
    """One expert's slice `tensor` of the experts' tensor `name`, its intermediate neurons reordered by `perm`."""
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    intermediate = len(perm)
    transposed = getattr(experts, "is_transposed", False)
    bias = name.endswith("_bias")
    if name.startswith("down_proj"):
        if bias:
            return tensor  # [H]: no neuron axis
        return tensor[perm] if transposed else tensor[:, perm]
    if name.startswith("gate_up_proj"):
        index = torch.empty(2 * intermediate, dtype=torch.long)
        for rows in _gate_up_rows(experts, intermediate):
            index[rows] = rows[perm]
    else:  # up_proj of experts without a gate
        index = perm
    if bias or not transposed:
        return tensor[index]
    return tensor[:, index]


@torch.no_grad()
def ream_merge_group(experts, members, weights, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`{tensor name: merged slice}` of the group `members` (centroid first) with `weights` (same order)."""
    features = weight_features(experts) if features is None else features
    centroid = members[0]
    perms = {e: neuron_permutation(experts, centroid, e, features) for e in members[1:]}
    out = {}
    for name, tensor in [*experts.named_parameters(recurse=False), *experts.named_buffers(recurse=False)]:
        if tensor.dim() == 0 or tensor.shape[0] != experts.num_experts:
            continue
        merged = tensor.data[centroid].float() * weights[0]
        for e, w in zip(members[1:], weights[1:]):
            merged = merged + w * permuted(experts, name, tensor.data[e], perms[e]).float()
        out[name] = merged.to(tensor.dtype)
    return out
