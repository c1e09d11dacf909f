"""Align an expert's FFN neurons to another's (weight matching), so averaging them averages like with like.

    >>> from reapkit.model.layer import moe_layers
    >>> experts = moe_layers(model)[0].experts
    >>> perm = alignment_permutation(experts, member=5, dominant=2)   # member neuron perm[j] <-> dominant neuron j
    >>> perm.shape, sorted(perm.tolist()) == list(range(len(perm)))
    (torch.Size([128]), True)
    >>> distances = group_distances(experts, [2, 5, 7], dominant=2)    # squared weight distances to the dominant
    >>> list(distances.columns), bool((distances.after <= distances.before).all())
    (['member', 'dominant', 'before', 'after'], True)

An FFN expert computes down(act(gate x) * up x); permuting its intermediate neurons (rows of gate
and up, columns of down, entries of their biases) leaves its function unchanged. M-SMoE aligns each
member of a group to the group's dominant expert before averaging: the permutation is the
Hungarian assignment (scipy `linear_sum_assignment`) minimising the summed squared Euclidean
distances between the neurons' gate rows, up rows and down columns, with the cost matrix cast
to float16 first, as in the REAP code (CerebrasResearch/reap@1970473c51ca3caeb98c10392f15b3a08a672974,
`src/reap/permute.py` `WeightMatchingPermuter._permute`, lines ~124-175: cost
`cdist(member, dominant) ** 2` summed over up, gate and down, `permutation = col_ind.argsort()`).
Biases (gpt_oss) are moved with their neurons but, as in the reference, not part of the cost.

Works on transformers' fused experts modules in every layout they declare (`is_transposed`,
`is_concatenated` gate/up halves or interleaved, `has_gate`, `has_bias`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["align_group", "alignment_permutation", "group_distances", "neuron_rows", "permute_neurons"]


def _up(experts):
    return experts.gate_up_proj if experts.has_gate else experts.up_proj


def _up_bias(experts):
    if not experts.has_bias:
        return None
    return experts.gate_up_proj_bias if experts.has_gate else experts.up_proj_bias


def _split(rows: torch.Tensor, experts) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) neuron-major halves of the fused up projection's neuron-major rows."""
    if getattr(experts, "is_concatenated", True):
        return rows.chunk(2, dim=0)
    return rows[0::2], rows[1::2]


def neuron_rows(experts, e: int) -> dict[str, torch.Tensor]:
    """Expert `e`'s weights with one row per intermediate neuron: ``gate`` and ``up`` [I, H] (gate only
    with `has_gate`), ``down`` [I, H] (the down projection's columns)."""
    up = _up(experts).data[e]
    up = up.T if experts.is_transposed else up  # [out, H]
    down = experts.down_proj.data[e]
    down = down if experts.is_transposed else down.T  # [I, H]
    if not experts.has_gate:
        return {"up": up, "down": down}
    gate, up = _split(up, experts)
    return {"gate": gate, "up": up, "down": down}


def weight_matching_cost(member: dict[str, torch.Tensor], dominant: dict[str, torch.Tensor]) -> torch.Tensor:
    """[I, I]: entry (i, j) the squared distance of member neuron i to dominant neuron j, summed over projections."""
    return sum(torch.cdist(member[k].float(), dominant[k].float(), p=2) ** 2 for k in member)


def alignment_permutation(experts, member: int, dominant: int) -> torch.Tensor:
    """The permutation `perm` [I] with member neuron ``perm[j]`` matched to dominant neuron j."""
    from scipy.optimize import linear_sum_assignment

    cost = weight_matching_cost(neuron_rows(experts, member), neuron_rows(experts, dominant))
    _, col_ind = linear_sum_assignment(cost.cpu().to(torch.float16).numpy())
    return torch.as_tensor(np.argsort(col_ind, kind="stable"), dtype=torch.long)


def _up_index(perm: torch.Tensor, experts) -> torch.Tensor:
    """`perm` over neurons, as an index over the fused up projection's outputs."""
    if not experts.has_gate:
        return perm
    size = len(perm)
    if getattr(experts, "is_concatenated", True):
        return torch.cat((perm, perm + size))
    return torch.stack((2 * perm, 2 * perm + 1), dim=1).reshape(-1)


@torch.no_grad()
def permute_neurons(experts, e: int, perm: torch.Tensor) -> None:
    """Reorder expert `e`'s intermediate neurons in place: new neuron j is old neuron ``perm[j]``."""
    up, bias, down = _up(experts), _up_bias(experts), experts.down_proj
    index = _up_index(perm, experts).to(up.device)
    up.data[e] = up.data[e].index_select(1 if experts.is_transposed else 0, index)
    if bias is not None:
        bias.data[e] = bias.data[e].index_select(0, index.to(bias.device))
    down.data[e] = down.data[e].index_select(0 if experts.is_transposed else 1, perm.to(down.device))


def align_group(experts, members, dominant: int, permutation=alignment_permutation) -> dict[int, torch.Tensor]:
    """Align every member of a group but `dominant` to it, in place; returns `{member: permutation}`.

    `permutation(experts, member, dominant)` finds each member's permutation (default: weight
    matching; REAM's cost: `reapkit.compress.ream_merge.ream_permutation`)."""
    done = {}
    for e in members:
        if e != dominant:
            done[e] = permutation(experts, e, dominant)
            permute_neurons(experts, e, done[e])
    return done


def group_distances(experts, members, dominant: int):
    """Each member's summed squared weight distance to `dominant` before and after alignment, as a
    frame (member, dominant, before, after); the experts are not changed."""
    import pandas as pd

    rows = []
    target = neuron_rows(experts, dominant)
    for e in members:
        if e == dominant:
            continue
        cost = weight_matching_cost(neuron_rows(experts, e), target)
        perm = alignment_permutation(experts, e, dominant)
        after = float(cost[perm, torch.arange(len(perm))].sum())
        rows.append({"member": e, "dominant": dominant, "before": float(cost.diagonal().sum()), "after": after})
    return pd.DataFrame(rows, columns=["member", "dominant", "before", "after"])
