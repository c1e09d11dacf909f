"""How sensitive pruning is: to each MoE layer on its own, and to the calibration data.

    >>> sensitivity = calibration_sensitivity(model, tokenizer, eval_batches, calibration=obs)
    >>> sensitivity.loss_matrix().round(2)                        # evaluation domain x calibration set
    calibration  unpruned  code  prose  tools  math   mix
    eval_domain
    code             4.03  4.75   5.11   5.45  5.64  5.09
    prose            4.01  4.95   4.50   5.37  5.83  4.54
    tools            0.86  2.84   2.82   2.49  4.80  2.44
    math             0.79  4.00   2.67   6.24  1.26  4.03
    all              2.57  4.14   3.87   4.76  4.66  4.02
    >>> from reapkit.select.plan import PruningPlan
    >>> plans = {d: PruningPlan.from_observations(obs, "reap", ratio=0.5, domains=[d]) for d in ("code", "prose")}
    >>> kept_overlap(plans).round(2)                              # mean Jaccard of the kept sets
    calibration  code  prose
    calibration
    code         1.00   0.43
    prose        0.43   1.00

`calibration_size` measures the kept sets and the loss against the calibration's size and sample.

**Calibration decides which experts survive**: prune with REAP from statistics of each single
calibration domain and of their mix, and measure every evaluation domain; plus how much the kept
expert sets of two calibration sets overlap (mean over layers of the Jaccard index). Observations
keep per-domain statistics, and a domain's statistics are exactly those a calibration pass on that
domain alone would record, so this needs one calibration pass, not one per calibration set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reapkit.data import DOMAINS
from reapkit.errors import InvalidInput
from reapkit.measure.schema import UNPRUNED
from reapkit.measure.schema import interval_columns as _interval
from reapkit.measure.stats import RESAMPLES, bootstrap, sequence_grid
from reapkit.study.experiments import MIX, check_ratios

__all__ = [
    "layer_sensitivity",
    "calibration_sensitivity",
    "calibration_size",
    "Sensitivity",
    "kept_overlap",
    "jaccard_by_layer",
    "chance_overlap",
]


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

        >>> layers = layer_sensitivity(model, obs, eval_batches)    # prune one layer at a time
        >>> layers[layers.domain == "all"][["layer", "delta_loss", "delta_loss_lo", "delta_loss_hi"]].round(2)
            layer  delta_loss  delta_loss_lo  delta_loss_hi
        4       0        1.29           0.93           1.74
        9       1        0.06           0.03           0.10
        14      2        0.05           0.01           0.08
        19      3        0.08           0.05           0.12

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
    ratio = check_ratios(ratio)[0]
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
        raise InvalidInput(
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

        >>> s = calibration_sensitivity(model, tokenizer, eval_batches, domains=["code", "math"], samples=4,
        ...                             calibration_seeds=(0, 1))      # two calibration repeats, observed here
        >>> s.overlap[["calibration_a", "calibration_b", "jaccard", "jaccard_lo", "jaccard_hi", "chance"]].round(2)
          calibration_a calibration_b  jaccard  jaccard_lo  jaccard_hi  chance
        0          code          code     0.70        0.60        0.90    0.34
        1          code          math     0.36        0.26        0.49    0.34
        2          code           mix     0.72        0.57        0.86    0.34
        3          math          math     0.53        0.45        0.60    0.34
        4          math           mix     0.38        0.33        0.45    0.34
        5           mix           mix     0.69        0.60        0.78    0.34

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
    ratio = check_ratios(ratio)[0]
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
        raise InvalidInput(
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
# (c) calibration size and seed
# --------------------------------------------------------------------------------------------


def calibration_size(
    model,
    tokenizer,
    eval_batches,
    *,
    domains=DOMAINS,
    sizes=(2, 4, 8, 16),
    seeds=(0, 1, 2),
    ratio: float = 0.5,
    criterion: str = "reap",
    max_length: int = 128,
    resamples: int = RESAMPLES,
    progress: bool = True,
) -> pd.DataFrame:
    """How much the kept experts and the loss depend on the calibration's size and on its sample.

        >>> size = calibration_size(model, tokenizer, eval_batches, domains=["code", "math"], sizes=(2, 4), seeds=(0, 1))
        >>> size[["samples", "seed", "jaccard", "delta_loss", "delta_loss_lo", "delta_loss_hi"]].round(2)
           samples  seed  jaccard  delta_loss  delta_loss_lo  delta_loss_hi
        0        2     0     0.69        2.31           1.49           3.15
        1        4     0     0.73        1.75           1.07           2.55
        2        2     1     0.73        1.52           1.12           2.00
        3        4     1     0.83        1.65           1.04           2.34

    For each seed, `max(sizes)` calibration samples per domain of `domains` are drawn and observed in
    nested prefixes (observations add up, so the whole costs one pass per seed); each prefix of n
    samples per domain gives a plan by `criterion` at `ratio`. Per size and seed: `jaccard` = mean over
    layers of the Jaccard index of its kept experts with those of the plan made from every seed's
    largest calibration pooled (`chance`: what random kept sets share), and `delta_loss` on
    `eval_batches` with its 95% bootstrap interval paired with the unpruned model. `sizes` must be
    multiples of the smallest. Columns: samples, seed, jaccard, chance, delta_loss, delta_loss_lo, delta_loss_hi.
    """
    from tqdm.auto import tqdm

    from reapkit.compress.prune import mask_experts
    from reapkit.data import calibration_batches
    from reapkit.measure.evaluate import sequence_metrics
    from reapkit.observe.recorder import observe
    from reapkit.select.plan import PruningPlan

    sizes, step = sorted(int(n) for n in sizes), min(int(n) for n in sizes)
    if any(n % step for n in sizes):
        raise ValueError(f"calibration sizes must be multiples of the smallest ({step}), got {sizes}")
    spec = ",".join(f"{d}:{sizes[-1]}" for d in domains)
    observed: dict[tuple, object] = {}
    for seed in tqdm(seeds, desc="calibration seeds", disable=not progress):
        batches = calibration_batches(spec, tokenizer, batch_size=step, max_length=max_length, seed=int(seed))
        by_domain = {d: [b for b in batches if b.domain == d] for d in domains}
        total, done = None, 0
        for n in sizes:
            new = [b for d in domains for b in by_domain[d][done // step : n // step]]
            part = observe(model, new, calibration={"spec": spec, "seed": int(seed), "samples": n}, progress=False)
            total, done = (part if total is None else total + part), n
            observed[(n, int(seed))] = total
    pooled = sum((observed[(sizes[-1], int(s))] for s in seeds[1:]), observed[(sizes[-1], int(seeds[0]))])
    best = PruningPlan.from_observations(pooled, criterion, ratio=ratio)
    unpruned = sequence_metrics(model, eval_batches, progress=False)
    rows = []
    for (n, seed), obs in observed.items():
        plan = PruningPlan.from_observations(obs, criterion, ratio=ratio)
        with mask_experts(model, plan):
            frame = sequence_metrics(model, eval_batches, progress=False)
        tokens = frame["tokens"].to_numpy(np.float64)
        delta = (frame["loss"].to_numpy() - unpruned["loss"].to_numpy()) * tokens
        row = {
            "samples": n,
            "seed": seed,
            "jaccard": float(jaccard_by_layer(plan, best).mean()),
            "chance": chance_overlap(plan),
        }
        row.update(zip(_interval("delta_loss"), bootstrap(delta, tokens, resamples=resamples, seed=0)))
        rows.append(row)
    return pd.DataFrame(rows, columns=["samples", "seed", "jaccard", "chance", *_interval("delta_loss")])
