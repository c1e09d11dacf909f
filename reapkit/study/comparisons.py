"""Readings that compare methods or settings, in Markdown: every difference from a paired gap.

    >>> from reapkit.study.gaps import gap_table
    >>> print(costs(results, gaps=gap_table(sequences, hue="criterion")))   # in a notebook: display(Markdown(...))
    **Reading.** loss on all held-out tokens (lower is better); unpruned 2.57 [1.72, 3.21]. ...
    - 50% removed, best first: frequency 3.70 [2.63, 4.61], reap 3.89 [3.29, 4.40], random 4.69 [4.00, 5.22].
      Paired gaps to reap (method minus reap, same sequences, 95%): reap is better than random ...
    >>> print(study_curves(results, gaps=gap_table(sequences), metric="delta_loss"))
    **Reading.** Δ loss at 50% removed (all; lower is better), best first: frequency 1.14 [0.85, 1.42], ...

Values are listed best first in each metric's direction (`reapkit.measure.schema.better`); a method is
said to differ from another only where the paired 95% interval of their gap on the same evaluation
sequences excludes 0 (`reapkit.study.gaps`). Without paired gaps nothing is claimed. The notebooks
reach these through `reapkit.study.readings`. No matplotlib here (and neither torch nor transformers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, best_first, better, interval, interval_columns, wide_results
from reapkit.study.gaps import verdict

__all__ = [
    "costs",
    "benchmark_scores",
    "reconstruction",
    "study_curves",
    "gaps",
    "calibration",
    "calibration_size",
    "sensitivity",
]


def number(value, digits: int = 2) -> str:
    """`value` to `digits` decimals for a reading, or "n/a" when it is missing: ``number(0.1234) == "0.12"``."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _interval(row, metric: str, kind: str = "ci") -> str:
    lo, hi = interval(metric, kind)
    if lo in row.index and hi in row.index and np.isfinite(row[lo]) and np.isfinite(row[hi]):
        return f" [{number(row[lo])}, {number(row[hi])}]"
    return ""


def _gap_columns(gaps: pd.DataFrame, metric: str) -> list[str] | None:
    """The gap columns of `metric` in a gap table (`reapkit.study.gaps.gap_table`); Δ loss's gap is loss's."""
    for name in (metric, "loss" if metric == "delta_loss" else None):
        if name is not None and gaps is not None and interval_columns(name, "gap")[0] in gaps.columns:
            return interval_columns(name, "gap")
    return None


def _gap_lines(gaps: pd.DataFrame | None, metric: str, *, hue: str, ratio: float, domain: str) -> list[str]:
    """One sentence per method: its paired gap to the reference at `ratio` on `domain`, and what it says."""
    columns = _gap_columns(gaps, metric)
    if columns is None:
        return [
            "No difference between methods is claimed here: each bracket is one method's own interval, and two "
            "methods measured on the same sequences differ only where the paired interval of their gap excludes 0."
        ]
    rows = gaps[np.isclose(gaps["ratio"], ratio) & (gaps["domain"] == domain)]
    if rows.empty:
        return []
    reference = rows["reference"].iloc[0]
    groups = {"worse": [], "better": [], "within noise": []}  # what the method is, against the reference
    for row in rows.itertuples(index=False):
        gap = tuple(getattr(row, c) for c in columns)
        groups[verdict(gap, metric)].append(f"{getattr(row, hue)} {gap[0]:+.2f} [{gap[1]:+.2f}, {gap[2]:+.2f}]")
    said = {
        "worse": f"{reference} is better than",
        "better": f"{reference} is worse than",
        "within noise": f"{reference} is within noise of",
    }
    parts = [f"{said[k]} {', '.join(v)}" for k, v in groups.items() if v]
    return [f"Paired gaps to {reference} (method minus {reference}, same sequences, 95%): " + "; ".join(parts) + "."]


def _ratio_lines(data: pd.DataFrame, metric: str, *, gaps=None, hue: str = "criterion", domain: str = ALL) -> list[str]:
    """Per ratio > 0: every method's value and interval, best first in the metric's direction, then
    what the paired gaps say (no claim of a difference without them)."""
    lines = []
    for ratio, group in data[data["ratio"] > 0].groupby("ratio"):
        ordered = best_first(group.groupby(hue).mean(numeric_only=True), metric)
        parts = [f"{c} {number(r[metric])}{_interval(r, metric)}" for c, r in ordered.iterrows()]
        lines.append(f"- {ratio:.0%} removed, best first: " + ", ".join(parts) + ".")
        if gaps is not None:
            lines += [f"  {line}" for line in _gap_lines(gaps, metric, hue=hue, ratio=ratio, domain=domain)]
    return lines


def costs(results: pd.DataFrame, *, metric: str = "loss", domain: str = ALL, gaps=None) -> str:
    """Each criterion's cost at each ratio, best first, with intervals when the results carry them;
    differences only from `gaps` (`reapkit.study.gaps.gap_table` of the same plans' sequences)."""
    data = results[results["domain"] == domain]
    base = data[data["ratio"] == 0]
    if data.empty or base.empty:
        return "No results to read."
    lines = [
        f"**Reading.** {metric} on {domain} held-out tokens ({better(metric)} is better); unpruned "
        f"{number(base[metric].iloc[0])}{_interval(base.iloc[0], metric)}. Brackets: 95% bootstrap intervals over "
        "evaluation sequences.",
        "",
    ]
    lines += _ratio_lines(data, metric, gaps=gaps, domain=domain)
    if gaps is None:
        lines += ["", *_gap_lines(None, metric, hue="criterion", ratio=0, domain=domain)]
    return "\n".join(lines)


def benchmark_scores(scores: pd.DataFrame) -> str:
    """lm-eval scores (long rows of `reapkit.measure.harness.lm_eval_plans`) per task and metric, as `costs` reads loss.

    >>> print(benchmark_scores(lm_rows))
    **Reading.** lm-eval scores of the unpruned model and of each plan, masked in memory. ...
    <BLANKLINE>
    **bits_per_byte** on reapkit_heldout (lower is better): unpruned 1.68
    - 50% removed, best first: reap 2.30.
    <BLANKLINE>
    **acc** on reapkit_continuation (higher is better): unpruned 0.50 [-0.07, 1.07]
    - 50% removed, best first: reap 0.25 [-0.24, 0.74].
    """
    if scores.empty or "metric" not in scores.columns:
        return "No benchmark scores to read."
    wide = wide_results(scores)
    lines = [
        "**Reading.** lm-eval scores of the unpruned model and of each plan, masked in memory. Brackets: value "
        "± 1.96 stderr (a normal approximation), where the task reports a stderr. lm-eval reports each score "
        "alone, not paired over documents, so no difference between plans is claimed here.",
    ]
    for task, metric in scores[["domain", "metric"]].drop_duplicates().itertuples(index=False):
        data = wide[wide["domain"] == task].dropna(subset=[metric])
        base = data[data["ratio"] == 0]
        if base.empty:
            continue
        lines += [
            "",
            f"**{metric}** on {task} ({better(metric)} is better): unpruned {number(base[metric].iloc[0])}"
            f"{_interval(base.iloc[0], metric)}",
            *_ratio_lines(data, metric),
        ]
    return "\n".join(lines)


def reconstruction(frame: pd.DataFrame) -> str:
    """Where the output of the pruned MoE blocks departs most from the original."""
    if frame.empty:
        return "No reconstruction errors to read."
    worst = frame.loc[frame["rel_l2"].idxmax()]
    by_layer = frame.groupby("layer")["rel_l2"].mean()
    return (
        f"**Reading.** The relative L2 error of a block's output is largest in layer {int(worst.layer)} "
        f"({worst.rel_l2:.2f}, {worst.criterion} at {worst.ratio:.0%}); averaged over plans it goes from "
        f"{by_layer.min():.2f} (layer {by_layer.idxmin()}) to {by_layer.max():.2f} (layer {by_layer.idxmax()})."
    )


def study_curves(
    results: pd.DataFrame,
    *,
    gaps: pd.DataFrame | None = None,
    ratio: float = 0.5,
    metric: str = "loss",
    domain: str = ALL,
    hue: str = "label",
) -> str:
    """The methods at one ratio, best first in the metric's direction, with intervals; a difference is
    claimed only from the paired gaps of `gaps` (`reapkit.study.gaps.gap_table`).

    >>> from reapkit.study.gaps import gap_table
    >>> print(study_curves(results, gaps=gap_table(sequences), metric="delta_loss"))
    **Reading.** Δ loss at 50% removed (all; lower is better), best first: frequency 1.14 [0.85, 1.42], ...
    """
    if hue not in results.columns:
        hue = "criterion"
    data = wide_results(results)
    data = data[(data["domain"] == domain) & np.isclose(data["ratio"], ratio)]
    if data.empty or metric not in data.columns:
        return f"No results at {ratio:.0%} to read."
    means = best_first(data.groupby(hue).mean(numeric_only=True), metric)
    name = "Δ loss" if metric == "delta_loss" else metric
    parts = [f"{label} {number(row[metric])}{_interval(row, metric)}" for label, row in means.iterrows()]
    text = (
        f"**Reading.** {name} at {ratio:.0%} removed ({domain}; {better(metric)} is better), best first: "
        + ", ".join(parts)
        + "."
    )
    return " ".join([text, *_gap_lines(gaps, metric, hue=hue, ratio=ratio, domain=domain)])


def gaps(
    table: pd.DataFrame, *, metric: str = "loss", domain: str = ALL, by: str = "ratio", ratio=None, hue: str = "label"
) -> str:
    """What the forest plot of paired gaps says: per ratio (on `domain`) or per evaluation domain (at
    `ratio`, by="domain"), which methods the reference beats, loses to, or is within noise of.

    >>> from reapkit.study.gaps import gap_table
    >>> print(gaps(gap_table(sequences)))
    **Reading.** Each method's gap to the reference, on the same evaluation sequences:
    <BLANKLINE>
    - 25% removed: reap is better than random +0.46 [+0.13, +0.79]; ...
    - 50% removed: reap is better than random +0.67 [+0.21, +1.14]; ...
    """
    if _gap_columns(table, metric) is None or table.empty:
        return "No paired gaps to read."
    lines = ["**Reading.** Each method's gap to the reference, on the same evaluation sequences:", ""]
    if by == "domain":
        at = ratio if ratio is not None else min(set(table["ratio"]), key=lambda r: (abs(r - 0.5), -r))
        for d in sorted(set(table["domain"]), key=lambda d: (d != ALL, str(d))):
            found = _gap_lines(table, metric, hue=hue, ratio=at, domain=d)
            lines += [f"- {d}, {at:.1%} removed: {found[0].split(': ', 1)[1]}".replace(".0%", "%")] if found else []
        return "\n".join(lines)
    for r in sorted(set(table["ratio"])):
        found = _gap_lines(table, metric, hue=hue, ratio=r, domain=domain)
        lines += [f"- {r:.1%} removed: {found[0].split(': ', 1)[1]}".replace(".0%", "%")] if found else []
    return "\n".join(lines)


def calibration_size(table: pd.DataFrame) -> str:
    """How the kept set and Δ loss move with the calibration's size, and how much with its seed
    (`reapkit.study.sensitivity.calibration_size`); the spreads are over seeds, no difference is claimed."""
    if table.empty:
        return "No calibration-size sensitivity to read."
    by = table.groupby("samples")
    small, large = min(by.groups), max(by.groups)
    jac, loss = by["jaccard"].agg(["mean", "min", "max"]), by["delta_loss"].agg(["mean", "min", "max"])
    return (
        f"**Reading.** With {small} calibration samples per domain the kept experts share {jac.loc[small, 'mean']:.2f} "
        f"({jac.loc[small, 'min']:.2f}-{jac.loc[small, 'max']:.2f} over {table.seed.nunique()} seeds) with those of the "
        f"largest calibration pooled over seeds, with {large} samples {jac.loc[large, 'mean']:.2f} "
        f"({jac.loc[large, 'min']:.2f}-{jac.loc[large, 'max']:.2f}); chance is {table.chance.mean():.2f}. Δ loss goes "
        f"from {loss.loc[small, 'mean']:.2f} ({loss.loc[small, 'min']:.2f}-{loss.loc[small, 'max']:.2f} over seeds) to "
        f"{loss.loc[large, 'mean']:.2f} ({loss.loc[large, 'min']:.2f}-{loss.loc[large, 'max']:.2f}). Each plan's own "
        "interval is in the figure; the spread over seeds is the sampling noise of the calibration itself."
    )


def calibration(sensitivity) -> str:
    """Whether each domain's own calibration serves it best (paired with the best other calibration on
    the same sequences), and how far kept sets overlap against chance.

    `sensitivity`: a `reapkit.study.sensitivity.Sensitivity` (loss, overlap and the per-sequence frame)."""
    from reapkit.measure.schema import UNPRUNED
    from reapkit.measure.stats import bootstrap, sequence_grid
    from reapkit.study.experiments import MIX

    loss, overlap, sequences = sensitivity.loss, sensitivity.overlap, sensitivity.sequences
    singles = [c for c in dict.fromkeys(loss["calibration"]) if c not in (UNPRUNED, MIX)]
    domains = [d for d in dict.fromkeys(loss["eval_domain"]) if d in singles]
    if not domains or len(singles) < 2:
        return "No calibration sensitivity to read."

    def grid(name, domain):
        part = sequences[(sequences["calibration"] == name) & (sequences["domain"] == domain)]
        return sequence_grid(part, "loss", "repeat")

    by = loss.set_index(["eval_domain", "calibration"])
    parts, own_best = [], []
    for d in domains:
        best_other = min((c for c in singles if c != d), key=lambda c: by.loc[(d, c), "loss"])
        (num, den), (mine, _) = grid(best_other, d), grid(d, d)
        gap = bootstrap(num, den, minus=mine)  # the best other calibration minus the own one, same sequences
        says = verdict(gap, "loss")  # "worse": the other calibration loses more
        own_best += [d] if says == "worse" else []
        parts.append(
            f"{d}: {best_other} {gap[0]:+.2f} [{gap[1]:+.2f}, {gap[2]:+.2f}] ({says.replace('worse', 'own better')})"
        )
    text = (
        "**Reading.** Each evaluation domain's loss after pruning with the best other single-domain calibration, "
        f"minus with its own (paired, same sequences, 95%): {'; '.join(parts)}. Own-domain calibration is better "
        f"beyond noise for {len(own_best)} of {len(domains)} domains."
    )
    pairs = overlap[overlap["calibration_a"].isin(singles) & overlap["calibration_b"].isin(singles)]
    pairs = pairs[pairs["calibration_a"] != pairs["calibration_b"]]
    if len(pairs):
        above = int((pairs["jaccard_lo"] > pairs["chance"]).sum())
        text += (
            f" Kept sets of two single-domain calibrations overlap by a mean Jaccard of {pairs.jaccard.mean():.2f}, "
            f"against {pairs.chance.mean():.2f} for random kept sets; {above} of {len(pairs)} pairs lie above "
            "chance beyond their interval."
        )
    return text


def sensitivity(frame: pd.DataFrame, *, value: str = "delta_loss") -> str:
    """Which layers' pruning costs loss beyond noise (per-layer sensitivity, each paired with the unpruned model)."""
    if frame.empty or value not in frame.columns:
        return "No per-layer sensitivity to read."
    by_layer = frame.groupby("layer")[[c for c in interval_columns(value) if c in frame.columns]].mean()
    text = f"**Reading.** Pruning one layer alone: the largest Δ loss is layer {by_layer[value].idxmax()} (+{by_layer[value].max():.2f} nats)"
    low, _ = interval(value)
    if low in by_layer.columns:
        costly = [str(layer) for layer, row in by_layer.iterrows() if row[low] > 0]
        text += (
            f"; the paired interval lies above 0 for layer(s) {', '.join(costly) or 'none'}. The order of layers is "
            "not tested (each is paired with the unpruned model, not with another layer)"
        )
    return text + "."
