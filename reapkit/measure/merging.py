"""How far merging moves experts: weight distances before and after alignment, merged outputs against the members'.

    >>> from reapkit.select.merge import plan_merge
    >>> merge_plan = plan_merge(model, obs, method="m_smoe_faithful", keep=8)
    >>> distances = alignment_distances(model, merge_plan, layers=[3])      # model unchanged
    >>> list(distances.columns)
    ['layer', 'group', 'member', 'dominant', 'before', 'after']
    >>> bool((distances.after <= distances.before + 1e-3).all())
    True
    >>> frame = merge_fidelity(model, merge_plan, batches[:4], layers=[3])
    >>> sorted(frame.expert.unique())                       # each member against the merged expert and its representative
    ['merged', 'representative']
    >>> frame.columns.tolist()
    ['layer', 'group', 'member', 'representative', 'expert', 'tokens', 'rel_error', 'cosine']

`alignment_distances`: for every member of every group, its summed squared weight distance to the
group's representative (`reapkit.compress.align`), before and after its neurons are aligned.

`merge_fidelity`: on the calibration tokens the original model routes to each member, the
member's own output f_m(x) against the merged expert's output (``expert="merged"``, the plan
applied as it says, aligned or not) and against the representative's unmerged output
(``expert="representative"``: what removing the member without merging gives it): the mean over
those tokens of ||g(x) - f_m(x)|| / ||f_m(x)|| (`rel_error`) and of cos(g(x), f_m(x)) (`cosine`).
Representatives themselves are compared too (their representative row is 0 error).
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

from reapkit.compress.align import group_distances
from reapkit.compress.merge import apply_merge
from reapkit.model.layer import moe_layers

__all__ = ["alignment_distances", "merge_fidelity"]


def _positions(model, plan, layers):
    found = {layer.index: pos for pos, layer in enumerate(moe_layers(model))}
    return {layer: found[layer] for layer in (plan.layers if layers is None else layers)}


def alignment_distances(model, plan, layers=None) -> pd.DataFrame:
    """Per member of each group of `plan` (in `layers`, default all): squared weight distance to the
    representative before and after alignment; `model` (unmerged) is not changed."""
    frames = []
    all_layers = moe_layers(model)
    for layer, pos in _positions(model, plan, layers).items():
        experts = all_layers[pos].experts
        for group, (members, rep) in enumerate(zip(plan.groups[layer], plan.representatives[layer])):
            if len(members) > 1:
                frames.append(group_distances(experts, members, rep).assign(layer=layer, group=group))
    columns = ["layer", "group", "member", "dominant", "before", "after"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


@torch.no_grad()
def merge_fidelity(model, plan, batches, layers=None) -> pd.DataFrame:
    """Per member: its output against the merged expert's and the representative's on the tokens routed
    to it (see the module docstring); `model` (unmerged) is not changed."""
    positions = _positions(model, plan, layers)
    tied = apply_merge(copy.deepcopy(model), plan, router="tied")  # slot m holds m's merged expert
    originals, merged = moe_layers(model), moe_layers(tied)
    seen = {pos: [] for pos in positions.values()}
    hooks = [
        originals[pos].experts.register_forward_hook(lambda m, a, o, pos=pos: seen[pos].append((a[0], a[1])))
        for pos in seen
    ]
    try:
        for b in batches:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for layer, pos in positions.items():
        x = torch.cat([h for h, _ in seen[pos]])
        chosen = torch.cat([i for _, i in seen[pos]])
        real = torch.cat([b.attention_mask.reshape(-1).bool() for b in batches])
        x, chosen = x[real], chosen[real]
        own, new = originals[pos].experts, merged[pos].experts
        for group, (members, rep) in enumerate(zip(plan.groups[layer], plan.representatives[layer])):
            for member in members:
                tokens = x[(chosen == member).any(dim=1)]
                if len(tokens) == 0:
                    continue
                ones = torch.ones(len(tokens), 1, dtype=tokens.dtype, device=tokens.device)
                target = own(tokens, torch.full((len(tokens), 1), member, device=tokens.device), ones).float()
                for name, module, slot in (("merged", new, member), ("representative", own, rep)):
                    out = module(tokens, torch.full((len(tokens), 1), slot, device=tokens.device), ones).float()
                    error = (out - target).norm(dim=-1) / target.norm(dim=-1).clamp_min(1e-12)
                    cosine = torch.nn.functional.cosine_similarity(out, target, dim=-1)
                    rows.append(
                        dict(
                            layer=layer,
                            group=group,
                            member=member,
                            representative=rep,
                            expert=name,
                            tokens=len(tokens),
                            rel_error=float(error.mean()),
                            cosine=float(cosine.mean()),
                        )
                    )
    return pd.DataFrame(
        rows, columns=["layer", "group", "member", "representative", "expert", "tokens", "rel_error", "cosine"]
    )
