"""Apply a `MergePlan` to a model: average each group's expert tensors, keep the representatives.

    >>> plan = merge_experts(model, obs, method="hc_smoe", keep=8)   # plan and apply: 8 experts per layer
    >>> model.config.num_experts, plan.save("merge_plan.json")
    (8, PosixPath('merge_plan.json'))
    >>> from reapkit.model import load_model
    >>> original, _ = load_model("demo")
    >>> apply_merge(original, MergePlan.load("merge_plan.json")).config.num_experts   # a saved plan, applied later
    8

The plans and their methods are described in `reapkit.select.merge`.
"""

from __future__ import annotations

import torch

from reapkit.compress.prune import check_plan, remove_experts
from reapkit.select.merge import MergePlan, plan_merge

__all__ = ["apply_merge", "merge_experts"]


@torch.no_grad()
def apply_merge(model, plan: MergePlan):
    """Merge `model`'s experts in place as `plan` says; returns the model (now `plan.keep` experts per layer)."""
    pruning = plan.to_pruning_plan()
    layers = check_plan(model, pruning)
    for index in plan.layers:
        tensors = layers[index].expert_tensors(router=False)  # the router keeps the representative's row
        for members, rep, w in zip(plan.groups[index], plan.representatives[index], plan.weights[index]):
            if len(members) == 1:
                continue
            members = torch.tensor(members, dtype=torch.long)
            for tensor in tensors.values():
                weight = torch.tensor(w, dtype=torch.float32, device=tensor.device).view(-1, *[1] * (tensor.dim() - 1))
                merged = (tensor.data[members.to(tensor.device)].float() * weight).sum(0)
                tensor.data[rep] = merged.to(tensor.dtype)
    return remove_experts(model, pruning)


def merge_experts(model, obs, *, method: str, keep: int, seed: int = 0) -> MergePlan:
    """Merge the experts of `model` in place down to `keep` per MoE layer; returns the `MergePlan`.

    `method` is ``"m_smoe"`` or ``"hc_smoe"`` (see the module docstring); `obs` are observations
    of this model before merging.
    """
    plan = plan_merge(model, obs, method=method, keep=keep, seed=seed)
    apply_merge(model, plan)
    return plan
