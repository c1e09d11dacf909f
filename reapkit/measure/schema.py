"""The one results schema: column names every table of results uses, and its long and wide forms.

    >>> long_results(results[results.ratio == 0.5])[["label", "domain", "metric", "value", "value_lo"]].head(3).round(3)
      label domain metric  value  value_lo
    0  reap   code   loss  5.088     4.613
    1  reap  prose   loss  4.542     4.338
    2  reap  tools   loss  2.442     2.307
    >>> interval("loss"), interval("loss", "gap")
    (('loss_lo', 'loss_hi'), ('loss_gap_lo', 'loss_gap_hi'))
    >>> better("acc"), better("loss")
    ('higher', 'lower')

Results schema (one name per concept; every module reads these names, none renames them):

    method       prune / merge / global
    criterion    the pruning criterion, "random", or the merge method
    label        one name per curve: the criterion, or global_<criterion> for the global budget
    seed         random pruning only
    ratio        fraction of experts removed (0 = the unpruned model, labelled "unpruned")
    domain       evaluation domain, "all" = every domain pooled, or an lm-eval task
    observations the router fingerprint of the model the plan's observations were made on (lm-eval rows)
    loss, perplexity, kl, agreement     (agreement = top-1 agreement with the unpruned model)
    delta_loss   loss minus the same domain's unpruned loss (`with_delta_loss`)
    <metric>_stderr                     standard error of <metric>, where the source gives one (lm-eval)

Intervals: each kind has its own column names, built only by `interval` / `interval_columns`:

    <metric>_lo, <metric>_hi            "ci": 95% interval of <metric> itself: percentile bootstrap over
                                        evaluation sequences (delta_loss: of the per-sequence differences to
                                        the unpruned model, so paired with it); lm-eval rows: value ± 1.96 stderr
    <metric>_gap, _gap_lo, _gap_hi      "gap": a method's <metric> minus the reference method's (REAP) on the
                                        same sequences, with its paired 95% bootstrap interval
    <metric>_chance_lo, _chance_hi      "chance": where 95% of the values of <metric> fall by chance (e.g.
                                        Spearman rho between unrelated rankings); not an interval of an estimate

Direction: `BETTER` declares once whether lower or higher is better for each metric; every ranking,
reading and figure reads it through `better` / `best_first`.

The same table in long form: one row per measurement, the columns above that say what was measured
(method ... domain, any others such as model or observations) plus

    metric       the metric's name: loss, kl, ... or an lm-eval metric (acc, bits_per_byte, ...)
    value, stderr, value_lo, value_hi   its value, standard error and 95% interval

`reapkit.measure.harness.lm_eval` writes lm-eval scores in this form, the task as the `domain`; `long_results`
and `wide_results` turn one form into the other (in a frame holding both, the rows without a metric are
already wide), and `curve_table` and the figures accept either, so lm-eval scores and reapkit's own
metrics plot against ratio and criterion alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reapkit.errors import InvalidInput

__all__ = [
    "METHOD",
    "CRITERION",
    "LABEL",
    "SEED",
    "RATIO",
    "DOMAIN",
    "LOSS",
    "KL",
    "AGREEMENT",
    "DELTA_LOSS",
    "METRICS",
    "METRIC_LABELS",
    "DISPLAY_NAMES",
    "display_name",
    "LOWER",
    "HIGHER",
    "BETTER",
    "better",
    "best_first",
    "INTERVALS",
    "interval",
    "interval_columns",
    "METRIC",
    "VALUE",
    "STDERR",
    "ALL",
    "UNPRUNED",
    "lo",
    "hi",
    "stderr",
    "select",
    "with_delta_loss",
    "long_results",
    "wide_results",
]

METHOD, CRITERION, LABEL, SEED, RATIO, DOMAIN = "method", "criterion", "label", "seed", "ratio", "domain"
LOSS, KL, AGREEMENT, DELTA_LOSS = "loss", "kl", "agreement", "delta_loss"
METRIC, VALUE, STDERR = "metric", "value", "stderr"
#: Metrics a results frame may carry (each may come with <metric>_lo / <metric>_hi).
METRICS = (LOSS, "perplexity", KL, AGREEMENT, DELTA_LOSS)
#: Axis label of each metric.
METRIC_LABELS = {
    LOSS: "loss (nats/token)",
    "perplexity": "perplexity",
    KL: "KL to unpruned (nats)",
    AGREEMENT: "top-1 agreement",
    DELTA_LOSS: "Δ loss vs unpruned (nats)",
}
#: The domain that pools every evaluation domain.
ALL = "all"
#: What the unpruned model's rows are called (its method, criterion and label; ratio 0).
UNPRUNED = "unpruned"

#: How figures and readings name each method, criterion and space (tables keep the code names).
DISPLAY_NAMES = {
    "reap": "REAP",
    "frequency": "frequency",
    "soft_frequency": "soft frequency",
    "ean_mean": "activation norm",
    "ean_sum": "activation norm (sum)",
    "weighted_ean_sum": "weighted activation norm",
    "max_activation": "max activation",
    "random": "random",
    "m_smoe": "M-SMoE",
    "hc_smoe": "HC-SMoE",
    "ean_ca": "EAN-CA",
    "msan": "MSAN",
    "aimer": "AIMER",
    "ream": "REAM",
    "submoe": "Sub-MoE",
    "m_smoe_faithful": "M-SMoE (faithful)",
    "hc_smoe_faithful": "HC-SMoE (faithful)",
    UNPRUNED: "unpruned",
}
#: Non-uniform budgets, as label prefixes (``water_reap``) and as they read.
BUDGET_NAMES = {"global": "global budget", "water": "water-filling", "evolution": "evolutionary search"}


def display_name(name) -> str:
    """The name a figure or reading prints for a method, criterion or label (`global_<c>`: "<c>, global budget").

    >>> display_name("ean_mean"), display_name("global_reap"), display_name("water_reap"), display_name("my_criterion")
    ('activation norm', 'REAP, global budget', 'REAP, water-filling', 'my criterion')
    """
    name = str(name)
    for budget, text in BUDGET_NAMES.items():
        if name.startswith(f"{budget}_"):
            return f"{display_name(name[len(budget) + 1 :])}, {text}"
    return DISPLAY_NAMES.get(name, name.replace("_", " "))


LOWER, HIGHER = "lower", "higher"
#: Which way each metric is better: the one declaration every ranking, reading and figure reads (`better`).
BETTER = {
    LOSS: LOWER,
    "perplexity": LOWER,
    KL: LOWER,
    DELTA_LOSS: LOWER,
    AGREEMENT: HIGHER,
    "rel_l2": LOWER,
    # lm-eval metrics
    "bits_per_byte": LOWER,
    "byte_perplexity": LOWER,
    "word_perplexity": LOWER,
    "acc": HIGHER,
    "acc_norm": HIGHER,
    "exact_match": HIGHER,
    "f1": HIGHER,
    "mcc": HIGHER,
}


def better(metric: str) -> str:
    """``"lower"`` or ``"higher"``: which way `metric` is better (:data:`BETTER`; a metric it does not
    name is read as higher = better, lm-eval's convention for scores).

        >>> better("kl"), better("acc_norm")
        ('lower', 'higher')
    """
    return BETTER.get(str(metric), HIGHER)


def best_first(frame: pd.DataFrame, metric: str, column: str | None = None) -> pd.DataFrame:
    """`frame` sorted best first by `column` (default `metric`), in `metric`'s direction (stable).

    >>> best_first(pd.DataFrame({"label": ["reap", "frequency"], "acc": [0.25, 0.5]}), "acc")   # highest first
           label   acc
    1  frequency  0.50
    0       reap  0.25
    """
    return frame.sort_values(column or metric, ascending=better(metric) == LOWER, kind="stable")


#: Column suffixes of each kind of interval (see the module's docstring); `interval` builds the names.
INTERVALS = {"ci": "", "gap": "_gap", "chance": "_chance"}


def interval(metric: str, kind: str = "ci") -> tuple[str, str]:
    """The (lower, upper) columns of `metric`'s interval of `kind` ("ci", "gap" or "chance").

    >>> interval("delta_loss"), interval("spearman", "chance")
    (('delta_loss_lo', 'delta_loss_hi'), ('spearman_chance_lo', 'spearman_chance_hi'))
    """
    if kind not in INTERVALS:
        raise ValueError(f"unknown kind of interval {kind!r}; kinds: {', '.join(INTERVALS)}")
    stem = f"{metric}{INTERVALS[kind]}"
    return f"{stem}_lo", f"{stem}_hi"


def interval_columns(metric: str, kind: str = "ci") -> list[str]:
    """The estimate's column and its interval's: ``interval_columns("loss") == ["loss", "loss_lo", "loss_hi"]``,
    ``interval_columns("loss", "gap") == ["loss_gap", "loss_gap_lo", "loss_gap_hi"]`` ("chance" has no estimate)."""
    low, high = interval(metric, kind)
    return [low, high] if kind == "chance" else [f"{metric}{INTERVALS[kind]}", low, high]


def lo(metric: str) -> str:
    """Column of the lower end of `metric`'s 95% interval ("ci"): ``lo("loss") == "loss_lo"``."""
    return interval(metric)[0]


def hi(metric: str) -> str:
    """Column of the upper end of `metric`'s 95% interval ("ci"): ``hi("loss") == "loss_hi"``."""
    return interval(metric)[1]


def stderr(metric: str) -> str:
    """Column of `metric`'s standard error: ``stderr("acc") == "acc_stderr"``."""
    return f"{metric}_{STDERR}"


def select(frame: pd.DataFrame, **conditions) -> pd.DataFrame:
    """Rows of `frame` where each named column equals its value (None or a missing column: no condition).

    >>> len(select(scores, criterion="reap", domain="all"))     # 4 layers x 16 experts
    64
    """
    for column, value in conditions.items():
        if value is not None and column in frame.columns:
            frame = frame[frame[column] == value]
    return frame


def with_delta_loss(results: pd.DataFrame) -> pd.DataFrame:
    """A copy of `results` with `delta_loss` = loss - the unpruned loss (ratio 0) of the same domain
    (and the same value of any `model` column).

        >>> frame = pd.DataFrame({"label": ["unpruned", "reap"], "ratio": [0, 0.5], "domain": "code", "loss": [2.0, 2.5]})
        >>> with_delta_loss(frame)[["label", "ratio", "domain", "delta_loss"]]
              label  ratio domain  delta_loss
        0  unpruned    0.0   code         0.0
        1      reap    0.5   code         0.5

    No interval is made: the loss interval moved by the unpruned mean is not an interval of the
    difference (the two losses share their sequences); `delta_loss_lo` / `delta_loss_hi` are only
    ever the paired bootstrap of `reapkit.measure.evaluate.aggregate`. A frame that has `delta_loss`
    already is returned as it is.
    """
    out = results.copy()
    if DELTA_LOSS in out.columns:
        return out
    keys = [DOMAIN] + [c for c in ("model", "calibration") if c in out.columns]
    base = out[out[RATIO] == 0].groupby(keys)[LOSS].mean().rename("_base")
    if base.empty:
        raise InvalidInput(
            "with_delta_loss needs the unpruned model's rows (ratio 0) to measure Δ loss against; include ratio 0 in the results"
        )
    out = out.join(base, on=keys)
    out[DELTA_LOSS] = out[LOSS] - out["_base"]
    return out.drop(columns="_base")


#: The measurement columns of the long form (the other columns say what was measured).
LONG_VALUES = (METRIC, VALUE, STDERR, lo(VALUE), hi(VALUE))


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metrics of a wide frame: the known ones and any column with an interval or a stderr beside it."""
    columns = set(frame.columns)
    return [
        c
        for c in frame.columns
        if c not in LONG_VALUES and (c in METRICS or {lo(c), hi(c)} <= columns or stderr(c) in columns)
    ]


def long_results(results: pd.DataFrame) -> pd.DataFrame:
    """The long form of a wide results frame: one row per measurement (metric, value, stderr, value_lo,
    value_hi) beside the columns that say what was measured; rows already long stay as they are.

        >>> long_results(results)[["criterion", "ratio", "domain", "metric", "value", "value_lo"]].head(3).round(3)
          criterion  ratio domain metric  value  value_lo
        0      reap    0.0   code   loss  4.035     3.602
        1      reap    0.0  prose   loss  4.014     3.826
        2      reap    0.0  tools   loss  0.863     0.640
    """
    if METRIC in results.columns:
        long, wide = results[results[METRIC].notna()], results[results[METRIC].isna()]
        wide = wide.drop(columns=list(LONG_VALUES))
    else:
        long, wide = results.iloc[:0], results
    metrics = _metric_columns(wide)
    companions = {f(m) for m in metrics for f in (lo, hi, stderr)}
    keys = [c for c in wide.columns if c not in metrics and c not in companions]
    frames = [long.drop(columns=[c for c in long.columns if c in metrics or c in companions])]
    for m in metrics:
        part = wide[wide[m].notna()]
        frames.append(
            part[keys].assign(
                **{
                    METRIC: m,
                    VALUE: part[m],
                    STDERR: part[stderr(m)] if stderr(m) in part else np.nan,
                    lo(VALUE): part[lo(m)] if lo(m) in part else np.nan,
                    hi(VALUE): part[hi(m)] if hi(m) in part else np.nan,
                }
            )
        )
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*keys, *LONG_VALUES])


def wide_results(results: pd.DataFrame) -> pd.DataFrame:
    """The wide form of a results frame: the long rows (those with a `metric`) become columns <metric>,
    <metric>_stderr, <metric>_lo, <metric>_hi, one row per what-was-measured; rows already wide stay.
    A wide frame is returned as it is; duplicate measurements are averaged.

        >>> wide_results(lm_rows)[["criterion", "ratio", "domain", "acc", "acc_lo", "acc_hi"]].round(2)
          criterion  ratio                domain   acc  acc_lo  acc_hi
        0  unpruned    0.0       reapkit_heldout   NaN     NaN     NaN
        1  unpruned    0.0  reapkit_continuation  0.50   -0.07    1.07
        2      reap    0.5       reapkit_heldout   NaN     NaN     NaN
        3      reap    0.5  reapkit_continuation  0.25   -0.24    0.74
    """
    if METRIC not in results.columns:
        return results
    long, wide = results[results[METRIC].notna()], results[results[METRIC].isna()]
    keys = [c for c in results.columns if c not in LONG_VALUES and long[c].notna().any()]
    if long.empty:
        return wide.drop(columns=list(LONG_VALUES), errors="ignore")
    values = [c for c in (VALUE, STDERR, lo(VALUE), hi(VALUE)) if c in long.columns]
    table = long.groupby(keys + [METRIC], dropna=False, sort=False)[values].mean().unstack(METRIC)
    names = {VALUE: str, STDERR: stderr, lo(VALUE): lo, hi(VALUE): hi}
    table.columns = [names[value](metric) for value, metric in table.columns]
    order = [c for m in dict.fromkeys(long[METRIC]) for c in (m, lo(m), hi(m), stderr(m)) if c in table.columns]
    table = table[order].reset_index()
    wide = wide.drop(columns=list(LONG_VALUES), errors="ignore")
    return pd.concat([wide, table], ignore_index=True) if len(wide) else table
