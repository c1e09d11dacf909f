"""Non-uniform budgets compared at equal size: uniform REAP, the global budget, water-filling, evolution.

    >>> from reapkit.data import calibration_batches
    >>> search_batches = calibration_batches("code:2,prose:2", tokenizer, batch_size=2, max_length=32, split="train")
    >>> frame = budget_comparison(model, obs, search_batches, eval_batches[:2], ratios=[0.5], generations=1,
    ...                           population=2, resamples=200, progress=False)
    >>> frame.search.unique().tolist()
    ['uniform', 'global', 'water', 'evolution']
    >>> frame.columns.tolist()
    ['ratio', 'kept', 'search', 'counts', 'metric', 'value', 'lo', 'hi', 'delta', 'delta_lo', 'delta_hi', 'vs_global', 'vs_global_lo', 'vs_global_hi', 'criterion']
    >>> budget_reading(frame).split(". ")[0]
    '**Reading.** At 50% of experts removed (32 experts kept in all)...'

Every plan keeps the same number of experts in all and each layer keeps its best experts by the
criterion; only the count per layer differs. The evolutionary search scores its candidates on
`search_batches`; everything here is measured on `eval_batches` (keep them apart: the reported
numbers are then held out from the search). Each metric (KL to the unpruned model, top-1 agreement
with it, loss) comes with its 95% bootstrap interval over evaluation sequences and its paired
difference to uniform REAP on the same sequences (`reapkit.measure.stats.bootstrap`, `minus=`).
`reapkit.plot.budget.budget_figure` draws the frame.
"""

from __future__ import annotations

import pandas as pd

from reapkit.compress.prune import mask_experts
from reapkit.measure.budget_search import evolve_counts
from reapkit.measure.evaluate import reference_outputs, sequence_metrics
from reapkit.measure.stats import RESAMPLES, bootstrap
from reapkit.select.budget import water_plan
from reapkit.select.plan import PruningPlan, pruned_count

__all__ = ["SEARCH_NAMES", "budget_plans", "budget_comparison", "budget_reading"]

#: What each search is called in sentences.
SEARCH_NAMES = {
    "uniform": "uniform REAP",
    "global": "the global budget",
    "water": "water-filling",
    "evolution": "the evolutionary search",
}
METRICS = ("kl", "agreement", "loss")


def budget_plans(model, obs, search_batches, ratio: float, criterion: str = "reap", **search) -> dict:
    """`{search: PruningPlan}` keeping as many experts in all as a uniform plan at `ratio`.

    `search`: options of `reapkit.measure.budget_search.evolve_counts` (generations, population, seed, ...).
    """
    total = sum(n - pruned_count(n, ratio) for n in obs.num_experts)
    found = evolve_counts(model, obs, search_batches, criterion, total=total, **search)
    return {
        "uniform": PruningPlan.from_observations(obs, criterion, ratio=ratio),
        "global": PruningPlan.from_global_budget(obs, criterion, total=total),
        "water": water_plan(obs, criterion, total=total),
        "evolution": found.plan(obs),
    }


def budget_comparison(
    model,
    obs,
    search_batches,
    eval_batches,
    *,
    ratios=(0.25, 0.5),
    criterion: str = "reap",
    resamples: int = RESAMPLES,
    seed: int = 0,
    progress: bool = True,
    **search,
) -> pd.DataFrame:
    """A tidy frame: per ratio, search and metric, the value on `eval_batches` with its interval (`lo`, `hi`),
    the paired difference to uniform REAP (`delta`, `delta_lo`, `delta_hi`) and to today's global budget
    (`vs_global`, `vs_global_lo`, `vs_global_hi`); `counts` is the kept experts per layer ("10,7,8,7").
    `search`: options of `evolve_counts` (generations, population, fitness)."""
    reference = reference_outputs(model, eval_batches, progress=False)
    rows = []
    for ratio in ratios:
        plans = budget_plans(model, obs, search_batches, ratio, criterion, seed=seed, progress=progress, **search)
        sequences = {}
        for name, plan in plans.items():
            with mask_experts(model, plan):
                sequences[name] = sequence_metrics(model, eval_batches, reference=reference, progress=False)
        tokens = sequences["uniform"]["tokens"].to_numpy(float)
        for name, plan in plans.items():
            counts = ",".join(str(len(plan.kept[layer])) for layer in plan.layers)
            for metric in METRICS:
                mine = sequences[name][metric].to_numpy() * tokens
                value = bootstrap(mine, tokens, resamples=resamples, seed=seed)
                deltas = [
                    bootstrap(
                        mine, tokens, minus=sequences[base][metric].to_numpy() * tokens, resamples=resamples, seed=seed
                    )
                    for base in ("uniform", "global")
                ]
                rows.append((ratio, plan.total_kept, name, counts, metric, *value, *deltas[0], *deltas[1]))
    columns = [
        "ratio", "kept", "search", "counts", "metric", "value", "lo", "hi",
        "delta", "delta_lo", "delta_hi", "vs_global", "vs_global_lo", "vs_global_hi",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).assign(criterion=criterion)


def _verdict(metric: str, lo: float, hi: float) -> str:
    if lo <= 0 <= hi:
        return "within noise"
    better = (hi < 0) if metric in ("kl", "loss") else (lo > 0)
    return "better, beyond noise" if better else "worse, beyond noise"


def budget_reading(frame: pd.DataFrame, metrics=("kl", "agreement")) -> str:
    """Sentences reading `budget_comparison`: per ratio, each non-uniform search against uniform REAP."""
    units = {"kl": ("KL to the unpruned model", " nats"), "agreement": ("top-1 agreement", ""), "loss": ("loss", "")}
    sentences = []
    for ratio, part in frame.groupby("ratio", sort=True):
        kept = int(part.kept.iloc[0])
        uniform = part[part.search == "uniform"].set_index("metric")
        sentences.append(
            f"At {ratio:.0%} of experts removed ({kept} experts kept in all), uniform REAP keeps "
            f"{uniform.counts.iloc[0]} per layer, with "
            + " and ".join(f"{units[m][0]} {uniform.value[m]:.3f}{units[m][1]}" for m in metrics)
        )
        for search in [s for s in dict.fromkeys(part.search) if s != "uniform"]:
            rows = part[part.search == search].set_index("metric")
            said = [
                f"{units[m][0]} {rows.value[m]:.3f} (difference {rows.delta[m]:+.3f}, 95% CI "
                f"{rows.delta_lo[m]:+.3f} to {rows.delta_hi[m]:+.3f}: {_verdict(m, rows.delta_lo[m], rows.delta_hi[m])})"
                for m in metrics
            ]
            if search != "global" and "vs_global" in rows.columns:  # frames saved before the column existed lack it
                said += [
                    f"against the global budget, {units[m][0]} {rows.vs_global[m]:+.3f} (95% CI "
                    f"{rows.vs_global_lo[m]:+.3f} to {rows.vs_global_hi[m]:+.3f}: "
                    f"{_verdict(m, rows.vs_global_lo[m], rows.vs_global_hi[m])})"
                    for m in metrics
                ]
            sentences.append(
                f"{SEARCH_NAMES.get(search, search).capitalize()} keeps {rows.counts.iloc[0]}: " + "; ".join(said)
            )
    return "**Reading.** " + ". ".join(sentences) + "."
