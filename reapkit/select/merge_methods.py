"""The registry of merge methods and merge rules: each a name and a small declared object.

    >>> sorted(MERGE_METHODS)
    ['hc_smoe', 'hc_smoe_faithful', 'm_smoe', 'm_smoe_faithful', 'ream', 'submoe']
    >>> merge_method("hc_smoe_faithful").statistics
    ('count', 'tokens', 'all_output_sum')
    >>> merge_method("m_smoe_faithful").align, merge_method("m_smoe_faithful").uniform
    (True, False)
    >>> sorted(RULES)
    ['average', 'frequency', 'ream', 'reap']
    >>> merge_method("ream").options, merge_method("submoe").combine
    ((('group_size', 16),), 'svd')

**Registering a method.** A researcher declares a `MergeMethod` and registers it; `plan_merge`
(`reapkit.select.merge`) and ``reapkit merge --method NAME`` then offer it::

    from reapkit.select.grouping import per_layer, linkage_groups
    from reapkit.select.merge_methods import MergeMethod, register_merge_method

    @per_layer                                    # one layer's experts `ids` -> `keep` groups
    def by_frequency(inputs, pos, ids, keep):     # (local indices into ids)
        counts = inputs.stat("count", pos)[ids]
        return linkage_groups(counts[:, None], keep)

    register_merge_method(MergeMethod(
        name="by_frequency", description="experts of similar frequency merged",
        reference="none", statistics=("count",), group=by_frequency,
    ))

`group(inputs)` receives the `MergeInputs` of the plan (the pooled statistics the method declared,
`keep`, the layers, `router_rows(pos)` for the router weights) and returns, for each MoE layer
position, groups of original expert ids covering every expert of the layer (any number of groups
per layer when `uniform=False`, else exactly `keep`). The group's representative is its most
frequent member; its neurons are what members are aligned to (`align=True`,
`reapkit.compress.align`). `rule` is the default merge rule, `rules` those a user may choose
(``--rule``). `reference_router` says how the method's reference code treats the router:
``"tied"`` (router unchanged, every member of a group holds the merged expert, so the gates of a
token's selected members add up on it) or ``"representative"`` (only the representative's router
row is kept). reapkit always saves the smaller model (``"representative"``); the tied form is
evaluated with `reapkit.compress.merge.apply_merge(..., router="tied")`.

**Merge rules.** The merged expert is Σ w_i W_i / Σ w_i per tensor over the members i, w_i from:
``"frequency"`` the member's routed-token count (the reference's expert_frequency / total_tokens:
the same after normalising), ``"average"`` 1, ``"reap"`` its REAP score (mean gate x output norm
over its routed tokens), ``"ream"`` the REAP score with a 0 raised to min(0.5, the layer's
smallest positive score) as REAM's code does. A group whose weights are all zero is averaged plainly.

**What else a method declares.** `representative`: the member whose slot and router row the merged
expert takes, the most frequent (``"frequency"``) or the highest REAP score (``"reap"``: REAM's
centroids). `combine`: ``"average"`` (the rule's weights) or ``"svd"`` (Sub-MoE's joint SVD,
`reapkit.compress.svd_merge`, the same weights). `alignment`: with `align`, M-SMoE's weight
matching or REAM's cost (`reapkit.compress.ream_merge`). `options`: the method's own settings with
their defaults, which `plan_merge(..., options={...})` and ``reapkit merge --option NAME=VALUE``
change; the plan records them all.

``"ream"`` (`reapkit.select.ream`) and ``"submoe"`` (`reapkit.select.submoe`) follow their authors'
or the REAP code; their module docstrings say where they differ and why. ``submoe`` pairs layers
(``layers_per_block=2``), so its layers may keep different counts (saved in reapkit's non-uniform
format); ``options={"layers_per_block": 1}`` keeps `keep` in every layer (unless k-means leaves a
cluster empty), a stock checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reapkit.errors import InvalidInput
from reapkit.observe.statistics import STATISTICS
from reapkit.select import grouping, ream, submoe

__all__ = [
    "MERGE_METHODS",
    "MergeInputs",
    "MergeMethod",
    "RULES",
    "Rule",
    "check_rule",
    "merge_method",
    "register_merge_method",
]

REAP_CODE = "CerebrasResearch/reap@1970473c51ca3caeb98c10392f15b3a08a672974"


@dataclass(frozen=True)
class MergeMethod:
    """One merge method: how it groups experts, what it needs, how its reference merges and routes."""

    name: str
    description: str
    reference: str  # paper and code, with the commit followed
    statistics: tuple[str, ...]  # what `group` reads from the observations
    group: Callable  # MergeInputs -> per layer position, groups of original expert ids
    rule: str = "frequency"  # the default merge rule
    rules: tuple[str, ...] = ("frequency", "average", "reap")  # the merge rules a user may choose
    align: bool = False  # align each member's neurons to the representative before averaging
    reference_router: str = "representative"  # "tied" or "representative": what the reference code does
    uniform: bool = True  # every layer keeps exactly `keep` experts
    representative: str = (
        "frequency"  # the member whose slot and router row the merged expert takes: most "frequency" or "reap"
    )
    combine: str = "average"  # how a group's tensors become one: weighted "average", or "svd" (Sub-MoE, reapkit.compress.svd_merge)
    alignment: str = (
        "weight_matching"  # with `align`: M-SMoE's weight matching, or "ream" (reapkit.compress.ream_merge)
    )
    options: tuple = ()  # (name, default) of the method's own options, given to plan_merge(..., options={...})


@dataclass(frozen=True)
class Rule:
    """One merge rule: the weight of each member of a group."""

    name: str
    description: str
    statistics: tuple[str, ...]
    weight: Callable  # (counts, reap_scores) -> weights of the members, same length


RULES: dict[str, Rule] = {
    "frequency": Rule("frequency", "weighted by routed-token counts", ("count",), lambda c, r: c),
    "average": Rule("average", "plain average", (), lambda c, r: np.ones_like(c)),
    "reap": Rule("reap", "weighted by REAP score (saliency)", ("count", "reap_sum"), lambda c, r: r),
    "ream": Rule(
        "ream",
        "weighted by REAP score, a score of 0 raised to min(0.5, the layer's smallest positive one) (REAM's code)",
        ("count", "reap_sum"),
        lambda c, r: ream.raise_zeros(r),
    ),
}


class MergeInputs:
    """What a grouping function reads: the pooled statistics, `keep`, the layers and the model's routers."""

    def __init__(self, obs, model, keep: int, names, options=None, seed: int = 0):
        self.obs, self.model, self.keep = obs, model, int(keep)
        self.options, self.seed = dict(options or {}), int(seed)  # the method's options, defaults filled in
        self.layers, self.num_experts, self.top_k = list(obs.layers), list(obs.num_experts), obs.top_k
        self.n_group = int(obs.meta.get("n_group", 1) or 1)
        self.pooled = {k: v.double().numpy() for k, v in obs.pooled(names=tuple(names)).items()}

    def stat(self, name: str, pos: int) -> np.ndarray:
        """Statistic `name` of layer position `pos`, cut to that layer's experts."""
        n = self.num_experts[pos]
        return self.pooled[name][pos][tuple(slice(n) if axis == "E" else slice(None) for axis in STATISTICS[name].axes)]

    def router_rows(self, pos: int) -> np.ndarray:
        """The router weight rows [experts, hidden] of layer position `pos` of the model."""
        from reapkit.model.discover import architecture_for

        arch = architecture_for(self.model)
        block = dict(arch.moe_blocks(self.model))[self.layers[pos]]
        return arch.router_weight_of(block).detach().float().cpu().numpy()

    def weights(self, rule: str, pos: int, members: list[int]) -> list[float]:
        """The normalised merge weights of `members` of layer position `pos` under `rule`."""
        counts = self.stat("count", pos)
        reap = self.stat("reap_sum", pos) / np.maximum(counts, 1) if "reap_sum" in self.pooled else counts
        w = np.asarray(RULES[rule].weight(counts, reap), dtype=np.float64)[members]  # rules see the whole layer
        w = w / w.sum() if w.sum() > 0 else np.full(len(members), 1.0 / len(members))
        return [float(v) for v in w]


MERGE_METHODS: dict[str, MergeMethod] = {}


def register_merge_method(method: MergeMethod) -> MergeMethod:
    """Add `method` to the registry (replacing one of the same name); returns it."""
    unknown = [r for r in (method.rule, *method.rules) if r not in RULES]
    if unknown or method.rule not in method.rules:
        raise InvalidInput(
            f"merge method {method.name!r}: rule {method.rule!r} must be one of its rules {method.rules}, "
            f"each one of {', '.join(RULES)}"
        )
    if method.reference_router not in ("tied", "representative"):
        raise InvalidInput(f"merge method {method.name!r}: reference_router must be 'tied' or 'representative'")
    MERGE_METHODS[method.name] = method
    return method


def merge_method(name: str) -> MergeMethod:
    """The registered method `name`; an unknown name is refused with the list to choose from."""
    if name not in MERGE_METHODS:
        listing = "; ".join(f"{m.name!r}: {m.description}" for m in MERGE_METHODS.values())
        raise InvalidInput(f"unknown merge method {name!r}; choose one of {listing}")
    return MERGE_METHODS[name]


def check_rule(method: MergeMethod, rule: str | None) -> str:
    """`rule`, or the method's default when None; refused unless the method allows it."""
    rule = method.rule if rule is None else rule
    if rule not in method.rules:
        raise InvalidInput(
            f"merge rule {rule!r} is not offered by {method.name!r}; choose one of {', '.join(method.rules)}"
        )
    return rule


register_merge_method(
    MergeMethod(
        name="m_smoe",
        description="dominant = each layer's most frequent experts; others join the nearest dominant by router-row cosine",
        reference="after M-SMoE (Li et al. 2023, arXiv 2310.01334), simplified: router rows stand in for router logits",
        statistics=("count",),
        group=grouping.m_smoe_router_rows,
    )
)
register_merge_method(
    MergeMethod(
        name="hc_smoe",
        description="average-linkage clustering of the experts' mean outputs over their routed tokens",
        reference="after HC-SMoE (Chen et al. 2024, arXiv 2410.08589), simplified: routed tokens only",
        statistics=("count", "output_sum"),
        group=grouping.hc_smoe_routed,
    )
)
register_merge_method(
    MergeMethod(
        name="hc_smoe_faithful",
        description="HC-SMoE: average linkage (Euclidean) of the experts' mean outputs over all tokens",
        reference=f"HC-SMoE (Chen et al. 2024, arXiv 2410.08589) as in {REAP_CODE} experiments/hc_smoe.sh",
        statistics=("count", "tokens", "all_output_sum"),
        group=grouping.hc_smoe_faithful,
        reference_router="tied",
    )
)
register_merge_method(
    MergeMethod(
        name="m_smoe_faithful",
        description="M-SMoE: global dominant experts, second-order router-logit distance, neurons aligned",
        reference=f"M-SMoE (Li et al. 2023, arXiv 2310.01334) as in {REAP_CODE} experiments/m_smoe.sh (--permute wm)",
        statistics=("count", "tokens", "router_distance_sum"),
        group=grouping.m_smoe_faithful,
        align=True,
        reference_router="tied",
        uniform=False,
    )
)
register_merge_method(
    MergeMethod(
        name="ream",
        description="REAM: REAP's kept experts as centroids, each filled with its nearest experts (gated output and "
        "router-logit similarity), neurons aligned, REAP-weighted",
        reference="REAM (arXiv 2604.04356) as in SamsungSAILMontreal/ream@84a3030716a0059589e9d10e2ea049e32b76cfa6 "
        "ream/ream.py pseudo_group, ream/merger.py Merger (reapkit.select.ream)",
        statistics=("count", "reap_sum", "prob_output_sum", "router_gram"),
        group=ream.ream_grouping,
        rule="ream",
        rules=("ream", "reap", "frequency", "average"),
        align=True,
        alignment="ream",
        representative="reap",
        options=(("group_size", 16),),
    )
)
register_merge_method(
    MergeMethod(
        name="submoe",
        description="Sub-MoE: k-means of the experts' mean outputs over all tokens, merges spent across paired "
        "layers, each group merged by one joint SVD",
        reference=f"Sub-MoE (arXiv 2506.23266) as in {REAP_CODE} experiments/submoe_v2.sh (reapkit.select.submoe)",
        statistics=("count", "tokens", "all_output_sum"),
        group=submoe.submoe_grouping,
        reference_router="tied",
        uniform=False,
        combine="svd",
        options=(("layers_per_block", 2), ("rank", None), ("split", "blocks")),
    )
)
