"""Ground truth for the criteria: what removing each expert alone costs, and how each criterion ranks it.

    >>> costs = single_expert_ablation(model, eval_batches, layers=[3], limit=256)   # held-out tokens
    >>> list(costs.columns)
    ['layer', 'expert', 'loss_change', 'lo', 'hi', 'tokens']
    >>> table = ablation_correlation(obs, costs, ["reap", "frequency"])
    >>> table[["layer", "criterion", "rho", "lo", "hi"]].round(2)
       layer  criterion   rho    lo    hi
    0      3       reap -0.20 -0.71  0.33
    1      3  frequency -0.32 -0.78  0.21

Each expert is masked alone (`reapkit.compress.prune.mask_experts` with a plan that drops only it: no
copy of the model), and its cost is the paired difference of the token-weighted mean loss over the
same held-out sequences, masked minus unpruned, with a paired bootstrap interval
(`reapkit.measure.stats.bootstrap`). Masking an expert computes exactly what removing it does
(tests/unit/test_ablation.py), so this is the loss change pruning that one expert causes.
`ablation_correlation` then gives, per MoE layer and criterion, Spearman's rank correlation of the
scores with the cost of removing (higher score should mean costlier to remove), a bootstrap interval
over the layer's experts, and the band unrelated rankings of that many experts fall in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from reapkit.errors import InvalidInput
from reapkit.measure.stats import bootstrap

__all__ = ["ablation_correlation", "ablation_reading", "held_out", "single_expert_ablation", "single_expert_plan"]


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


def single_expert_ablation(
    model, batches, *, layers=None, limit: int | None = None, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Per MoE layer and expert: the loss change from masking that expert alone, with a 95 % interval.

    `batches` are held-out tokens (not the calibration ones); `limit` keeps the first batches that
    hold that many tokens, `layers` (decoder indices) the layers to ablate: for large models. One
    forward pass over the batches per expert. Columns: layer, expert, loss_change (nats per token,
    masked minus unpruned), lo, hi (paired bootstrap), tokens.
    """
    from reapkit.compress.prune import mask_experts
    from reapkit.measure.evaluate import sequence_metrics
    from reapkit.model.layer import moe_layers

    batches = held_out(batches, limit)
    sizes = {moe.index: moe.num_experts for moe in moe_layers(model)}
    chosen = sorted(sizes) if layers is None else [int(x) for x in layers]
    unknown = [x for x in chosen if x not in sizes]
    if unknown or not chosen:
        raise InvalidInput(
            f"layers {unknown or chosen} are not MoE layers of this model; MoE layers are {sorted(sizes)}"
        )
    base = sequence_metrics(model, batches, progress=False)
    tokens = base["tokens"].to_numpy(np.float64)
    unpruned = base["loss"].to_numpy(np.float64) * tokens
    rows = []
    pairs = [(layer, expert) for layer in chosen for expert in range(sizes[layer])]
    for layer, expert in tqdm(pairs, desc="ablation", unit="expert", disable=not progress):
        with mask_experts(model, single_expert_plan(model, layer, expert)):
            masked = sequence_metrics(model, batches, progress=False)
        change, lo, hi = bootstrap(masked["loss"].to_numpy(np.float64) * tokens, tokens, minus=unpruned, seed=seed)
        rows.append((layer, expert, change, lo, hi, int(tokens.sum())))
    return pd.DataFrame(rows, columns=["layer", "expert", "loss_change", "lo", "hi", "tokens"])


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


def ablation_reading(costs: pd.DataFrame, table: pd.DataFrame, seconds: float | None = None) -> str:
    """A few sentences on the ablation and each criterion's rank correlation with it, every number computed.

    ``print(ablation_reading(costs, table))`` after `single_expert_ablation` and `ablation_correlation`.
    """
    costly = costs[costs["lo"] > 0]
    lines = [
        f"Masking each of {len(costs)} experts alone ({costs['layer'].nunique()} MoE layers, "
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
            f"- {criterion}: mean rank correlation with the ablation cost {row.rho:+.2f} "
            f"(per-layer intervals averaging [{row.lo:+.2f}, {row.hi:+.2f}]); its interval clears the "
            f"chance band (|rho| < {row.chance:.2f}) in {int(row.above)} of {layers} layers."
        )
    return "\n".join(lines)
