"""The REAP paper's two claims as experiments that run on any model (the demo model: minutes on a CPU).

    >>> results = compression_study(model, obs, eval_batches)          # tidy frame, one row per
    >>> results[results.domain == "all"].pivot_table(                  # method x ratio x domain
    ...     index="ratio", columns="label", values="loss")
    >>> loss, overlap = calibration_sensitivity(model, tokenizer, eval_batches, calibration=obs)
    >>> print(summarise(results, (loss, overlap)))                      # the numbers in plain words

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

from .data import DOMAINS
from .evaluate import interval_columns as _interval
from .plan import pruned_count
from .saliency import STUDY_CRITERIA, check_ratio
from .stats import RESAMPLES, bootstrap

__all__ = [
    "RATIOS",
    "MERGES",
    "COLUMNS",
    "SEQUENCE_COLUMNS",
    "Job",
    "study_jobs",
    "run_job",
    "study_sequences",
    "study_results",
    "compression_study",
    "layer_sensitivity",
    "calibration_sensitivity",
    "Sensitivity",
    "kept_overlap",
    "jaccard_by_layer",
    "chance_overlap",
    "summarise",
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
UNPRUNED = "unpruned"


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
    and give `run_job` the plan or model it evaluates."""

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
    from .merge import _check_method
    from .saliency import check_criterion

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


def run_job(model, obs, job: Job, eval_batches, *, reference, unpruned: pd.DataFrame, margin: int = 0) -> pd.DataFrame:
    """Evaluate one job: its `sequence_metrics` with `delta_loss` against `unpruned` (the unpruned
    model's) per sequence, and the job's columns (method, criterion, label, seed, ratio,
    experts_kept, experts_total, kept_routing). Raises ValueError when the job cannot be built."""
    import copy

    from .evaluate import sequence_metrics
    from .merge import apply_merge, plan_merge
    from .plan import PruningPlan
    from .prune import mask_experts

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
    """Every job of `study_jobs`, run by `run_job`: one row per job and evaluation sequence, with
    :data:`SEQUENCE_COLUMNS` (the per-sequence values every interval of the study resamples).
    Skipped combinations are in ``frame.attrs["notes"]`` and issued as one warning."""
    import torch
    from tqdm.auto import tqdm

    from .evaluate import reference_outputs, sequence_metrics

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
            frames.append(run_job(model, obs, job, eval_batches, reference=reference, unpruned=unpruned, margin=margin))
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
    from .evaluate import aggregate

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
    experts_kept, then the columns of `reapkit.evaluate.aggregate` with `delta_loss` (+ interval)
    paired with the unpruned model on the same sequences.
    """
    import torch
    from tqdm.auto import tqdm

    from .evaluate import aggregate, reference_outputs, sequence_metrics
    from .plan import PruningPlan
    from .prune import mask_experts
    from .saliency import check_criterion

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
    from .analysis import expected_jaccard

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
    from .observations import Observations
    from .observe import observe, observe_cached

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
    from .data import calibration_batches

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
                    zip(_interval(metric), bootstrap(*_grid(cell, metric, "repeat"), resamples=resamples, seed=seed))
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
    from .evaluate import sequence_metrics
    from .plan import PruningPlan
    from .prune import mask_experts
    from .saliency import check_criterion

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


# --------------------------------------------------------------------------------------------
# Plain words
# --------------------------------------------------------------------------------------------


def _md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join([str(frame.index.name or "")] + [str(c) for c in frame.columns]) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    rows = ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in zip(frame.index, frame.to_numpy())]
    return "\n".join([head, rule, *rows])


def _num(value: float, *, sign: bool = False) -> str:
    """3 decimals, or 3 significant digits for tiny numbers (so small gaps do not print as 0.000)."""
    if value != 0 and abs(value) < 0.001:
        return f"{value:+.2e}" if sign else f"{value:.2e}"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def _pct(ratio: float) -> str:
    return f"{ratio:.1%}".replace(".0%", "%")


def _interval_text(estimate: float, lo: float, hi: float, *, sign: bool = False) -> str:
    return f"{_num(estimate, sign=sign)} [{_num(lo, sign=sign)}, {_num(hi, sign=sign)}]"


def _verdict(lo: float, hi: float, *, above: str, below: str) -> str:
    """`above` when the whole interval is above 0, `below` when below, else "within noise"."""
    return above if lo > 0 else below if hi < 0 else "within noise"


def _grid(part: pd.DataFrame, metric: str, repeat: str) -> tuple[np.ndarray, np.ndarray]:
    """(`metric` x tokens as [repeats, sequences], tokens [sequences]): what `bootstrap` resamples."""
    rows = np.unique(part[repeat].fillna(-1).to_numpy(np.int64), return_inverse=True)[1]
    sequences, columns = np.unique(part["sequence"].to_numpy(), return_inverse=True)
    tokens = np.zeros(len(sequences))
    tokens[columns] = part["tokens"].to_numpy(np.float64)
    grid = np.full((rows.max() + 1 if len(rows) else 0, len(sequences)), np.nan)
    grid[rows, columns] = tokens[columns] * part[metric].to_numpy(np.float64)
    return grid, tokens


class _Gaps:
    """Paired bootstrap gaps between curves of a `study_sequences` frame (random: seeds resampled too)."""

    def __init__(self, sequences: pd.DataFrame, *, resamples: int, seed: int):
        self.resamples, self.seed = resamples, seed
        self.parts = dict(iter(sequences.groupby(["label", "ratio"], sort=False)))
        self.cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def matrix(self, label: str, ratio: float, domain: str, metric: str):
        """[seeds, sequences] of metric x tokens, and tokens [sequences]."""
        key = (label, ratio, domain, metric)
        if key not in self.cache:
            part = self.parts[(label, ratio)]
            self.cache[key] = _grid(part if domain == "all" else part[part["domain"] == domain], metric, "seed")
        return self.cache[key]

    def has(self, label: str, ratio: float) -> bool:
        return (label, ratio) in self.parts

    def value(self, label, ratio, domain, metric):
        num, den = self.matrix(label, ratio, domain, metric)
        return bootstrap(num, den, resamples=self.resamples, seed=self.seed)

    def gap(self, label, minus, ratio, domain, metric):
        """(estimate, lo, hi) of metric(label) - metric(minus) on the same sequences."""
        num, den = self.matrix(label, ratio, domain, metric)
        other, _ = self.matrix(minus, ratio, domain, metric)
        return bootstrap(num, den, minus=other, resamples=self.resamples, seed=self.seed)


def _gap_table(gaps: _Gaps, labels: list, ratios: list, kept, *, domain: str, metric: str):
    """Markdown table (REAP's value, each baseline's paired gap to it) and the gaps {baseline: {ratio: (est, lo, hi)}}."""
    cells = pd.DataFrame(
        index=[f"{_pct(r)} ({int(kept[r]) if r in kept.index else '?'} kept)" for r in ratios],
        columns=labels,
        dtype=object,
    )
    cells.index.name = "ratio"
    verdicts: dict[str, dict[float, tuple]] = {label: {} for label in labels if label != "reap"}
    for row, r in zip(cells.index, ratios):
        for label in labels:
            if not (gaps.has(label, r) and gaps.has("reap", r)):
                cells.loc[row, label] = "-"
            elif label == "reap":
                cells.loc[row, label] = f"**{_interval_text(*gaps.value('reap', r, domain, metric))}**"
            else:
                gap = verdicts[label][r] = gaps.gap(label, "reap", r, domain, metric)
                cells.loc[row, label] = _interval_text(*gap, sign=True) + (" *" if gap[1] > 0 or gap[2] < 0 else "")
    return _md_table(cells), verdicts


def _baseline_line(gaps: _Gaps, label: str, found: dict, *, domain: str, metric: str, with_kl: bool) -> str:
    """- vs `label`: at how many ratios REAP is better / worse / within noise, the largest gap, KL."""
    better = [r for r, g in found.items() if g[1] > 0]
    worse = [r for r, g in found.items() if g[2] < 0]
    noise = [r for r in found if r not in better and r not in worse]
    name = f"`{label}`" + (" (mean of seeds)" if label == "random" else "")
    text = f"- vs {name}: REAP is better at {len(better)} of {len(found)} ratios"
    text += f", worse at {', '.join(_pct(r) for r in worse)}" if worse else ""
    text += f", within noise at {', '.join(_pct(r) for r in noise)}" if noise else ""
    big = max(found, key=lambda r: abs(found[r][0]))
    text += f"; the largest gap is {_interval_text(*found[big], sign=True)} at {_pct(big)}"
    if with_kl:
        kl = [gaps.gap(label, "reap", r, domain, "kl") for r in found]
        text += (
            f"; KL to the unpruned model lower for REAP at {sum(g[1] > 0 for g in kl)} of {len(kl)} ratios, "
            f"higher at {sum(g[2] < 0 for g in kl)}"
        )
    return text + "."


def _ranking_lines(gaps: _Gaps, labels: list, ratios: list, *, domain: str, metric: str) -> list[str]:
    """Per ratio: the method with the lowest value, and which others are within noise of it."""
    lines = []
    for r in ratios:
        means = {label: gaps.value(label, r, domain, metric)[0] for label in labels if gaps.has(label, r)}
        if len(means) < 2:
            continue
        order = sorted(means, key=means.get)
        tied = [label for label in order[1:] if gaps.gap(label, order[0], r, domain, metric)[1] <= 0]
        text = f"- At {_pct(r)} the lowest {metric} is `{order[0]}` ({_num(means[order[0]])})"
        if tied:
            text += "; within noise of it: " + ", ".join(f"`{label}`" for label in tied)
        else:
            text += f", ahead of `{order[1]}` by {_interval_text(*gaps.gap(order[1], order[0], r, domain, metric), sign=True)}"
        lines.append(text + ".")
    return lines


def _headline_line(at: dict) -> str:
    """REAP against every baseline at 50 % ({baseline: gap})."""
    beaten = [label for label, g in at.items() if g[1] > 0]
    lost = [label for label, g in at.items() if g[2] < 0]
    noise = [label for label in at if label not in beaten and label not in lost]
    return "- At 50% compression (the paper's headline ratio) REAP " + (
        "beats every baseline."
        if len(beaten) == len(at)
        else f"beats {', '.join(f'`{x}`' for x in beaten) or 'no baseline'}"
        + (f"; loses to {', '.join(f'`{x}`' for x in lost)}" if lost else "")
        + (f"; within noise of {', '.join(f'`{x}`' for x in noise)}" if noise else "")
        + "."
    )


def _compression_section(sequences: pd.DataFrame, *, domain: str, metric: str, resamples: int, seed: int) -> list[str]:
    lines = ["### Compression: REAP against each baseline", ""]
    data = sequences[sequences["ratio"] > 0]
    if domain != "all":
        data = data[data["domain"] == domain]
    if data.empty:
        return lines + ["No compressed variants were evaluated."]
    gaps = _Gaps(data, resamples=resamples, seed=seed)
    labels = list(dict.fromkeys(data["label"]))
    ratios = sorted(data["ratio"].unique())
    methods = dict(zip(data["label"], data["method"]))
    base = data[(data["label"] == labels[0]) & (data["ratio"] == ratios[0])]
    base = base.assign(loss=base["loss"] - base["delta_loss"], seed=pd.NA).drop_duplicates("sequence")
    unpruned = bootstrap(*_grid(base, "loss", "seed"), resamples=resamples, seed=seed)
    where = "all evaluation tokens" if domain == "all" else domain
    lines.append(
        f"Metric: {metric} on {where} (lower is better); the unpruned model has loss {_interval_text(*unpruned)}. "
        f"Brackets: 95 % bootstrap intervals over the {len(base)} evaluation sequences (random pruning: over "
        "sequences and seeds); a difference is stated only when its paired interval excludes 0, "
        'otherwise it is "within noise".'
    )
    if "reap" not in labels:
        return lines + [
            "REAP (criterion `reap`, method prune) is not in these results, so there is nothing to compare it with."
        ]
    lines += [
        "",
        f"Each baseline's {metric} minus REAP's, on the same sequences: positive = REAP better; `*` = the "
        "interval excludes 0. Methods: " + ", ".join(f"`{label}` ({methods[label]})" for label in labels) + ".",
        "",
    ]
    kept = data[data["method"] == "prune"].groupby("ratio")["experts_kept"].first()
    table, verdicts = _gap_table(gaps, labels, ratios, kept, domain=domain, metric=metric)
    lines += [table, ""]
    with_kl = metric != "kl" and data["kl"].notna().all()
    lines += [
        _baseline_line(gaps, label, found, domain=domain, metric=metric, with_kl=with_kl)
        for label, found in verdicts.items()
        if found
    ]
    lines += _ranking_lines(gaps, labels, ratios, domain=domain, metric=metric)
    at = {label: found[0.5] for label, found in verdicts.items() if 0.5 in found}
    if at:
        lines.append(_headline_line(at))
    if 0.5 in ratios and data["kept_routing"].notna().any():
        routing = data[data["ratio"] == 0.5].groupby("label", sort=False)["kept_routing"].mean().dropna()
        if "reap" in routing.index and len(routing) > 1:
            lines.append(
                "- Share of the calibration tokens' expert assignments that the kept experts received, at 50%: "
                + ", ".join(f"`{label}` {value:.0%}" for label, value in routing.items())
                + "."
            )
    if domain == "all":
        lines += _per_domain_lines(sequences[sequences["ratio"] > 0], metric, resamples=resamples, seed=seed)
    return lines


def _per_domain_lines(data: pd.DataFrame, metric: str, *, resamples: int, seed: int) -> list[str]:
    """At the ratio nearest 50 %: per evaluation domain, is REAP the lowest, and is that beyond noise."""
    if data.empty or "reap" not in set(data["label"]) or data["domain"].nunique() < 2:
        return []
    r = min(data["ratio"].unique(), key=lambda v: (abs(v - 0.5), -v))
    gaps = _Gaps(data, resamples=resamples, seed=seed)
    labels = [
        label for label in dict.fromkeys(data["label"]) if ((data["label"] == label) & (data["ratio"] == r)).any()
    ]
    if "reap" not in labels:
        return []
    parts = []
    for d in dict.fromkeys(data["domain"]):
        means = {label: gaps.value(label, r, d, metric)[0] for label in labels}
        order = sorted(means, key=means.get)
        if order[0] == "reap":
            if len(order) < 2:
                continue
            gap = gaps.gap(order[1], "reap", r, d, metric)
            parts.append(
                f"{d}: REAP lowest, {_verdict(gap[1], gap[2], above='ahead of', below='behind')} "
                f"`{order[1]}` ({_interval_text(*gap, sign=True)})"
            )
        else:
            gap = gaps.gap("reap", order[0], r, d, metric)
            parts.append(
                f"{d}: `{order[0]}` lowest, REAP {_interval_text(*gap, sign=True)} above it"
                + ("" if gap[1] > 0 else " (within noise)")
            )
    return [f"- Per evaluation domain at {_pct(r)}: " + "; ".join(parts) + "."]


def _calibration_section(sensitivity: Sensitivity, *, resamples: int, seed: int) -> list[str]:
    loss, sequences = sensitivity.loss, sensitivity.sequences
    repeats = int(sequences["repeat"].nunique())
    lines = [
        "",
        "### Calibration: which experts survive",
        "",
        f"Pruning {_pct(sensitivity.ratio)} by `{sensitivity.criterion}` with calibration on one domain at a time "
        f"or on the mix ({repeats} calibration sample{'s' if repeats > 1 else ''} each); loss on each evaluation "
        "domain, 95 % intervals over evaluation sequences" + (" and calibration samples:" if repeats > 1 else ":"),
        "",
    ]
    text = loss.assign(cell=[_interval_text(a, b, c) for a, b, c in loss[_interval("loss")].to_numpy()])
    table = text.pivot(index="eval_domain", columns="calibration", values="cell")
    table = table.loc[list(dict.fromkeys(loss["eval_domain"])), list(dict.fromkeys(loss["calibration"]))]
    lines += [_md_table(table), ""]
    singles = [c for c in dict.fromkeys(loss["calibration"]) if c not in (UNPRUNED, MIX)]

    def cell(name, d):
        return _grid(sequences[(sequences["calibration"] == name) & (sequences["domain"] == d)], "loss", "repeat")

    own_best, own_noise = [], []
    by = loss.set_index(["eval_domain", "calibration"])
    for d in [d for d in dict.fromkeys(loss["eval_domain"]) if d != "all"]:
        own = by.loc[(d, d)] if (d, d) in by.index else None
        line = f"- **{d}**: unpruned {_num(by.loc[(d, UNPRUNED), 'loss'])}"
        if own is not None:
            line += f"; calibrated on {d} Δ {_interval_text(*own[_interval('delta_loss')], sign=True)}"
            others = [c for c in singles if c != d]
            if others:
                worst = max(others, key=lambda c: by.loc[(d, c), "loss"])
                line += f"; worst other calibration ({worst}) Δ {_interval_text(*by.loc[(d, worst), _interval('delta_loss')], sign=True)}"
                best_other = min(others, key=lambda c: by.loc[(d, c), "loss"])
                num, den = cell(best_other, d)
                mine, _ = cell(d, d)
                gap = bootstrap(num, den, minus=mine, resamples=resamples, seed=seed)
                line += f"; own calibration vs the best other ({best_other}): {_interval_text(*gap, sign=True)}"
                (own_best if gap[1] > 0 else own_noise if gap[2] >= 0 else []).append(d)
        if (d, MIX) in by.index:
            line += f"; the mix Δ {_interval_text(*by.loc[(d, MIX), _interval('delta_loss')], sign=True)}"
        lines.append(line + ".")
    compared = [d for d in dict.fromkeys(loss["eval_domain"]) if d in singles and len(singles) > 1]
    if compared:
        lines.append(
            f"- A domain's own calibration gives it a lower loss than every other single-domain set, beyond "
            f"noise, for {len(own_best)} of {len(compared)} domains"
            + (f" ({', '.join(own_best)})" if own_best else "")
            + (f"; within noise of the best other set for {', '.join(own_noise)}" if own_noise else "")
            + "."
        )
    lines += _overlap_lines(sensitivity.overlap, singles)
    return lines


def _overlap_lines(overlap: pd.DataFrame, singles: list) -> list[str]:
    rows = overlap[overlap["calibration_a"].isin(singles) & overlap["calibration_b"].isin(singles)]
    pairs = rows[rows["calibration_a"] != rows["calibration_b"]]
    if pairs.empty:
        return []
    chance = float(pairs["chance"].iloc[0])

    def place(row):
        return (
            "above chance"
            if row.jaccard_lo > row.chance
            else "below chance"
            if row.jaccard_hi < row.chance
            else "at chance"
        )

    described = [
        f"{r.calibration_a}/{r.calibration_b} {_interval_text(r.jaccard, r.jaccard_lo, r.jaccard_hi)} ({place(r)})"
        for r in pairs.itertuples()
    ]
    lines = [
        f"- Kept experts shared by two single-domain calibration sets (Jaccard, mean over layers; random kept sets "
        f"of this size give {chance:.2f}): " + "; ".join(described) + "."
    ]
    same = rows[(rows["calibration_a"] == rows["calibration_b"]) & (rows["repeats"] > 0)]
    if not same.empty:
        lines.append(
            "- The same calibration set drawn with another seed keeps "
            + "; ".join(
                f"{r.calibration_a} {_interval_text(r.jaccard, r.jaccard_lo, r.jaccard_hi)}" for r in same.itertuples()
            )
            + f" (the sampling noise of a kept set; chance {chance:.2f})."
        )
        own = same.set_index("calibration_a")
        below = [
            f"{r.calibration_a}/{r.calibration_b}"
            for r in pairs.itertuples()
            if r.calibration_a in own.index
            and r.calibration_b in own.index
            and r.jaccard_hi < min(own.loc[r.calibration_a, "jaccard_lo"], own.loc[r.calibration_b, "jaccard_lo"])
        ]
        lines.append(
            f"- Calibration on another domain changes the kept set beyond the sampling noise (its interval lies below "
            f"both sets' own resampling overlap) for {len(below)} of {len(pairs)} pairs"
            + (f": {', '.join(below)}" if below else "")
            + "."
        )
    return lines


def _layer_section(layers: pd.DataFrame) -> list[str]:
    rows = layers[layers["domain"] == "all"].sort_values("delta_loss", ascending=False)
    if rows.empty:
        return []
    ratio, criterion = rows["ratio"].iloc[0], rows["criterion"].iloc[0]
    lines = [
        "",
        "### Per-layer sensitivity",
        "",
        f"Pruning {_pct(ratio)} of one MoE layer at a time by `{criterion}` (the others untouched); Δ loss on all "
        "evaluation tokens, paired with the unpruned model: "
        + "; ".join(
            f"layer {int(r.layer)} {_interval_text(r.delta_loss, r.delta_loss_lo, r.delta_loss_hi, sign=True)}"
            for r in rows.itertuples()
        )
        + ".",
    ]
    costly = [int(r.layer) for r in rows.itertuples() if r.delta_loss_lo > 0]
    free = [int(r.layer) for r in rows.itertuples() if r.delta_loss_lo <= 0]
    lines.append(
        f"- Layers whose pruning costs loss beyond noise: {', '.join(map(str, costly)) or 'none'}"
        + (f"; within noise of free: {', '.join(map(str, free))}" if free else "")
        + "."
    )
    if len(rows) > 1:
        top, second = rows.iloc[0], rows.iloc[1]
        apart = top.delta_loss_lo > second.delta_loss_hi
        lines.append(
            f"- Layer {int(top.layer)} is the most sensitive"
            + (
                f"; its interval lies above layer {int(second.layer)}'s."
                if apart
                else f", but its interval overlaps layer {int(second.layer)}'s: their order is within noise."
            )
        )
    return lines


def summarise(
    sequences: pd.DataFrame,
    sensitivity: Sensitivity | None = None,
    layers: pd.DataFrame | None = None,
    *,
    domain: str = "all",
    metric: str = "loss",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> str:
    """Markdown findings, each stated only when its 95 % interval supports it ("within noise" otherwise).

        >>> print(summarise(study_sequences(model, obs, eval_batches), calibration_sensitivity(...), layer_sensitivity(...)))

    `sequences` (from `study_sequences`): where REAP wins or loses against each baseline at each
    ratio, by `metric` on `domain`, with paired bootstrap intervals of each gap (random: the mean of
    its seeds, seeds resampled too). `sensitivity` (from `calibration_sensitivity`): how the
    calibration set changes each domain's loss, and how much kept sets overlap against chance.
    `layers` (from `layer_sensitivity`): which layers cost loss when pruned alone.
    """
    if "sequence" not in sequences.columns:
        raise ValueError(
            "summarise reads the per-sequence frame of study_sequences (it has a `sequence` column), not the "
            "results frame; call study_sequences(...) and pass that"
        )
    lines = _compression_section(sequences, domain=domain, metric=metric, resamples=resamples, seed=seed)
    if sensitivity is not None:
        lines += _calibration_section(sensitivity, resamples=resamples, seed=seed)
    if layers is not None:
        lines += _layer_section(layers)
    return "\n".join(lines)
