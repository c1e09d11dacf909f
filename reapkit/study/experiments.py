"""The REAP paper's two claims as experiments that run on any model (the demo model: minutes on a CPU).

    >>> results = compression_study(model, obs, eval_batches)          # tidy frame, one row per
    >>> results[results.domain == "all"].pivot_table(                  # method x ratio x domain
    ...     index="ratio", columns="label", values="loss")
    >>> loss, overlap = calibration_sensitivity(model, tokenizer, eval_batches, calibration=obs)
    >>> print(findings.summarise(sequences, sensitivity))               # the numbers in plain words (reapkit.study.findings)

(a) **Compression**: at each ratio, REAP against the other pruning criteria (frequency, soft
frequency, mean activation norm), random pruning (several seeds), expert merging (M-SMoE-, HC-SMoE-
style) reduced to the same number of experts per layer, and a non-uniform plan with the same total
number of experts (`PruningPlan.from_global_budget`). Every variant is scored per evaluation
domain by loss, perplexity, KL to the unpruned model and top-1 agreement with it; the unpruned
model's next-token distributions are computed once (`reference_outputs`).

(b) **Calibration decides which experts survive**: prune with REAP from statistics of each single
calibration domain and of their mix, and measure every evaluation domain; plus how much the kept
expert sets of two calibration sets overlap (mean over layers of the Jaccard index).

Observations keep per-domain statistics, and a domain's statistics are exactly those a
calibration pass on that domain alone would record, so (b) needs one calibration pass, not one per
calibration set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reapkit.data import DOMAINS
from reapkit.measure.evaluate import interval_columns as _interval
from reapkit.measure.schema import UNPRUNED
from reapkit.measure.stats import RESAMPLES, bootstrap, sequence_grid
from reapkit.select.criteria import STUDY_CRITERIA, check_ratio
from reapkit.select.plan import pruned_count

__all__ = [
    "RATIOS",
    "MERGES",
    "COLUMNS",
    "SEQUENCE_COLUMNS",
    "Job",
    "study_jobs",
    "evaluate_job",
    "study_sequences",
    "study_results",
    "compression_study",
    "layer_sensitivity",
    "calibration_sensitivity",
    "Sensitivity",
    "kept_overlap",
    "jaccard_by_layer",
    "chance_overlap",
    "results_table",
]

RATIOS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625)
MERGES = ("m_smoe", "hc_smoe")
_VARIANT = ["method", "criterion", "label", "seed", "ratio", "experts_kept", "experts_total", "kept_routing"]
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


def _check_ratios(ratios) -> list[float]:
    ratios = [ratios] if isinstance(ratios, (int, float)) else list(ratios)
    if not ratios:
        raise ValueError("ratios must be fractions of experts removed in [0, 1), got []")
    return sorted(dict.fromkeys(check_ratio(r, "ratios") for r in ratios))


# --------------------------------------------------------------------------------------------
# (a) compression study: job building, one job, result writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One variant of the study: `method` (prune / merge / global) by `criterion` at `ratio`
    (`seed`: random pruning only). A new study arm is a new kind of job: add it in `study_jobs`
    and give `evaluate_job` the plan or model it evaluates."""

    method: str
    criterion: str
    seed: int | None
    ratio: float

    @property
    def label(self) -> str:
        """One name per curve: the criterion, or ``global_<criterion>``."""
        return f"global_{self.criterion}" if self.method == "global" else self.criterion


def study_jobs(
    obs, *, ratios=RATIOS, criteria=STUDY_CRITERIA, random_seeds=(0, 1, 2), merges=MERGES, global_budget=True
) -> tuple[list[Job], list[str]]:
    """The jobs of a compression study and notes on the combinations that cannot be built.

    >>> jobs, notes = study_jobs(obs, ratios=[0.5], criteria=["reap"], random_seeds=[], merges=[])
    >>> jobs
    [Job(method='prune', criterion='reap', seed=None, ratio=0.5), Job(method='global', ...)]
    """
    from reapkit.select.criteria import check_criterion
    from reapkit.select.merge import _check_method

    ratios = _check_ratios(ratios)
    criteria = [check_criterion(c) for c in ([criteria] if isinstance(criteria, str) else criteria) if c != "random"]
    random_seeds = [int(s) for s in ([random_seeds] if isinstance(random_seeds, int) else (random_seeds or []))]
    merges = [merges] if isinstance(merges, str) else list(merges or [])
    for method in merges:
        _check_method(method)
    global_criterion = "reap" if global_budget is True else (check_criterion(global_budget) if global_budget else None)
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
            jobs.append(Job("global", global_criterion, None, ratio))
    return jobs, notes


def _kept_routing(obs, plan) -> float:
    """Share of the calibration tokens' top-k assignments that went to the plan's kept experts (mean over layers)."""
    counts = obs.pooled(names=("count",))["count"].double().numpy()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    return float(np.mean([shares[pos, plan.kept[layer]].sum() for pos, layer in enumerate(obs.layers)]))


def evaluate_job(
    model, obs, job: Job, eval_batches, *, reference, unpruned: pd.DataFrame, margin: int = 0
) -> pd.DataFrame:
    """Evaluate one job: its `sequence_metrics` with `delta_loss` against `unpruned` (the unpruned
    model's) per sequence, and the job's columns (method, criterion, label, seed, ratio,
    experts_kept, experts_total, kept_routing). Raises ValueError when the job cannot be built."""
    import copy

    from reapkit.compress.merge import apply_merge
    from reapkit.compress.prune import mask_experts
    from reapkit.measure.evaluate import sequence_metrics
    from reapkit.select.merge import plan_merge
    from reapkit.select.plan import PruningPlan

    counts = [n - pruned_count(n, job.ratio) for n in obs.num_experts]
    total = sum(counts)
    frame = unpruned  # a variant that changes nothing is the model itself
    if job.method == "merge":
        plan = plan_merge(model, obs, method=job.criterion, keep=counts[0])
        if not all(len(g) == 1 for groups in plan.groups.values() for g in groups):
            merged = apply_merge(copy.deepcopy(model), plan)
            frame = sequence_metrics(merged, eval_batches, reference=reference, progress=False)
            del merged
        kept, routing = counts[0], float("nan")
    else:
        if job.method == "global":
            plan = PruningPlan.from_global_budget(obs, job.criterion, total=total, margin=margin)
            kept = plan.total_kept
        else:
            plan = PruningPlan.from_observations(obs, job.criterion, ratio=job.ratio, seed=job.seed or 0)
            kept = counts[0] if len(set(counts)) == 1 else total / len(counts)
        routing = _kept_routing(obs, plan)
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
    )


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
    margin: int = 0,
    reference=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Every job of `study_jobs`, run by `evaluate_job`: one row per job and evaluation sequence, with
    :data:`SEQUENCE_COLUMNS` (the per-sequence values every interval of the study resamples).
    Skipped combinations are in ``frame.attrs["notes"]`` and issued as one warning."""
    import torch
    from tqdm.auto import tqdm

    from reapkit.measure.evaluate import reference_outputs, sequence_metrics

    jobs, notes = study_jobs(
        obs, ratios=ratios, criteria=criteria, random_seeds=random_seeds, merges=merges, global_budget=global_budget
    )
    obs.check_model(model)
    if reference is None:
        reference = reference_outputs(model, eval_batches, dtype=torch.float32, progress=False)
    unpruned = sequence_metrics(model, eval_batches, reference=reference, progress=False)
    frames = []
    for job in tqdm(jobs, desc="study", unit="variant", disable=not progress):
        try:
            frames.append(
                evaluate_job(model, obs, job, eval_batches, reference=reference, unpruned=unpruned, margin=margin)
            )
        except ValueError as error:
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
    over layers; low when a criterion keeps rarely routed experts), `domain` (each
    evaluation domain and ``"all"``), `tokens`, then `loss`, `perplexity`, `kl` (mean KL(unpruned ||
    variant), nats), `agreement` (top-1) and `delta_loss` (loss - the unpruned loss), each metric
    with its 95 % bootstrap interval over evaluation sequences (`loss_lo`, `loss_hi`, ...).
    """
    return study_results(study_sequences(model, obs, eval_batches, **options), resamples=resamples)


def results_table(results: pd.DataFrame, **extra) -> pd.DataFrame:
    """The study frame with `extra` constant columns (e.g. model=, calibration=), the table notebook 04 reads."""
    return results.assign(**extra)


# --------------------------------------------------------------------------------------------
# Per-layer sensitivity
# --------------------------------------------------------------------------------------------


def layer_sensitivity(
    model,
    obs,
    eval_batches,
    *,
    criterion: str = "reap",
    ratio: float = 0.5,
    reference=None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Prune `ratio` of one MoE layer at a time (by `criterion`, the others untouched) and measure it.

        >>> layer_sensitivity(model, obs, eval_batches)[lambda f: f.domain == "all"][["layer", "delta_loss", "delta_loss_lo"]]

    Returns one row per MoE layer and evaluation domain (and ``"all"``): layer, criterion, ratio,
    experts_kept, then the columns of `reapkit.measure.evaluate.aggregate` with `delta_loss` (+ interval)
    paired with the unpruned model on the same sequences.
    """
    import torch
    from tqdm.auto import tqdm

    from reapkit.compress.prune import mask_experts
    from reapkit.measure.evaluate import aggregate, reference_outputs, sequence_metrics
    from reapkit.select.criteria import check_criterion
    from reapkit.select.plan import PruningPlan

    check_criterion(criterion)
    ratio = _check_ratios(ratio)[0]
    obs.check_model(model)
    if reference is None:
        reference = reference_outputs(model, eval_batches, dtype=torch.float32, progress=False)
    unpruned = sequence_metrics(model, eval_batches, reference=reference, progress=False)
    full = PruningPlan.from_observations(obs, criterion, ratio=ratio, seed=seed)
    frames = []
    for layer in tqdm(full.layers, desc="layers", unit="layer", disable=not progress):
        kept = {
            other: (full.kept[other] if other == layer else list(range(full.num_experts[other])))
            for other in full.layers
        }
        with mask_experts(model, PruningPlan(kept, full.num_experts, criterion, ratio)):
            sequences = sequence_metrics(model, eval_batches, reference=reference, progress=False)
        frame = aggregate(sequences, baseline=unpruned, resamples=resamples, seed=seed)
        frames.append(frame.assign(layer=layer, criterion=criterion, ratio=ratio, experts_kept=len(full.kept[layer])))
    result = pd.concat(frames, ignore_index=True)
    return result[["layer", "criterion", "ratio", "experts_kept", *[c for c in frame.columns]]]


# --------------------------------------------------------------------------------------------
# (b) calibration sensitivity
# --------------------------------------------------------------------------------------------


def jaccard_by_layer(a, b) -> np.ndarray:
    """Jaccard index of the kept experts of two plans, per MoE layer of `a`."""
    values = []
    for layer in a.layers:
        x, y = set(a.kept[layer]), set(b.kept.get(layer, []))
        values.append(len(x & y) / len(x | y) if x | y else 1.0)
    return np.asarray(values)


def kept_overlap(plans: dict) -> pd.DataFrame:
    """Mean over layers of the Jaccard index of the kept experts of every pair of plans {name: PruningPlan}."""
    names = list(plans)
    matrix = np.array([[jaccard_by_layer(plans[a], plans[b]).mean() for b in names] for a in names])
    return pd.DataFrame(matrix, index=pd.Index(names, name="calibration"), columns=pd.Index(names, name="calibration"))


def chance_overlap(plan) -> float:
    """Expected mean Jaccard index over layers of two random kept sets of the plan's sizes (the chance line)."""
    from reapkit.study.tables import expected_jaccard

    return float(np.mean([expected_jaccard(plan.num_experts[layer], len(plan.kept[layer])) for layer in plan.layers]))


@dataclass
class Sensitivity:
    """What `calibration_sensitivity` measured (tidy frames, one schema):

    - `loss`: eval_domain, calibration (``"unpruned"``, each domain, ``"mix"``), loss, loss_lo,
      loss_hi, delta_loss, delta_loss_lo, delta_loss_hi: 95 % bootstrap over evaluation sequences
      and calibration seeds (delta paired with the unpruned model);
    - `overlap`: calibration_a, calibration_b, jaccard, jaccard_lo, jaccard_hi, chance, repeats:
      mean over layers (and calibration seeds) of the Jaccard index of the kept experts, bootstrap
      over layers and seeds; a == b compares the kept sets of two calibration seeds of one set (the
      sample's own noise; NaN with one seed); `chance` is the expected Jaccard of random kept sets;
    - `sequences`: calibration, repeat, domain, sequence, tokens, loss, delta_loss.
    """

    loss: pd.DataFrame
    overlap: pd.DataFrame
    sequences: pd.DataFrame
    ratio: float
    criterion: str

    def loss_matrix(self, value: str = "loss") -> pd.DataFrame:
        """Evaluation domain x calibration set of `value` (rows: domains then "all")."""
        matrix = self.loss.pivot(index="eval_domain", columns="calibration", values=value)
        columns = list(dict.fromkeys(self.loss["calibration"]))
        rows = list(dict.fromkeys(self.loss["eval_domain"]))
        return matrix.loc[rows, columns]

    def overlap_matrix(self, value: str = "jaccard") -> pd.DataFrame:
        """Calibration set x calibration set of `value` (symmetric)."""
        names = list(dict.fromkeys(self.overlap["calibration_a"]))
        matrix = pd.DataFrame(
            np.nan, index=pd.Index(names, name="calibration"), columns=pd.Index(names, name="calibration")
        )
        for row in self.overlap.itertuples():
            matrix.loc[row.calibration_a, row.calibration_b] = matrix.loc[row.calibration_b, row.calibration_a] = (
                getattr(row, value)
            )
        return matrix


def _calibration_observations(
    model, tokenizer, calibration, domains, *, samples, max_length, batch_size, calibration_seeds, cache_dir, progress
) -> list:
    """One `Observations` per calibration repeat (see `calibration_sensitivity`)."""
    from reapkit.observe.observations import Observations
    from reapkit.observe.recorder import observe, observe_cached

    def observed(batches, info):
        return (
            observe_cached(model, batches, cache_dir, calibration=info, progress=progress)
            if cache_dir
            else observe(model, batches, calibration=info, progress=progress)
        )

    if isinstance(calibration, Observations):
        calibration = [calibration]
    if isinstance(calibration, (list, tuple)) and calibration and all(isinstance(o, Observations) for o in calibration):
        for obs in calibration:
            obs.check_model(model)
        return list(calibration)
    if calibration is not None:
        return [observed(list(calibration), {"source": "batches"})]
    from reapkit.data import calibration_batches

    if tokenizer is None:
        raise ValueError(
            "calibration_sensitivity builds its calibration sets from text, so it needs a tokenizer; "
            "pass tokenizer=..., or calibration= token-id batches or Observations with per-domain statistics"
        )
    spec = ",".join(f"{d}:{samples}" for d in domains)
    return [
        observed(
            calibration_batches(spec, tokenizer, batch_size=batch_size, max_length=max_length, seed=s),
            {"spec": spec, "max_length": max_length, "seed": s},
        )
        for s in calibration_seeds
    ]


def _loss_rows(sequences: pd.DataFrame, *, resamples: int, seed: int) -> pd.DataFrame:
    """Per calibration set and evaluation domain: loss and delta_loss with intervals over sequences and seeds."""
    rows = []
    for name in dict.fromkeys(sequences["calibration"]):
        part = sequences[sequences["calibration"] == name]
        for domain in [*dict.fromkeys(part["domain"]), "all"]:
            cell = part if domain == "all" else part[part["domain"] == domain]
            row = {"eval_domain": domain, "calibration": name}
            for metric in ("loss", "delta_loss"):
                row.update(
                    zip(
                        _interval(metric),
                        bootstrap(*sequence_grid(cell, metric, "repeat"), resamples=resamples, seed=seed),
                    )
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _overlap_rows(plans: dict, names: list, *, resamples: int, seed: int) -> pd.DataFrame:
    """Jaccard of kept sets for every pair of calibration sets (plans[name] = one plan per seed)."""
    rows = []
    for i, a in enumerate(names):
        for b in names[i:]:
            if a == b:
                values = [jaccard_by_layer(x, y) for k, x in enumerate(plans[a]) for y in plans[a][k + 1 :]]
            else:
                values = [jaccard_by_layer(x, y) for x, y in zip(plans[a], plans[b])]
            row = {"calibration_a": a, "calibration_b": b}
            if values:
                values = np.stack(values)
                row.update(
                    zip(
                        _interval("jaccard"),
                        bootstrap(values, np.ones(values.shape[1]), resamples=resamples, seed=seed),
                    )
                )
            else:
                row.update(dict.fromkeys(_interval("jaccard"), float("nan")))
            row.update(chance=chance_overlap(plans[a][0]), repeats=len(values))
            rows.append(row)
    return pd.DataFrame(rows)


def calibration_sensitivity(
    model,
    tokenizer,
    eval_batches,
    *,
    domains=DOMAINS,
    samples: int = 16,
    ratio: float = 0.5,
    criterion: str = "reap",
    calibration=None,
    max_length: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    calibration_seeds=None,
    resamples: int = RESAMPLES,
    cache_dir=None,
    progress: bool = True,
) -> Sensitivity:
    """Prune at `ratio` by `criterion` calibrated on each single domain and on their mix; loss on every domain.

        >>> s = calibration_sensitivity(model, tokenizer, eval_batches, calibration_seeds=(0, 1, 2))
        >>> s.loss_matrix("delta_loss"); s.overlap          # tidy frames with intervals: see `Sensitivity`

    Calibration: `calibration` may be `Observations` (with per-domain statistics, e.g. those of the
    main study: no model pass at all), a list of `Observations` (one per calibration repeat), a list
    of `Batch` (observed here), or None: `samples` sequences of each built-in domain of `domains`
    (calibration split, `max_length` tokens) drawn with each seed of `calibration_seeds` (default
    ``(seed,)``), tokenised with `tokenizer` and observed (cached under `cache_dir` when given). The
    calibration sets are each domain of `domains` the observations hold, and ``"mix"`` (all pooled).
    Each repeat gives its own plans; intervals cover both evaluation sequences and repeats.
    """
    from reapkit.compress.prune import mask_experts
    from reapkit.measure.evaluate import sequence_metrics
    from reapkit.select.criteria import check_criterion
    from reapkit.select.plan import PruningPlan

    check_criterion(criterion)
    ratio = _check_ratios(ratio)[0]
    domains = [domains] if isinstance(domains, str) else list(domains)
    calibration_seeds = [seed] if calibration_seeds is None else [int(s) for s in calibration_seeds]
    repeats = _calibration_observations(
        model,
        tokenizer,
        calibration,
        domains,
        samples=samples,
        max_length=max_length,
        batch_size=batch_size,
        calibration_seeds=calibration_seeds,
        cache_dir=cache_dir,
        progress=progress,
    )
    held = set.intersection(*(set(obs.domains) for obs in repeats))
    sets = [d for d in domains if d in held]
    if not sets:
        raise ValueError(
            f"none of the domains {domains} is in the calibration observations (domains {sorted(held)}); "
            "pass domains= that the calibration data holds"
        )
    missing = [d for d in domains if d not in held]
    if missing:
        warnings.warn(
            f"calibration_sensitivity: domain(s) {missing} are not in the calibration data; left out", stacklevel=2
        )
    names = [*sets, MIX]
    plans = {
        name: [
            PruningPlan.from_observations(
                obs, criterion, ratio=ratio, domains=[name] if name != MIX else sets, seed=seed
            )
            for obs in repeats
        ]
        for name in names
    }
    unpruned = sequence_metrics(model, eval_batches, progress=False)
    frames = [unpruned.assign(delta_loss=0.0, calibration=UNPRUNED, repeat=0)]
    for name in names:
        for repeat, plan in enumerate(plans[name]):
            with mask_experts(model, plan):
                frame = sequence_metrics(model, eval_batches, progress=False)
            frames.append(
                frame.assign(delta_loss=frame["loss"] - unpruned["loss"].to_numpy(), calibration=name, repeat=repeat)
            )
    sequences = pd.concat(frames, ignore_index=True)[
        ["calibration", "repeat", "domain", "sequence", "tokens", "loss", "delta_loss"]
    ]
    return Sensitivity(
        loss=_loss_rows(sequences, resamples=resamples, seed=seed),
        overlap=_overlap_rows(plans, names, resamples=resamples, seed=seed),
        sequences=sequences,
        ratio=ratio,
        criterion=criterion,
    )
