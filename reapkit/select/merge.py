"""Expert-merging baselines (M-SMoE-style and HC-SMoE-style), to compare with pruning at equal size.

    >>> plan = plan_merge(model, obs, method="hc_smoe", keep=8)     # model unchanged
    >>> plan.groups[3][0], plan.representatives[3][0]                # original ids merged into new expert 0
    ([0, 1, 2, 3, 4, 6, 8, 9, 14], 0)
    >>> plan.save("merge_plan.json")
    PosixPath('merge_plan.json')
    >>> MergePlan.load("merge_plan.json") == plan
    True

`reapkit.compress.merge.apply_merge` applies a plan to a model.

Both methods reduce every MoE layer to `keep` experts, the same count as the pruning they are
compared with, and return a `MergePlan` (data, saved as JSON like a `PruningPlan`).

- ``"m_smoe"`` (after M-SMoE, Li et al. 2023): the `keep` most frequently routed experts (pooled
  routed-token counts of the observations) are the dominant experts; every other expert joins the
  dominant expert whose **router weight row** is most cosine-similar. M-SMoE compares router-logit
  columns over calibration tokens; observations keep only sums, and router-logit cosine equals
  router-row cosine when the router inputs are isotropic, so the rows stand in for it. M-SMoE's
  neuron permutation alignment before averaging is not done.
- ``"hc_smoe"`` (after HC-SMoE, Chen et al. 2024): average-linkage hierarchical clustering
  (scipy) of the experts' mean outputs (``output_sum / count``, Euclidean) cut into `keep`
  clusters. An expert never routed has mean output 0.

Within a group the expert tensors (every parameter of the fused experts module with a leading
expert axis: ``gate_up_proj``, ``down_proj`` and, for gpt_oss, their biases) are averaged with
weights proportional to the routed-token counts (uniform when the whole group was never routed).

**Router rows.** Each group has a representative: its most frequent member (ties: lower id), for
M-SMoE its dominant expert. The merged expert takes the representative's slot, so the router
keeps the representative's row, router bias entry (gpt_oss) and selection-only correction bias
(deepseek / glm / minimax / ernie); the other members' router rows are dropped. The merged model
is then built by `reapkit.compress.prune.remove_experts` with a `PruningPlan` keeping the representatives,
so it is a normal smaller model of the same class that `save_pretrained` writes and stock
`from_pretrained` loads. With group-limited routing (`n_group` > 1) experts are merged only
within their routing group, `keep / n_group` per group, so the groups stay intact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reapkit.atomic import atomic_write_text
from reapkit.errors import InvalidInput
from reapkit.model.discover import architecture_for
from reapkit.select.plan import PruningPlan, read_document

__all__ = ["MergePlan", "METHODS", "plan_merge"]

FORMAT = "reapkit-merge-plan/1"
METHODS = {
    "m_smoe": "dominant = most frequent experts; others join the nearest dominant by router-row cosine similarity",
    "hc_smoe": "average-linkage hierarchical clustering of the experts' mean outputs",
}


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
    keep: int
    seed: int = 0
    provenance: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.groups)

    def to_pruning_plan(self) -> PruningPlan:
        """The `PruningPlan` that keeps the representatives (what `apply_merge` slices with)."""
        kept = {layer: list(self.representatives[layer]) for layer in self.layers}
        return PruningPlan(kept, dict(self.num_experts), f"merge:{self.method}", None, {}, dict(self.provenance))

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
    if method not in METHODS:
        listing = "; ".join(f"{name!r}: {text}" for name, text in METHODS.items())
        raise InvalidInput(f"unknown merge method {method!r}; choose one of {listing}")


def _order(values: np.ndarray) -> np.ndarray:
    """Indices by descending value, ties to the lower index."""
    return np.argsort(-values, kind="stable")


def _m_smoe(counts: np.ndarray, rows: np.ndarray, keep: int) -> list[list[int]]:
    dominant = sorted(int(i) for i in _order(counts)[:keep])
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit[dominant].T  # [n, keep]
    groups = {d: [d] for d in dominant}
    for e in range(len(counts)):
        if e not in groups:
            groups[dominant[int(np.argmax(similarity[e]))]].append(e)  # argmax: ties to the lower dominant
    return [sorted(g) for g in groups.values()]


def _hc_smoe(features: np.ndarray, keep: int) -> list[list[int]]:
    from scipy.cluster.hierarchy import cut_tree, linkage

    n = len(features)
    if keep == n:
        return [[e] for e in range(n)]
    if keep == 1:
        return [list(range(n))]
    labels = cut_tree(linkage(features.astype(np.float64), method="average", metric="euclidean"), n_clusters=keep)[:, 0]
    return [sorted(int(e) for e in np.flatnonzero(labels == c)) for c in np.unique(labels)]


def plan_merge(model, obs, *, method: str, keep: int, seed: int = 0) -> MergePlan:
    """The `MergePlan` of `method` reducing each MoE layer of `model` to `keep` experts (model unchanged).

    `obs` must be observations of this (unmerged) model. Both methods are deterministic; `seed`
    is recorded for provenance.
    """
    _check_method(method)
    obs.require("count", *(("output_sum",) if method != "m_smoe" else ()), purpose=f"merging with {method!r}")
    obs.check_model(model)
    arch = architecture_for(model)
    blocks = dict(arch.moe_blocks(model))
    top_k, n_group = obs.top_k, int(obs.meta.get("n_group", 1) or 1)
    if not isinstance(keep, (int, np.integer)) or isinstance(keep, bool):
        raise InvalidInput(f"keep must be an integer number of experts per layer, got {keep!r}")
    pooled = obs.pooled()
    groups, reps, weights, num_experts = {}, {}, {}, {}
    for pos, layer in enumerate(obs.layers):
        total = obs.num_experts[pos]
        if keep > total or keep < top_k:
            raise InvalidInput(
                f"cannot merge layer {layer} from {total} to {keep} experts: the target must be at most the current "
                f"{total} experts and at least top-k = {top_k} (experts each token is routed to); choose keep in [{top_k}, {total}]"
            )
        if n_group > 1 and (keep % n_group or total % n_group or keep // n_group < 2):
            raise InvalidInput(
                f"layer {layer} routes in {n_group} expert groups (n_group), so merging keeps keep / n_group experts per "
                f"group, which must be a whole number of at least 2; {keep} is not valid; choose a multiple of {n_group} "
                f"of at least {2 * n_group}"
            )
        counts = pooled["count"][pos, :total].double().numpy()
        if method == "m_smoe":
            features = arch.router_weight_of(blocks[layer]).detach().float().cpu().numpy()
        else:
            sums = pooled["output_sum"][pos, :total].double().numpy()
            features = sums / np.maximum(counts, 1)[:, None]
        size, per_group = total // n_group, keep // n_group
        layer_groups = []
        for g in range(n_group):
            ids = np.arange(g * size, (g + 1) * size)
            local = (
                _m_smoe(counts[ids], features[ids], per_group)
                if method == "m_smoe"
                else _hc_smoe(features[ids], per_group)
            )
            layer_groups += [[int(ids[i]) for i in members] for members in local]
        rep_of = [min(members, key=lambda e: (-counts[e], e)) for members in layer_groups]
        order = np.argsort(rep_of)
        layer_groups = [layer_groups[i] for i in order]
        rep_of = [rep_of[i] for i in order]
        layer_weights = []
        for members in layer_groups:
            c = counts[members]
            w = c / c.sum() if c.sum() > 0 else np.full(len(members), 1.0 / len(members))
            layer_weights.append([float(v) for v in w])
        groups[layer], reps[layer], weights[layer], num_experts[layer] = layer_groups, rep_of, layer_weights, total
    provenance = obs.provenance(
        similarity="router weight rows, cosine"
        if method == "m_smoe"
        else "mean expert outputs, euclidean, average linkage"
    )
    return MergePlan(groups, reps, weights, num_experts, method, int(keep), seed, provenance)
