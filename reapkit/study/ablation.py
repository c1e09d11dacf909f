"""Ground truth for the criteria: what removing each expert alone costs, and how each criterion ranks it.

    >>> costs = single_expert_ablation(model, eval_batches, layers=[3], limit=256)   # held-out tokens
    >>> list(costs.columns)
    ['layer', 'expert', 'loss_change', 'lo', 'hi', 'tokens']
    >>> table = ablation_correlation(obs, costs, ["reap", "frequency"])
    >>> table[["layer", "criterion", "rho", "lo", "hi"]].round(2)
       layer  criterion   rho    lo    hi
    0      3       reap -0.20 -0.71  0.33
    1      3  frequency -0.32 -0.78  0.21
    >>> joint = plan_ablation(model, eval_batches, plan, limit=256)     # a plan's removed experts together
    >>> joint[["layer", "removed", "joint", "singles", "interaction", "interaction_lo"]].round(2).tail(2)
      layer  removed  joint  singles  interaction  interaction_lo
    3     3        8   0.09     0.08         0.01           -0.02
    4   all       32   1.05     0.75         0.31            0.08

Each expert is masked alone (`reapkit.compress.prune.mask_experts` with a plan that drops only it: no
copy of the model), and its cost is the paired difference of the token-weighted mean loss over the
same held-out sequences, masked minus unpruned, with a paired bootstrap interval
(`reapkit.measure.stats.bootstrap`). Masking an expert computes exactly what removing it does
(tests/unit/test_ablation.py), so this is the loss change pruning that one expert causes.
`ablation_correlation` then gives, per MoE layer and criterion, Spearman's rank correlation of the
scores with the cost of removing (higher score should mean costlier to remove), a bootstrap interval
over the layer's experts, and the band unrelated rankings of that many experts fall in.

Each masked forward starts at the masked layer: the layers before it are replayed from one unmasked
pass (`reapkit.measure.replay`), which gives the losses of full forwards (tests/unit/test_ablation.py)
in a fraction of the time. `plan_ablation` masks a plan's removed experts together, per layer and in
all, beside the sum of their single costs: whether the costs of pruning add up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from reapkit.errors import InvalidInput
from reapkit.measure.schema import display_name
from reapkit.measure.stats import bootstrap

__all__ = [
    "ablation_correlation",
    "ablation_reading",
    "held_out",
    "score_costs",
    "layer_part",
    "masked_losses",
    "plan_ablation",
    "plan_ablation_reading",
    "single_expert_ablation",
    "single_expert_plan",
]


def held_out(batches, limit: int | None):
    """The first batches of `batches` holding at least `limit` real tokens (all of them when None)."""
    if limit is None:
        return list(batches)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidInput(f"limit must be a positive number of tokens, got {limit!r}")
    chosen, tokens = [], 0
    for batch in batches:
        if tokens >= limit:
            break
        chosen.append(batch)
        tokens += int(batch.attention_mask.sum())
    return chosen


def single_expert_plan(model, layer: int, expert: int):
    """The `PruningPlan` for `model` that removes `expert` of decoder layer `layer` and nothing else."""
    from reapkit.model.layer import moe_layers
    from reapkit.select.plan import PruningPlan

    sizes = {moe.index: moe.num_experts for moe in moe_layers(model)}
    if layer not in sizes or not 0 <= expert < sizes[layer]:
        raise InvalidInput(f"no expert {expert} in layer {layer}; MoE layers and their experts: {sizes}")
    kept = {index: [e for e in range(size) if (index, e) != (layer, expert)] for index, size in sizes.items()}
    return PruningPlan(kept, sizes, criterion="single_expert_ablation")


def _ablated_layers(model, layers) -> tuple[dict[int, int], list[int]]:
    """`({MoE layer: experts}, the chosen layers)`, refusing layers that are not MoE layers."""
    from reapkit.model.layer import moe_layers

    sizes = {moe.index: moe.num_experts for moe in moe_layers(model)}
    chosen = sorted(sizes) if layers is None else [int(x) for x in layers]
    unknown = [x for x in chosen if x not in sizes]
    if unknown or not chosen:
        raise InvalidInput(
            f"layers {unknown or chosen} are not MoE layers of this model; MoE layers are {sorted(sizes)}"
        )
    return sizes, chosen


def masked_losses(model, batches, plans: dict, *, progress: bool = False, desc: str = "ablation"):
    """`({key: loss sums per sequence inside mask_experts(plans[key])}, unpruned loss sums, target tokens)`.

    Each plan runs from its first layer that removes an expert: the layers before are replayed from one
    unmasked pass (`reapkit.measure.replay`), which gives the losses of full forwards.
    """
    from reapkit.compress.prune import mask_experts
    from reapkit.measure.replay import layer_inputs, sequence_losses

    unpruned, tokens = full = sequence_losses(model, batches)
    starts = {key: min((x for x in plan.layers if plan.removed(x)), default=None) for key, plan in plans.items()}
    losses = {key: unpruned.copy() for key, start in starts.items() if start is None}
    with tqdm(total=len(plans), desc=desc, unit="mask", disable=not progress) as bar:
        bar.update(len(losses))
        for start in sorted({s for s in starts.values() if s is not None}):
            replay = layer_inputs(model, batches, start, full=full)
            for key in [k for k, s in starts.items() if s == start]:
                with mask_experts(model, plans[key]):
                    losses[key] = sequence_losses(model, batches, replay=replay)[0]
                bar.update()
    return {key: losses[key] for key in plans}, unpruned, tokens


def single_expert_ablation(
    model, batches, *, layers=None, limit: int | None = None, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Per MoE layer and expert: the loss change from masking that expert alone, with a 95 % interval.

    `batches` are held-out tokens (not the calibration ones); `limit` keeps the first batches that
    hold that many tokens, `layers` (decoder indices) the layers to ablate: for large models. One
    forward pass over the batches per expert, from its layer on (`masked_losses`). Columns: layer,
    expert, loss_change (nats per token, masked minus unpruned), lo, hi (paired bootstrap), tokens.
    """
    batches = held_out(batches, limit)
    sizes, chosen = _ablated_layers(model, layers)
    plans = {(layer, e): single_expert_plan(model, layer, e) for layer in chosen for e in range(sizes[layer])}
    losses, unpruned, tokens = masked_losses(model, batches, plans, progress=progress)
    rows = [
        (layer, expert, *bootstrap(loss, tokens, minus=unpruned, seed=seed), int(tokens.sum()))
        for (layer, expert), loss in losses.items()
    ]
    return pd.DataFrame(rows, columns=["layer", "expert", "loss_change", "lo", "hi", "tokens"])


def layer_part(plan, layer: int):
    """The `PruningPlan` that removes what `plan` removes in decoder layer `layer`, and nothing elsewhere."""
    from reapkit.select.plan import PruningPlan

    kept = {x: (plan.kept[x] if x == layer else list(range(plan.num_experts[x]))) for x in plan.layers}
    return PruningPlan(kept, dict(plan.num_experts), plan.criterion, plan.ratio)


PLAN_COLUMNS = [
    "layer", "removed", "joint", "joint_lo", "joint_hi", "singles", "singles_lo", "singles_hi",
    "interaction", "interaction_lo", "interaction_hi", "tokens",
]  # fmt: skip


def plan_ablation(
    model, batches, plan, *, limit: int | None = None, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Do the costs of a plan's removed experts add up? Per MoE layer the plan prunes, and for the whole
    plan (layer ``"all"``): the loss change from masking its removed experts together (joint), the sum
    of their single-expert costs (singles: `single_expert_ablation`'s loss_change of the same experts
    on the same batches, summed), and interaction = joint - singles, each with a paired 95 % bootstrap
    interval over the same held-out sequences (nats per token).

    A positive interaction means removing the experts together costs more than their costs alone add
    up to (they stand in for one another when one is missing); a negative one, less. Columns:
    `PLAN_COLUMNS` (removed: experts removed). One forward per removed expert, per layer and for the
    plan, each from its first masked layer on.
    """
    from reapkit.compress.prune import check_plan

    check_plan(model, plan)
    batches = held_out(batches, limit)
    removed = {layer: plan.removed(layer) for layer in plan.layers if plan.removed(layer)}
    if not removed:
        raise InvalidInput("the plan removes no expert; plan_ablation needs a plan that removes at least one")
    plans = {(layer, e): single_expert_plan(model, layer, e) for layer, experts in removed.items() for e in experts}
    plans |= {("joint", layer): layer_part(plan, layer) for layer in removed} | {("joint", "all"): plan}
    losses, unpruned, tokens = masked_losses(model, batches, plans, progress=progress, desc="plan ablation")
    rows = []
    for scope in [*removed, "all"]:
        experts = [(x, e) for x in removed for e in removed[x] if scope in (x, "all")]
        joint = losses["joint", scope] - unpruned
        singles = sum(losses[key] - unpruned for key in experts)
        values = [bootstrap(v, tokens, seed=seed) for v in (joint, singles, joint - singles)]
        rows.append((scope, len(experts), *values[0], *values[1], *values[2], int(tokens.sum())))
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def plan_ablation_reading(table: pd.DataFrame) -> str:
    """A few sentences on `plan_ablation`: whether the removed experts' costs add up, every number computed."""

    def verdict(row) -> str:
        if row.interaction_lo > 0:
            return "more than their single costs add up to"
        if row.interaction_hi < 0:
            return "less than their single costs add up to"
        return "what their single costs add up to, within the interval"

    whole = table[table["layer"] == "all"].iloc[0]
    layers = table[table["layer"] != "all"]
    lines = [
        f"**Reading.** Masking the plan's {int(whole.removed)} removed experts together raised the loss by {whole.joint:+.4f} "
        f"[{whole.joint_lo:+.4f}, {whole.joint_hi:+.4f}] nats per token ({int(whole.tokens)} held-out tokens), "
        f"against {whole.singles:+.4f} [{whole.singles_lo:+.4f}, {whole.singles_hi:+.4f}] for the sum of their "
        f"single-expert costs: interaction {whole.interaction:+.4f} [{whole.interaction_lo:+.4f}, "
        f"{whole.interaction_hi:+.4f}], so together they cost {verdict(whole)}."
    ]
    more, less = int((layers["interaction_lo"] > 0).sum()), int((layers["interaction_hi"] < 0).sum())
    lines.append(
        f"Per layer, the joint cost exceeds the sum of single costs beyond the interval in {more} of "
        f"{len(layers)} layers and falls short of it in {less}"
        + (
            f"; the largest interaction is in layer {layers.loc[layers['interaction'].abs().idxmax(), 'layer']} "
            f"({layers['interaction'].loc[layers['interaction'].abs().idxmax()]:+.4f})."
            if len(layers)
            else "."
        )
    )
    return "\n".join(lines)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def ablation_correlation(
    obs, costs: pd.DataFrame, criteria, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Per layer and criterion: Spearman's rho of the scores with the ablation cost, a bootstrap interval
    (experts resampled), and the chance band (`reapkit.study.tables.spearman_band`).

    Columns: layer, criterion, rho, lo, hi, chance_lo, chance_hi, experts. Layers missing from `costs`
    are left out; a criterion `obs` cannot score refuses naming the ``--statistics`` that records it.
    """
    from reapkit.select.criteria import score
    from reapkit.study.tables import spearman_band

    criteria = [criteria] if isinstance(criteria, str) else list(criteria)
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2
    rows = []
    for criterion in criteria:
        values = score(obs, criterion, seed=seed)
        for pos, layer in enumerate(obs.layers):
            part = costs[costs["layer"] == layer].sort_values("expert")
            if part.empty:
                continue
            s = values[pos][part["expert"].to_numpy()]
            c = part["loss_change"].to_numpy(np.float64)
            n = len(c)
            draws = rng.integers(0, n, size=(resamples, n))
            rhos = np.array([_spearman(s[d], c[d]) for d in draws])
            rhos = rhos[np.isfinite(rhos)]
            lo, hi = np.quantile(rhos, [tail, 1 - tail]) if len(rhos) else (np.nan, np.nan)
            band = spearman_band(n, level=level)
            rows.append((layer, criterion, _spearman(s, c), float(lo), float(hi), *band, n))
    columns = ["layer", "criterion", "rho", "lo", "hi", "chance_lo", "chance_hi", "experts"]
    return pd.DataFrame(rows, columns=columns)


def score_costs(obs, costs: pd.DataFrame, criteria) -> pd.DataFrame:
    """Each expert's score by each criterion beside its ablation cost: what `criterion_vs_ablation` draws.

    >>> score_costs(obs, costs, ["reap"]).columns.tolist()
    ['layer', 'expert', 'criterion', 'score', 'cost', 'cost_lo', 'cost_hi']
    """
    from reapkit.select.criteria import scores_frame

    scores = scores_frame(obs, criteria, per_domain=False).drop(columns="domain").rename(columns={"value": "score"})
    measured = costs.rename(columns={"loss_change": "cost", "lo": "cost_lo", "hi": "cost_hi"})
    return scores.merge(measured[["layer", "expert", "cost", "cost_lo", "cost_hi"]], on=["layer", "expert"])


def ablation_reading(costs: pd.DataFrame, table: pd.DataFrame, seconds: float | None = None) -> str:
    """A few sentences on the ablation and each criterion's rank correlation with it, every number computed.

    ``print(ablation_reading(costs, table))`` after `single_expert_ablation` and `ablation_correlation`.
    """
    costly = costs[costs["lo"] > 0]
    lines = [
        f"**Reading.** Masking each of {len(costs)} experts alone ({costs['layer'].nunique()} MoE layers, "
        f"{int(costs['tokens'].iloc[0])} held-out tokens"
        + (f", {seconds:.1f} s" if seconds is not None else "")
        + f") raised the loss by {costs['loss_change'].median():+.4f} nats per token at the median "
        f"(max {costs['loss_change'].max():+.4f}); {len(costly)} of them raised it beyond their 95 % interval."
    ]
    summary = table.groupby("criterion", sort=False).agg(
        rho=("rho", "mean"), lo=("lo", "mean"), hi=("hi", "mean"), chance=("chance_hi", "mean")
    )
    summary["above"] = (
        table.assign(above=table["lo"] > table["chance_hi"]).groupby("criterion", sort=False)["above"].sum()
    )
    layers = table["layer"].nunique()
    for criterion, row in summary.sort_values("rho", ascending=False).iterrows():
        lines.append(
            f"- {display_name(criterion)}: mean rank correlation with the ablation cost {row.rho:+.2f} "
            f"(per-layer intervals averaging [{row.lo:+.2f}, {row.hi:+.2f}]); its interval clears the "
            f"chance band (|rho| < {row.chance:.2f}) in {int(row.above)} of {layers} layers."
        )
    return "\n".join(lines)
