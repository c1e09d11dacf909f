"""Apply a `MergePlan` to a model: average each group's expert tensors, keep the representatives.

    >>> plan = merge_experts(model, obs, method="hc_smoe", keep=8)   # plan and apply: 8 experts per layer
    >>> model.config.num_experts, plan.save("merge_plan.json")
    (8, PosixPath('merge_plan.json'))
    >>> from reapkit.model import load_model
    >>> original, _ = load_model("demo")
    >>> apply_merge(original, MergePlan.load("merge_plan.json")).config.num_experts   # a saved plan, applied later
    8

    >>> full, _ = load_model("demo")
    >>> tied = apply_merge(full, MergePlan.load("merge_plan.json"), router="tied")   # the REAP code's form
    >>> tied.config.num_experts                  # router unchanged; every member holds its merged expert
    16

The plans and their methods are described in `reapkit.select.merge`. ``router="representative"``
(the default, what is saved) keeps each group's representative and its router row and removes the
other members, so a token that selected two members of a group gets one merged expert, with the
representative's gate only. ``router="tied"`` is how the REAP code evaluates a merge: the router
and expert count stay, every member's slot holds the merged expert, so the gates of a token's
selected members add up on it. With `plan.align` each member's neurons are aligned to the
representative's first (`reapkit.compress.align`; with ``plan.alignment == "ream"`` under REAM's
cost, `reapkit.compress.ream_merge`). With ``plan.combine == "svd"`` (Sub-MoE) each tensor of a
group is merged by one joint SVD (`reapkit.compress.svd_merge`, the plan's ``rank`` and ``split``
options) instead of the weighted average.
"""

from __future__ import annotations

import torch

from reapkit.compress.align import align_group, alignment_permutation
from reapkit.compress.prune import check_plan, remove_experts
from reapkit.compress.ream_merge import ream_permutation, weight_features
from reapkit.compress.svd_merge import svd_merge
from reapkit.errors import InvalidInput
from reapkit.select.merge import MergePlan, plan_merge

__all__ = ["apply_merge", "merge_experts"]


ROUTERS = ("representative", "tied")


@torch.no_grad()
def apply_merge(model, plan: MergePlan, *, router: str | None = None):
    """Merge `model`'s experts in place as `plan` says; returns the model.

    `router`: ``"representative"`` (default: `plan.router`) removes the other members (the model
    keeps `plan.kept_per_layer` experts); ``"tied"`` keeps every expert and router row, each member
    holding its group's merged expert.
    """
    router = plan.router if router is None else router
    if router not in ROUTERS:
        raise InvalidInput(f"unknown router treatment {router!r}; choose one of {', '.join(ROUTERS)}")
    pruning = plan.to_pruning_plan()
    layers = check_plan(model, pruning)
    for index in plan.layers:
        experts = layers[index].experts
        tensors = layers[index].expert_tensors(router=False)  # the router keeps the representative's row
        permutation = _permutation(plan, experts)
        for members, rep, w in zip(plan.groups[index], plan.representatives[index], plan.weights[index]):
            if len(members) == 1:
                continue
            if plan.align:
                align_group(experts, members, rep, permutation)
            for tensor in tensors.values():
                merged = _combined(plan, tensor, members, rep, w)
                for slot in members if router == "tied" else [rep]:
                    tensor.data[slot] = merged
    return model if router == "tied" else remove_experts(model, pruning)


def _permutation(plan: MergePlan, experts):
    """How a member's neurons are aligned to the representative's: weight matching, or REAM's cost."""
    if not plan.align or plan.alignment == "weight_matching":
        return alignment_permutation
    if plan.alignment == "ream":
        features = weight_features(experts)  # once per layer, before any group is merged (as REAM's code)
        return lambda ex, member, rep: ream_permutation(ex, member, rep, features)
    raise ValueError(f"unknown alignment {plan.alignment!r}")


def _combined(plan: MergePlan, tensor: torch.Tensor, members: list[int], rep: int, w: list[float]) -> torch.Tensor:
    """The group's merged slice of `tensor`: the weighted average, or Sub-MoE's joint SVD (representative first)."""
    if plan.combine == "svd":
        order = [rep] + [e for e in members if e != rep]
        weights = [w[members.index(e)] for e in order]
        options = plan.options
        return svd_merge(
            [tensor.data[e] for e in order], weights, rank=options.get("rank"), split=options.get("split", "blocks")
        )
    if plan.combine != "average":
        raise ValueError(f"unknown combine {plan.combine!r}")
    index = torch.tensor(members, dtype=torch.long, device=tensor.device)
    weight = torch.tensor(w, dtype=torch.float32, device=tensor.device).view(-1, *[1] * (tensor.dim() - 1))
    return (tensor.data[index].float() * weight).sum(0).to(tensor.dtype)


def merge_experts(
    model,
    obs,
    *,
    method: str,
    keep: int,
    seed: int = 0,
    rule: str | None = None,
    align: bool | None = None,
    options: dict | None = None,
) -> MergePlan:
    """Merge the experts of `model` in place down to `keep` per MoE layer; returns the `MergePlan`.

    `method` is a registered merge method (`reapkit.select.merge_methods`), `rule`, `align` and
    `options` as in `plan_merge`; `obs` are observations of this model before merging.
    """
    plan = plan_merge(model, obs, method=method, keep=keep, seed=seed, rule=rule, align=align, options=options)
    apply_merge(model, plan)
    return plan
