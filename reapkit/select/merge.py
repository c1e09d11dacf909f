"""Merge plans: which experts of each MoE layer are averaged into one, by a registered merge method.

    >>> plan = plan_merge(model, obs, method="hc_smoe", keep=8)     # model unchanged
    >>> plan.groups[3][0], plan.representatives[3][0]                # original ids merged into new expert 0
    ([0, 1, 2, 3, 4, 6, 8, 9, 14], 0)
    >>> plan.save("merge_plan.json")
    PosixPath('merge_plan.json')
    >>> MergePlan.load("merge_plan.json") == plan
    True
    >>> faithful = plan_merge(model, obs, method="m_smoe_faithful", keep=8)   # per-layer counts differ
    >>> faithful.kept_per_layer, faithful.rule, faithful.align, faithful.router
    ({0: 9, 1: 7, 2: 8, 3: 8}, 'frequency', True, 'representative')

`reapkit.compress.merge.apply_merge` applies a plan to a model. The methods (``m_smoe``,
``hc_smoe``: simplified baselines; ``hc_smoe_faithful``, ``m_smoe_faithful``: as the REAP code runs
them) and merge rules live in the registry `reapkit.select.merge_methods`, where a researcher
registers their own; their groupings are in `reapkit.select.grouping`.

A uniform method reduces every MoE layer to `keep` experts, the same count as the pruning it is
compared with; a non-uniform one (``m_smoe_faithful``) keeps `keep` x layers experts in all, a
different number per layer. The plan is data, saved as JSON like a `PruningPlan`.

Within a group the expert tensors (every parameter of the fused experts module with a leading
expert axis: ``gate_up_proj``, ``down_proj`` and, for gpt_oss, their biases) are averaged with the
weights of the plan's merge `rule` (``frequency``: routed-token counts; ``average``; ``reap``:
REAP scores), after aligning each member's neurons to the representative's when `align`.

**Router rows.** Each group has a representative: its most frequent member (ties: lower id), for
M-SMoE its dominant expert. The merged expert takes the representative's slot, so the router
keeps the representative's row, router bias entry (gpt_oss) and selection-only correction bias
(deepseek / glm / minimax / ernie); the other members' router rows are dropped (`router` =
``"representative"``). The merged model is then built by `reapkit.compress.prune.remove_experts`
with a `PruningPlan` keeping the representatives, so it is a normal smaller model of the same
class that `save_pretrained` writes and stock `from_pretrained` loads (non-uniform plans: see
`reapkit.compress.nonuniform`). The REAP code instead leaves the router unchanged and gives every
member a copy of the merged expert (``"tied"``); `apply_merge(..., router="tied")` builds that
form for evaluation. With group-limited routing (`n_group` > 1) experts are merged only within
their routing group, `keep / n_group` per group, so the groups stay intact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reapkit.atomic import atomic_write_text
from reapkit.errors import InvalidInput
from reapkit.select.merge_methods import MERGE_METHODS, RULES, MergeInputs, check_rule, merge_method
from reapkit.select.plan import PruningPlan, read_document

__all__ = ["MergePlan", "METHODS", "plan_merge"]

FORMAT = "reapkit-merge-plan/1"
#: the registered merge methods by name (`reapkit.select.merge_methods.MERGE_METHODS`)
METHODS = MERGE_METHODS


@dataclass
class MergePlan:
    """Per decoder layer: `groups[layer][i]` original expert ids merged into new expert i.

    `representatives[layer][i]` is the member whose slot (and router row) the merged expert takes,
    ascending in i; `weights[layer][i]` are the averaging weights of the members of group i (sum 1).
    """

    groups: dict[int, list[list[int]]]
    representatives: dict[int, list[int]]
    weights: dict[int, list[list[float]]]
    num_experts: dict[int, int]  # experts per layer before merging
    method: str
    keep: int  # experts per layer; for a non-uniform method, the mean (keep x layers in all)
    seed: int = 0
    provenance: dict = field(default_factory=dict)
    rule: str = "frequency"  # how `weights` were made (reapkit.select.merge_methods.RULES)
    align: bool = False  # members' neurons aligned to the representative before averaging
    router: str = "representative"  # the saved form keeps each representative's router row
    combine: str = "average"  # "average" (weights above) or "svd" (Sub-MoE: reapkit.compress.svd_merge)
    alignment: str = "weight_matching"  # with `align`: the neuron cost, "weight_matching" or "ream"
    options: dict = field(default_factory=dict)  # the method's own options (REAM's group_size, Sub-MoE's rank...)

    @property
    def kept_per_layer(self) -> dict[int, int]:
        """Experts each layer has after merging."""
        return {layer: len(self.groups[layer]) for layer in self.layers}

    @property
    def layers(self) -> list[int]:
        return sorted(self.groups)

    def to_pruning_plan(self) -> PruningPlan:
        """The `PruningPlan` that keeps the representatives (what `apply_merge` slices with)."""
        kept = {layer: list(self.representatives[layer]) for layer in self.layers}
        merge = {"method": self.method, "rule": self.rule, "align": self.align, "router": self.router}
        provenance = {**self.provenance, "merge": merge}
        return PruningPlan(kept, dict(self.num_experts), f"merge:{self.method}", None, {}, provenance)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("groups", "representatives", "weights", "num_experts"):
            data[key] = {str(k): v for k, v in getattr(self, key).items()}
        return {"format": FORMAT, **data}

    def save(self, path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path) -> MergePlan:
        data = read_document(path, FORMAT, "reapkit merge plan", "MergePlan.save")
        for key in ("groups", "representatives", "weights", "num_experts"):
            data[key] = {int(k): v for k, v in data[key].items()}
        return cls(**data)


def _check_method(method: str) -> None:
    merge_method(method)


def _check_sizes(layer: int, total: int, keep: int, top_k: int, n_group: int, uniform: bool) -> None:
    if keep > total or keep < top_k:
        raise InvalidInput(
            f"cannot merge layer {layer} from {total} to {keep} experts: the target must be at most the current "
            f"{total} experts and at least top-k = {top_k} (experts each token is routed to); choose keep in [{top_k}, {total}]"
        )
    if n_group > 1 and not uniform:
        raise InvalidInput(
            f"layer {layer} routes in {n_group} expert groups (n_group), which a method that keeps different counts "
            "per layer would break; choose a uniform merge method (e.g. hc_smoe_faithful)"
        )
    if n_group > 1 and (keep % n_group or total % n_group or keep // n_group < 2):
        raise InvalidInput(
            f"layer {layer} routes in {n_group} expert groups (n_group), so merging keeps keep / n_group experts per "
            f"group, which must be a whole number of at least 2; {keep} is not valid; choose a multiple of {n_group} "
            f"of at least {2 * n_group}"
        )


def _options(spec, options) -> dict:
    """The method's options: its defaults, updated with `options`; a name it does not have is refused."""
    defaults = dict(spec.options)
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        offered = ", ".join(f"{k} (default {v!r})" for k, v in defaults.items()) or "none"
        raise InvalidInput(f"merge method {spec.name!r} has no option {unknown[0]!r}; its options: {offered}")
    return {**defaults, **dict(options or {})}


def _representative(spec, inputs, pos: int, members: list[int]) -> int:
    """The member whose slot the merged expert takes: most frequent (ties: lower id) or, for "reap", the
    highest REAP score (ties: higher id, as REAM's reversed argsort picks its centroids)."""
    counts = inputs.stat("count", pos)
    if spec.representative == "reap":
        scores = inputs.stat("reap_sum", pos) / np.maximum(counts, 1)
        return max(members, key=lambda e: (scores[e], e))
    return min(members, key=lambda e: (-counts[e], e))


def plan_merge(
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
    """The `MergePlan` of `method` reducing each MoE layer of `model` to `keep` experts (model unchanged).

    `obs` must be observations of this (unmerged) model. `rule` (default: the method's) says how a
    group's members are weighted; `align` (default: the method's) whether their neurons are aligned
    to the representative's before averaging. `options` sets the method's own options
    (`MergeMethod.options`, e.g. ``{"group_size": 8}`` for ``ream``). `seed` draws Sub-MoE's k-means
    and is recorded; the other methods are deterministic.
    """
    spec = merge_method(method)
    options = _options(spec, options)
    rule = check_rule(spec, rule)
    needs = tuple(dict.fromkeys(("count", *spec.statistics, *RULES[rule].statistics)))
    obs.require(*needs, purpose=f"merging with {method!r}")
    obs.check_model(model)
    if not isinstance(keep, (int, np.integer)) or isinstance(keep, bool):
        raise InvalidInput(f"keep must be an integer number of experts per layer, got {keep!r}")
    top_k, n_group = obs.top_k, int(obs.meta.get("n_group", 1) or 1)
    for pos, layer in enumerate(obs.layers):
        _check_sizes(layer, obs.num_experts[pos], int(keep), top_k, n_group, spec.uniform)
    inputs = MergeInputs(obs, model, int(keep), needs, options, seed)
    found = spec.group(inputs)
    groups, reps, weights, num_experts = {}, {}, {}, {}
    for pos, layer in enumerate(obs.layers):
        total, layer_groups = obs.num_experts[pos], [sorted(int(e) for e in g) for g in found[pos]]
        if sorted(e for g in layer_groups for e in g) != list(range(total)):
            raise RuntimeError(f"merge method {method!r} did not group each of layer {layer}'s {total} experts once")
        if len(layer_groups) < top_k:
            raise InvalidInput(
                f"{method} leaves layer {layer} with {len(layer_groups)} experts, fewer than top-k = {top_k}; "
                f"choose a larger keep than {keep}"
            )
        if spec.uniform and len(layer_groups) != keep:
            raise RuntimeError(f"merge method {method!r} made {len(layer_groups)} groups in layer {layer}, not {keep}")
        rep_of = [_representative(spec, inputs, pos, members) for members in layer_groups]
        order = np.argsort(rep_of)
        groups[layer] = [layer_groups[i] for i in order]
        reps[layer] = [int(rep_of[i]) for i in order]
        weights[layer] = [inputs.weights(rule, pos, members) for members in groups[layer]]
        num_experts[layer] = total
    align = spec.align if align is None else bool(align)
    provenance = obs.provenance(
        merge_method=spec.description, reference=spec.reference, reference_router=spec.reference_router
    )
    return MergePlan(
        groups,
        reps,
        weights,
        num_experts,
        method,
        int(keep),
        seed,
        provenance,
        rule,
        align,
        combine=spec.combine,
        alignment=spec.alignment,
        options=options,
    )
