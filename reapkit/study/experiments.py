"""The compression study: REAP against other criteria, random pruning, merging and a global budget.

    >>> sequences = study_sequences(model, obs, eval_batches, ratios=[0.5], criteria=["reap", "frequency"],
    ...                             random_seeds=[0], merges=["hc_smoe"])   # one row per variant and sequence
    >>> results = study_results(sequences)      # one row per variant and domain; compression_study does both
    >>> results[results.domain == "all"][["label", "ratio", "loss", "loss_lo", "loss_hi", "delta_loss"]].round(2)
              label  ratio  loss  loss_lo  loss_hi  delta_loss
    4          reap    0.5  4.02     3.47     4.56        1.46
    9     frequency    0.5  3.70     2.70     4.69        1.14
    14       random    0.5  4.45     3.63     5.17        1.88
    19      hc_smoe    0.5  5.21     4.57     5.79        2.65
    24  global_reap    0.5  3.75     3.19     4.26        1.18
    >>> from reapkit.study.findings import summarise
    >>> print(summarise(sequences))             # the numbers in plain words
    ### Compression: REAP against each baseline
    ...

At each ratio, REAP against the other pruning criteria (frequency, soft frequency, mean activation
norm, and any other registered), random pruning (several seeds), expert merging by any registered
merge method (`reapkit.select.merge_methods`) keeping as many experts in all, each evaluated as its
reference code evaluates it (the router tied or not), and non-uniform plans with the same total
number of experts: the global budget (`PruningPlan.from_global_budget`) and, with
`budget_searches`, water-filling and an evolutionary search of the per-layer counts. Every variant is scored per evaluation
domain by loss, perplexity, KL to the unpruned model and top-1 agreement with it; the unpruned
model's next-token distributions are computed once (`reference_outputs`).

The second claim, that calibration decides which experts survive, is `reapkit.study.sensitivity`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reapkit.errors import InvalidInput, ReapkitError
from reapkit.measure.schema import interval_columns as _interval
from reapkit.measure.stats import RESAMPLES
from reapkit.select.budget import check_search
from reapkit.select.criteria import STUDY_CRITERIA, check_ratio
from reapkit.select.plan import pruned_count

__all__ = [
    "check_ratios",
    "parameter_count",
    "MIX",
    "RATIOS",
    "MERGES",
    "BUDGETS",
    "COLUMNS",
    "SEQUENCE_COLUMNS",
    "Job",
    "study_jobs",
    "evaluate_job",
    "study_sequences",
    "study_results",
    "compression_study",
    "results_table",
]

RATIOS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625)
MERGES = ("m_smoe", "hc_smoe")
#: Non-uniform budgets at the uniform plans' total: the global budget, water-filling, the evolutionary search.
BUDGETS = ("global", "water", "evolution")
_VARIANT = [
    "method",
    "criterion",
    "label",
    "seed",
    "ratio",
    "experts_kept",
    "experts_total",
    "kept_routing",
    "parameters",
]
#: Columns of the `compression_study` frame, in order.
COLUMNS = [
    *_VARIANT,
    "domain",
    "tokens",
    *_interval("loss"),
    "perplexity",
    *_interval("kl"),
    *_interval("agreement"),
    *_interval("delta_loss"),
]
#: Columns of the `study_sequences` frame: one row per variant and evaluation sequence.
SEQUENCE_COLUMNS = [*_VARIANT, "domain", "sequence", "tokens", "loss", "kl", "agreement", "delta_loss"]
MIX = "mix"


def check_ratios(ratios) -> list[float]:
    ratios = [ratios] if isinstance(ratios, (int, float)) else list(ratios)
    if not ratios:
        raise InvalidInput("ratios must be fractions of experts removed in [0, 1), got []")
    return sorted(dict.fromkeys(check_ratio(r, "ratios") for r in ratios))


# --------------------------------------------------------------------------------------------
# (a) compression study: job building, one job, result writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One variant of the study: `method` (prune / merge, or a non-uniform budget: global / water /
    evolution) by `criterion` at `ratio` (`seed`: random pruning only). A new study arm is a new kind
    of job: add it in `study_jobs` and give `evaluate_job` the plan or model it evaluates."""

    method: str
    criterion: str
    seed: int | None
    ratio: float

    @property
    def label(self) -> str:
        """One name per curve: the criterion, or ``<budget>_<criterion>`` (``global_reap``, ``water_reap``, ...)."""
        return f"{self.method}_{self.criterion}" if self.method in BUDGETS else self.criterion


def study_jobs(
    obs,
    *,
    ratios=RATIOS,
    criteria=STUDY_CRITERIA,
    random_seeds=(0, 1, 2),
    merges=MERGES,
    global_budget=True,
    budget_searches=(),
) -> tuple[list[Job], list[str]]:
    """The jobs of a compression study and notes on the combinations that cannot be built.

    >>> jobs, notes = study_jobs(obs, ratios=[0.5], criteria=["reap"], random_seeds=[], merges=[])
    >>> jobs
    [Job(method='prune', criterion='reap', seed=None, ratio=0.5), Job(method='global', ...)]
    """
    from reapkit.select.criteria import check_criterion
    from reapkit.select.merge import _check_method

    ratios = check_ratios(ratios)
    criteria = [check_criterion(c) for c in ([criteria] if isinstance(criteria, str) else criteria) if c != "random"]
    random_seeds = [int(s) for s in ([random_seeds] if isinstance(random_seeds, int) else (random_seeds or []))]
    merges = [merges] if isinstance(merges, str) else list(merges or [])
    for method in merges:
        _check_method(method)
    global_criterion = "reap" if global_budget is True else (check_criterion(global_budget) if global_budget else None)
    searches = [budget_searches] if isinstance(budget_searches, str) else list(budget_searches or [])
    budget_searches = [check_search(s) for s in searches]
    if budget_searches and not global_criterion:
        raise InvalidInput(
            "budget_searches share the global budget's criterion; set global_budget (True or a criterion)"
        )
    sizes, top_k = list(obs.num_experts), obs.top_k
    notes: list[str] = []
    jobs: list[Job] = []
    for ratio in ratios:
        counts = [n - pruned_count(n, ratio) for n in sizes]
        if min(counts) < top_k:
            notes.append(
                f"ratio {ratio:g}: a layer would keep {min(counts)} experts, fewer than top-k = {top_k}; "
                "every method skipped at this ratio"
            )
            continue
        jobs += [Job("prune", c, None, ratio) for c in criteria]
        jobs += [Job("prune", "random", s, ratio) for s in random_seeds]
        if merges and len(set(counts)) > 1:
            notes.append(
                f"ratio {ratio:g}: layers have different numbers of experts ({sorted(set(sizes))}), and merging "
                "reduces every layer to one count; merges skipped"
            )
        else:
            jobs += [Job("merge", m, None, ratio) for m in merges]
        if global_criterion:
            jobs += [
                Job(search, global_criterion, None, ratio) for search in dict.fromkeys(["global", *budget_searches])
            ]
    return jobs, notes


def _kept_routing(obs, plan) -> float:
    """Share of the calibration tokens' top-k assignments that went to the plan's kept experts (mean over layers)."""
    counts = obs.pooled(names=("count",))["count"].double().numpy()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return float(np.mean([shares[pos, plan.kept[layer]].sum() for pos, layer in enumerate(obs.layers)]))


def parameter_count(model, kept: dict) -> int:
    """Parameters `model` has once its MoE layer L (decoder index) keeps kept[L] experts: each expert
    removed (pruned, or merged into another) takes its weights and its router row with it.

        >>> parameter_count(model, {layer: 8 for layer in obs.layers})
        2168192
    """
    from reapkit.model.discover import architecture_for

    arch = architecture_for(model)
    total = sum(p.numel() for p in model.parameters())
    for layer, block in arch.moe_blocks(model):
        if layer in kept:
            experts = arch.router_weight_of(block).shape[0]
            per_expert = sum(p.numel() for p in arch.experts_of(block).parameters())
            per_expert += sum(p.numel() for p in arch.router_of(block).parameters())
            total -= (experts - int(kept[layer])) * per_expert // experts
    return int(total)


def evaluate_job(
    model, obs, job: Job, eval_batches, *, reference, unpruned: pd.DataFrame, margin: int = 0, search=None
) -> pd.DataFrame:
    """Evaluate one job: its `sequence_metrics` with `delta_loss` against `unpruned` (the unpruned
    model's) per sequence, and the job's columns (method, criterion, label, seed, ratio,
    experts_kept, experts_total, kept_routing). Raises a ReapkitError when the job cannot be built.

    `search`: for an ``evolution`` job, the batches its candidates are scored on (never `eval_batches`)
    and the options of `reapkit.measure.budget_search.evolve_counts`, ``{"batches": ..., "generations": 4}``."""
    import copy

    from reapkit.compress.merge import apply_merge
    from reapkit.compress.prune import mask_experts
    from reapkit.measure.evaluate import sequence_metrics
    from reapkit.select.merge import plan_merge
    from reapkit.select.merge_methods import merge_method
    from reapkit.select.plan import PruningPlan

    counts = [n - pruned_count(n, job.ratio) for n in obs.num_experts]
    total = sum(counts)
    frame = unpruned  # a variant that changes nothing is the model itself
    if job.method == "merge":  # evaluated as its reference code evaluates it (the router tied, or not)
        plan = plan_merge(model, obs, method=job.criterion, keep=counts[0])
        if not all(len(g) == 1 for groups in plan.groups.values() for g in groups):
            router = merge_method(job.criterion).reference_router
            merged = apply_merge(copy.deepcopy(model), plan, router=router)
            frame = sequence_metrics(merged, eval_batches, reference=reference, progress=False)
            del merged
        layer_counts = {layer: len(plan.groups[layer]) for layer in plan.layers}  # M-SMoE, Sub-MoE: uneven
        kept, routing = sum(layer_counts.values()) / len(layer_counts), float("nan")
    else:
        if job.method in BUDGETS:
            plan = _budget_plan(model, obs, job, total, margin, search)
            kept = plan.total_kept
        else:
            plan = PruningPlan.from_observations(obs, job.criterion, ratio=job.ratio, seed=job.seed or 0)
            kept = counts[0] if len(set(counts)) == 1 else total / len(counts)
        routing = _kept_routing(obs, plan)
        layer_counts = {layer: len(plan.kept[layer]) for layer in plan.layers}
        if any(plan.removed(layer) for layer in plan.layers):
            with mask_experts(model, plan):
                frame = sequence_metrics(model, eval_batches, reference=reference, progress=False)
    return frame.assign(
        delta_loss=frame["loss"] - unpruned["loss"].to_numpy(),
        method=job.method,
        criterion=job.criterion,
        label=job.label,
        seed=job.seed,
        ratio=job.ratio,
        experts_kept=kept,
        experts_total=total,
        kept_routing=routing,
        parameters=parameter_count(model, layer_counts),
    )


def _budget_plan(model, obs, job: Job, total: int, margin: int, search):
    """The non-uniform plan of a global / water / evolution job keeping `total` experts in all."""
    from reapkit.measure.budget_search import evolve_counts
    from reapkit.select.budget import water_plan
    from reapkit.select.plan import PruningPlan

    if job.method == "global":
        return PruningPlan.from_global_budget(obs, job.criterion, total=total, margin=margin)
    if job.method == "water":
        return water_plan(obs, job.criterion, total=total, margin=margin)
    options = dict(search or {})
    batches = options.pop("batches", None)
    if not batches:
        raise InvalidInput(
            "the evolutionary budget search needs search batches (calibration tokens): pass search_batches"
        )
    found = evolve_counts(model, obs, batches, job.criterion, total=total, margin=margin, progress=False, **options)
    return found.plan(obs)


def study_sequences(
    model,
    obs,
    eval_batches,
    *,
    ratios=RATIOS,
    criteria=STUDY_CRITERIA,
    random_seeds=(0, 1, 2),
    merges=MERGES,
    global_budget=True,
    budget_searches=(),
    search_batches=None,
    search_options=None,
    margin: int = 0,
    reference=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Every job of `study_jobs`, run by `evaluate_job`: one row per job and evaluation sequence, with
    :data:`SEQUENCE_COLUMNS` (the per-sequence values every interval of the study resamples).
    Skipped combinations are in ``frame.attrs["notes"]`` and issued as one warning.

    `budget_searches` (``"water"``, ``"evolution"``) add non-uniform plans beside the global budget, with
    its criterion and total; the evolutionary search scores its candidates on `search_batches`
    (calibration tokens, never `eval_batches`) with `search_options` of `evolve_counts` (generations, ...)."""
    import torch
    from tqdm.auto import tqdm

    from reapkit.measure.evaluate import reference_outputs, sequence_metrics

    jobs, notes = study_jobs(
        obs, ratios=ratios, criteria=criteria, random_seeds=random_seeds, merges=merges, global_budget=global_budget,
        budget_searches=budget_searches,
    )  # fmt: skip
    search = {"batches": search_batches, **(search_options or {})}
    obs.check_model(model)
    if reference is None:
        reference = reference_outputs(model, eval_batches, dtype=torch.float32, progress=False)
    unpruned = sequence_metrics(model, eval_batches, reference=reference, progress=False)
    frames = []
    for job in tqdm(jobs, desc="study", unit="variant", disable=not progress):
        try:
            frames.append(
                evaluate_job(
                    model, obs, job, eval_batches, reference=reference, unpruned=unpruned, margin=margin, search=search
                )
            )
        except ReapkitError as error:  # a combination these observations cannot make; a bug still stops
            notes.append(f"{job.method} {job.criterion} at ratio {job.ratio:g}: skipped ({error})")
    sequences = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SEQUENCE_COLUMNS)
    sequences["seed"] = sequences["seed"].astype("Int64")
    sequences = sequences[SEQUENCE_COLUMNS]
    sequences.attrs["notes"] = notes
    if notes:
        warnings.warn("compression study skipped some combinations:\n  " + "\n  ".join(notes), stacklevel=2)
    return sequences


def study_results(sequences: pd.DataFrame, *, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """The results frame (:data:`COLUMNS`) of `study_sequences`: per variant and domain (and
    ``"all"``), token-weighted means with 95 % bootstrap intervals over evaluation sequences;
    `delta_loss` is paired with the unpruned model on the same sequences."""
    from reapkit.measure.evaluate import aggregate

    sequences = sequences.assign(**{k: np.nan for k in _VARIANT if k not in sequences.columns})  # older frames
    keys = _VARIANT
    frames = []
    for values, part in sequences.groupby(keys, sort=False, dropna=False):
        frame = aggregate(part, resamples=resamples, seed=seed)
        frames.append(frame.assign(**dict(zip(keys, values))))
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    results["seed"] = results["seed"].astype("Int64")
    results = results[COLUMNS]
    results.attrs["notes"] = list(sequences.attrs.get("notes", []))
    return results


def compression_study(model, obs, eval_batches, *, resamples: int = RESAMPLES, **options) -> pd.DataFrame:
    """Every method at every ratio, evaluated per domain against the unpruned model:
        ``study_results(study_sequences(model, obs, eval_batches, **options))`` (keep the sequences
        for `summarise`'s paired gaps; `options` are `study_sequences`'s: ratios, criteria, random_seeds,
        merges, global_budget, margin, reference, progress).

        Pruning criteria are applied by masking the router (`mask_experts`, identical to removing the
        experts); ``random`` runs once per seed of `random_seeds`; each merge method of `merges` is
        applied to a deep copy of `model` (so it needs memory for a second model) reduced to the same
        number of experts per layer; `global_budget` (True = ``"reap"``, or a criterion name, or
        False) adds a non-uniform plan keeping the same total number of experts across layers, each
        layer keeping at least top-k + `margin`. Combinations that cannot be built (fewer experts than
        top-k, group-limited routing constraints, ...) are skipped; the reasons are in
        ``frame.attrs["notes"]`` and are issued as one warning.

        `reference`: a `ReferenceOutputs` of the unpruned model on `eval_batches` (computed here in
        float32 when None, so ratio 0 gives KL 0 and agreement 1 exactly).

        Returns a tidy frame with :data:`COLUMNS`: `method` (prune / merge / global), `criterion`
        (pruning criterion, ``random``, or merge method), `label` (criterion, or ``global_<criterion>``:
        one name per curve), `seed` (random pruning only), `ratio`, `experts_kept` (per layer; the
        total over layers for global plans), `experts_total` (over all MoE layers), `kept_routing` (pruning
        only: the share of the calibration tokens' top-k assignments that went to the kept experts, mean
        over layers; low when a criterion keeps rarely routed experts), `parameters` (of the compressed
    model: each removed expert takes its weights and router row), `domain` (each
        evaluation domain and ``"all"``), `tokens`, then `loss`, `perplexity`, `kl` (mean KL(unpruned ||
        variant), nats), `agreement` (top-1) and `delta_loss` (loss - the unpruned loss), each metric
        with its 95 % bootstrap interval over evaluation sequences (`loss_lo`, `loss_hi`, ...).
    """
    return study_results(study_sequences(model, obs, eval_batches, **options), resamples=resamples)


def results_table(results: pd.DataFrame, **extra) -> pd.DataFrame:
    """The study frame with `extra` constant columns (e.g. model=, calibration=), the table notebook 04 reads."""
    return results.assign(**extra)
