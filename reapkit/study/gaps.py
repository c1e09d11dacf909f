"""Paired gaps between methods: each method's metric minus the reference's (REAP's) on the same sequences.

    >>> gaps = gap_table(sequences, metrics=["loss"])      # per label, ratio, domain: loss_gap, loss_gap_lo, ...
    >>> PairedGaps(sequences).gap("frequency", "reap", 0.5, "all", "loss")   # (estimate, lo, hi)
    (-0.31932054417327294, -0.9117938465297575, 0.20267830309326604)

The one rule for "is there a difference" between two methods: the 95% paired bootstrap interval of
their gap on the same evaluation sequences (random pruning: the mean of its seeds, seeds resampled
too) excludes 0. Two methods' own intervals overlapping says nothing, since both vary with the same
sequences. `reapkit.study.findings`, `reapkit.study.readings` and the forest plot
(`reapkit.plot.results.gap_forest`) all read these gaps. Numpy and pandas only.

Sequence frames: one row per variant and evaluation sequence, with `sequence`, `tokens`, `domain`,
the metric columns and a `hue` column naming the method (``study_sequences``: `label`;
``evaluate_plans(..., sequences=True)``: `criterion`), `ratio`, and `seed` (repeats) where there are any.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, better, interval_columns
from reapkit.measure.stats import RESAMPLES, bootstrap, sequence_grid

__all__ = ["PairedGaps", "gap_table", "verdict"]


class PairedGaps:
    """Paired bootstrap values and gaps of the curves of a sequence frame, cached.

    >>> gaps = PairedGaps(sequences)
    >>> gaps.value("reap", 0.5, "all", "loss"), gaps.gap("frequency", "reap", 0.5, "code", "loss")
    ((4.0226072843256935, 3.4708244055991266, 4.560601685560003), (0.8102279019187248, 0.681825046264936, 0.9683543745842245))
    """

    def __init__(self, sequences: pd.DataFrame, *, hue: str = "label", resamples: int = RESAMPLES, seed: int = 0):
        self.resamples, self.seed = resamples, seed
        self.repeat = "seed" if "seed" in sequences.columns else None
        self.parts = dict(iter(sequences.groupby([hue, "ratio"], sort=False)))
        self.cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def matrix(self, label, ratio: float, domain: str, metric: str):
        """[repeats, sequences] of metric x tokens, and tokens [sequences]."""
        key = (label, ratio, domain, metric)
        if key not in self.cache:
            part = self.parts[(label, ratio)]
            part = part if domain == ALL else part[part["domain"] == domain]
            if self.repeat is None:
                part = part.assign(_repeat=0)
            self.cache[key] = sequence_grid(part, metric, self.repeat or "_repeat")
        return self.cache[key]

    def has(self, label, ratio: float) -> bool:
        return (label, ratio) in self.parts

    def value(self, label, ratio, domain, metric) -> tuple[float, float, float]:
        """(estimate, lo, hi) of `metric` for one curve at `ratio` on `domain`."""
        num, den = self.matrix(label, ratio, domain, metric)
        return bootstrap(num, den, resamples=self.resamples, seed=self.seed)

    def gap(self, label, minus, ratio, domain, metric) -> tuple[float, float, float]:
        """(estimate, lo, hi) of metric(label) - metric(minus) on the same sequences."""
        num, den = self.matrix(label, ratio, domain, metric)
        other, _ = self.matrix(minus, ratio, domain, metric)
        return bootstrap(num, den, minus=other, resamples=self.resamples, seed=self.seed)


def verdict(gap, metric: str) -> str:
    """How the first method of a gap (first minus second) compares, by its paired interval and the
    metric's direction: ``"better"``, ``"worse"`` or ``"within noise"`` (the interval holds 0).

    >>> verdict((0.2, 0.1, 0.3), "loss"), verdict((0.2, 0.1, 0.3), "acc"), verdict((0.2, -0.1, 0.3), "loss")
    ('worse', 'better', 'within noise')
    """
    _, lo, hi = gap
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 <= hi:
        return "within noise"
    higher = lo > 0
    return "better" if higher == (better(metric) == "higher") else "worse"


def gap_table(
    sequences: pd.DataFrame,
    *,
    reference: str = "reap",
    metrics=("loss",),
    hue: str = "label",
    domains=None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Every method's gap to `reference` at each ratio > 0 and domain ("all" and each evaluation
    domain), with its paired 95% bootstrap interval: one row per method, ratio and domain.

        >>> gap_table(sequences, metrics=["loss", "kl"])[["label", "ratio", "domain", "loss_gap", "loss_gap_lo"]].head(3).round(3)
                 label  ratio domain  loss_gap  loss_gap_lo
        0    frequency   0.25    all     0.101       -0.239
        1       random   0.25    all     0.465        0.130
        2  global_reap   0.25    all    -0.095       -0.202

    Columns: `hue`, method (when the frame has it), ratio, domain, reference, runs (repeats of the
    method), then `interval_columns(m, "gap")` of each metric (<m>_gap, <m>_gap_lo, <m>_gap_hi: the
    method minus the reference; for loss, positive = the method loses more than the reference).
    Ratios where the reference was not run are left out.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    columns = [hue, "method", "ratio", "domain", "reference", "runs"]
    columns += [c for m in metrics for c in interval_columns(m, "gap")]
    data = sequences[sequences["ratio"] > 0] if len(sequences) else sequences
    if data.empty or reference not in set(data[hue]):
        return pd.DataFrame(columns=columns)
    gaps = PairedGaps(data, hue=hue, resamples=resamples, seed=seed)
    methods = dict(zip(data[hue], data["method"])) if "method" in data.columns else {}
    domains = [ALL, *dict.fromkeys(data["domain"])] if domains is None else list(domains)
    rows = []
    for (label, ratio), part in gaps.parts.items():
        if label == reference or not gaps.has(reference, ratio):
            continue
        runs = int(part["seed"].nunique()) if "seed" in part.columns and part["seed"].notna().any() else 1
        for domain in domains:
            row = {hue: label, "method": methods.get(label), "ratio": ratio, "domain": domain}
            row.update(reference=reference, runs=runs)
            for metric in metrics:
                row.update(zip(interval_columns(metric, "gap"), gaps.gap(label, reference, ratio, domain, metric)))
            rows.append(row)
    return pd.DataFrame(rows, columns=columns).sort_values(["ratio", "domain"], kind="stable", ignore_index=True)
