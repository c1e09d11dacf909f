"""A pruning plan is data: per MoE layer, which experts stay.

>>> plan = PruningPlan.from_observations(obs, "reap", ratio=0.25)      # the published recipe
>>> plan = PruningPlan.from_observations(obs, "reap", keep=12)         # experts kept per layer
>>> plan = PruningPlan.from_observations(obs, "reap", counts={2: 12, 3: 14})   # per layer
>>> plan.kept[3], plan.removed(3)
([0, 1, 3, ...], [2, 8])
>>> plan.save("pruning_plan.json")
PosixPath('pruning_plan.json')
>>> PruningPlan.load("pruning_plan.json") == plan
True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reapkit.atomic import atomic_write_text
from reapkit.errors import InvalidInput, MissingInput
from reapkit.select.criteria import check_ratio

FORMAT = "reapkit-pruning-plan/1"


def read_document(path, fmt: str, what: str, writer: str) -> dict:
    """`read_document("plan.json", FORMAT, "reapkit pruning plan", "PruningPlan.save")` -> the plan as a dict.

    The JSON object in `path` without its "format" key, which must be `fmt`; any other file is refused,
    naming `what` it should be and the `writer` that makes one.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{what} {path} does not exist; pass a file written by {writer}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"{path} is not a {what} (not JSON: {error}); pass a file written by {writer}") from None
    if not isinstance(data, dict) or data.pop("format", None) != fmt:
        raise InvalidInput(f"{path} is not a {what} (expected format {fmt!r}); pass a file written by {writer}")
    return data


def super_experts(obs, *, include_last_layers: bool = False, domains=None) -> dict[int, list[int]]:
    """{decoder layer: expert indices} of the super experts, by the official REAP rule.

    ``super_experts(obs)`` (observations recorded with ``statistics=["max_signed"]``) mirrors
    CerebrasResearch/reap @1970473 ``src/reap/model_util.py`` lines 240-262,
    ``get_super_expert_indices``, step by step:

    - the pool is every MoE layer's per-expert ``max_activations`` (reapkit's `max_signed`: the
      largest signed output element over routed tokens, floored at 0), all layers, as float32;
    - threshold = max(``torch.quantile(pool, 0.995)`` (linear interpolation), pool max / 10);
    - an expert is flagged when its peak is strictly *greater* than the threshold (compared in float32);
    - without `include_last_layers`, only the first ``int(layers * 0.75)`` MoE layers (rounded down)
      keep their flags: the last layers still count in the pool, they are only never flagged.

    Rows of the pool are MoE layers in order, reported here by their decoder-layer index. (The
    reference's ``prune.py`` matches those row positions against decoder-layer keys, which moves the
    flags by the number of dense layers before the first MoE layer, e.g. GLM-4.5's; reapkit keeps
    each flag on its own layer.) In a model whose layers have different expert counts, only the
    experts a layer has enter the pool (the reference needs equal counts).
    """
    import torch

    obs.require("max_signed", purpose="super-expert protection")
    peaks = obs.pooled(domains, names=["max_signed"])["max_signed"].to(torch.float32)
    present = torch.arange(peaks.shape[1])[None, :] < torch.tensor(obs.num_experts)[:, None]
    pool = peaks[present]
    if pool.numel() == 0:
        return {}
    threshold = max(torch.quantile(pool, 99.5 / 100.0).item(), pool.max().item() / 10)
    flagged = (peaks > threshold) & present
    if not include_last_layers:
        flagged[int(len(obs.layers) * 0.75) :, :] = False
    return {
        layer: [int(e) for e in torch.nonzero(flagged[pos]).flatten()]
        for pos, layer in enumerate(obs.layers)
        if flagged[pos].any()
    }


def pruned_count(total: int, ratio: float) -> int:
    """Experts a uniform plan at `ratio` removes from a layer of `total`: `pruned_count(64, 0.25) == 16`."""
    return math.floor(total * ratio + 1e-9)


@dataclass
class PruningPlan:
    """`kept[layer]`: ascending expert indices that stay in decoder layer `layer`."""

    kept: dict[int, list[int]]
    num_experts: dict[int, int]  # experts per layer before pruning
    criterion: str
    ratio: float | None = None
    scores: dict[int, list[float]] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.kept)

    def removed(self, layer: int) -> list[int]:
        keep = set(self.kept[layer])
        return [e for e in range(self.num_experts[layer]) if e not in keep]

    @property
    def is_uniform(self) -> bool:
        """True when every layer keeps the same number of experts (expressible in a stock config)."""
        return len({len(k) for k in self.kept.values()}) == 1

    @property
    def total_kept(self) -> int:
        return sum(len(k) for k in self.kept.values())

    @classmethod
    def from_scores(
        cls,
        scores: np.ndarray,
        layers: list[int],
        num_experts: list[int],
        *,
        top_k: int,
        ratio: float | None = None,
        keep: int | None = None,
        counts: dict[int, int] | None = None,
        n_group: int = 1,
        topk_group: int | None = None,
        criterion: str = "custom",
        provenance: dict | None = None,
    ) -> PruningPlan:
        """Keep the highest-scoring experts of each layer; exactly one of ratio / keep / counts.

        `ratio` is the fraction of each layer's experts removed (in [0, 1)); `keep` the number kept
        per layer; `counts` {decoder layer: number kept}. Ties go to the lower expert index.
        With group-limited routing (`n_group` > 1) each group keeps the same number of experts and
        `topk_group` x kept per group >= `top_k`; other counts are refused, naming the nearest feasible ones.
        """
        if sum(x is not None for x in (ratio, keep, counts)) != 1:
            raise InvalidInput("give exactly one of ratio=, keep= or counts=")
        if ratio is not None:
            check_ratio(ratio)
        if counts is not None:
            unknown = sorted(set(counts) - set(layers))
            if unknown:
                raise InvalidInput(f"counts name layer(s) {unknown} that are not MoE layers; MoE layers are {layers}")
        kept, kept_scores = {}, {}
        for pos, layer in enumerate(layers):
            total = num_experts[pos]
            if ratio is not None:
                n = total - pruned_count(total, ratio)
            elif keep is not None:
                n = int(keep)
            else:
                n = int(counts.get(layer, total))
            if n < top_k or n > total:
                raise InvalidInput(
                    f"layer {layer} would keep {n} of {total} experts; it needs at least top-k = {top_k} "
                    f"and at most {total}. Choose a smaller ratio or a larger number of experts to keep"
                )
            row = np.asarray(scores[pos][:total], dtype=np.float64)
            kept[layer] = _best_experts(row, n, n_group, layer, topk_group=topk_group, top_k=top_k)
            kept_scores[layer] = [float(v) for v in row]
        return cls(kept, dict(zip(layers, num_experts)), criterion, ratio, kept_scores, dict(provenance or {}))

    @classmethod
    def from_observations(
        cls,
        obs,
        criterion: str = "reap",
        *,
        ratio=None,
        keep=None,
        counts=None,
        domains=None,
        seed: int = 0,
        protect_super_experts: bool = False,
    ) -> PruningPlan:
        """Score `obs` with `criterion` (optionally over `domains`) and build a plan.

        `protect_super_experts`: never prune the experts :func:`super_experts` finds (it needs
        ``--statistics max_signed``); the plan's ``provenance["protected"]`` lists them per layer.
        """
        from reapkit.select.criteria import score

        values = score(obs, criterion, domains=domains, seed=seed)
        protected = super_experts(obs, domains=domains) if protect_super_experts else {}
        ranked = values.copy()
        for pos, layer in enumerate(obs.layers):  # protected experts first, each layer's order otherwise kept
            ranked[pos, protected.get(layer, [])] += np.abs(values[pos]).max() * 2 + 1
        extra = {"protected": {str(k): v for k, v in protected.items()}} if protected else {}
        plan = cls.from_scores(
            ranked,
            obs.layers,
            obs.num_experts,
            top_k=obs.top_k,
            ratio=ratio,
            keep=keep,
            counts=counts,
            n_group=obs.meta.get("n_group", 1),
            topk_group=obs.meta.get("topk_group"),
            criterion=criterion,
            provenance=obs.provenance(domains=domains, seed=seed, **extra),
        )
        if not protected:
            return plan
        if any(set(e) - set(plan.kept[layer]) for layer, e in protected.items()):
            raise InvalidInput(
                f"the plan keeps too few experts to protect every super expert {protected}; "
                f"keep more experts (a smaller ratio) or do not protect super experts"
            )
        plan.scores = {
            layer: [float(v) for v in values[pos][:n]]
            for pos, (layer, n) in enumerate(zip(obs.layers, obs.num_experts))
        }
        return plan

    @classmethod
    def from_global_budget(
        cls, obs, criterion: str = "reap", *, total: int, margin: int = 0, domains=None, seed: int = 0
    ) -> PruningPlan:
        """Keep the best `total` experts across all layers (a non-uniform plan).

        Scores are normalised per layer (divided by the layer's mean score over its experts) so
        layers compare; each layer first keeps its `top_k + margin` best experts, the rest of the
        budget goes to the highest normalised scores anywhere. Normalising keeps each layer's
        order, so the result is expressed as per-layer counts.
        """
        from reapkit.select.criteria import score

        values = score(obs, criterion, domains=domains, seed=seed)
        sizes, floor = obs.num_experts, obs.top_k + margin
        if obs.meta.get("n_group", 1) > 1:
            raise InvalidInput(
                "a global budget cannot keep routing groups equal in size; use a uniform plan (ratio= or keep=) for group-limited routers"
            )
        minimum, maximum = floor * len(sizes), sum(sizes)
        if not minimum <= total <= maximum:
            raise InvalidInput(
                f"a global budget of {total} experts is outside [{minimum}, {maximum}]: every one of the "
                f"{len(sizes)} MoE layers keeps at least top-k + margin = {floor} experts and at most all of them"
            )
        chosen, candidates = {}, []
        for pos, (layer, size) in enumerate(zip(obs.layers, sizes)):
            normalised = budget_scores(values[pos][:size])
            order = np.argsort(-normalised, kind="stable")
            chosen[layer] = [int(i) for i in order[:floor]]
            candidates += [(-float(normalised[i]), layer, int(i)) for i in order[floor:]]
        for _, layer, expert in sorted(candidates)[: total - minimum]:
            chosen[layer].append(expert)
        provenance = obs.provenance(domains=domains, seed=seed, global_budget=total, margin=margin)
        return cls.from_scores(
            values,
            obs.layers,
            sizes,
            top_k=obs.top_k,
            counts={k: len(v) for k, v in chosen.items()},
            criterion=criterion,
            provenance=provenance,
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kept"] = {str(k): v for k, v in self.kept.items()}
        data["num_experts"] = {str(k): v for k, v in self.num_experts.items()}
        data["scores"] = {str(k): v for k, v in self.scores.items()}
        return {"format": FORMAT, **data}

    def save(self, path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path) -> PruningPlan:
        data = read_document(path, FORMAT, "reapkit pruning plan", "PruningPlan.save")
        for key in ("kept", "num_experts", "scores"):
            data[key] = {int(k): v for k, v in data[key].items()}
        return cls(**data)


def budget_scores(row) -> np.ndarray:
    """The scores a global budget ranks across layers: one layer's scores divided by their mean.

    >>> budget_scores(np.array([1.0, 3.0]))
    array([0.5, 1.5])
    """
    row = np.asarray(row, dtype=np.float64)
    return row / row.mean() if row.size and row.mean() > 0 else row


def feasible_group_counts(total: int, n_group: int, top_k: int, topk_group: int | None = None) -> list[int]:
    """Experts a layer of `total` routed in `n_group` groups may keep: `feasible_group_counts(8, 2, 2) == [4, 6, 8]`.

    Every group keeps the same number, at least 2 (groups are ranked by their two best experts),
    and the `topk_group` groups a token may use hold at least `top_k` experts.
    """
    if total % n_group:
        return []
    need = max(2, -(-top_k // (topk_group or n_group)))
    return [n_group * per for per in range(need, total // n_group + 1)]


def _best_experts(
    row: np.ndarray, n: int, n_group: int, layer: int, *, topk_group: int | None = None, top_k: int = 1
) -> list[int]:
    """Indices of the `n` best experts, `n / n_group` from each routing group when grouped."""
    order = lambda values: np.argsort(-values, kind="stable")  # noqa: E731
    if n_group <= 1:
        return sorted(int(i) for i in order(row)[:n])
    feasible = feasible_group_counts(len(row), n_group, top_k, topk_group)
    if n not in feasible:
        below, above = [c for c in feasible if c < n], [c for c in feasible if c > n]
        nearest = " or ".join(f"keep={c} (ratio {1 - c / len(row):.4g})" for c in (below[-1:] + above[:1])) or "none"
        raise InvalidInput(
            f"layer {layer} routes in {n_group} expert groups (n_group) choosing {topk_group or n_group} of them "
            f"(topk_group) for top-{top_k}: every group must keep the same number of experts, at least 2 and "
            f"enough that topk_group x kept per group >= top_k, but {n} kept of {len(row)} does not; "
            f"nearest feasible: {nearest}"
        )
    size, per_group = len(row) // n_group, n // n_group
    chosen = [g * size + int(i) for g in range(n_group) for i in order(row[g * size : (g + 1) * size])[:per_group]]
    return sorted(chosen)
