"""Short readings of the notebooks' figures, in Markdown, with every number computed from the run.

    >>> from IPython.display import Markdown, display
    >>> display(Markdown(readings.saliency_scale(scores, "reap")))
    >>> display(Markdown(readings.criterion_agreement(agreement, experts=16, ratio=0.5)))

Each function takes the table a figure was drawn from and returns a few sentences saying what to
look at and what this run shows; nothing is pasted by hand, so the text follows the data. No
matplotlib here (and neither torch nor transformers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, UNPRUNED, select, wide_results
from reapkit.select.plan import pruned_count
from reapkit.study.tables import expected_jaccard, spearman_band, uniform_cutoffs, value_table

__all__ = [
    "saliency_scale",
    "cutoff",
    "criterion_agreement",
    "domain_experts",
    "specialisation",
    "distances",
    "space_agreement",
    "clusters",
    "plans",
    "costs",
    "benchmark_scores",
    "LOWER_IS_BETTER",
    "reconstruction",
    "disagreement",
    "global_budget",
    "coactivation",
    "study_curves",
    "calibration",
    "sensitivity",
]


def _f(value, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _interval(row, metric: str) -> str:
    lo, hi = f"{metric}_lo", f"{metric}_hi"
    if lo in row.index and hi in row.index and np.isfinite(row[lo]) and np.isfinite(row[hi]):
        return f" [{_f(row[lo])}, {_f(row[hi])}]"
    return ""


# --------------------------------------------------------------------------------------------
# 01 saliency
# --------------------------------------------------------------------------------------------


def saliency_scale(scores: pd.DataFrame, criterion: str = "reap") -> str:
    """How far the raw scale of `criterion` differs between layers (why a global budget is not uniform)."""
    table = value_table(select(scores, criterion=criterion, domain=ALL))
    if table.empty:
        return f"No {criterion} scores to read."
    peak = table.max(axis=1)
    low, high = peak.idxmin(), peak.idxmax()
    within = (table.max(axis=1) / table.where(table > 0).min(axis=1)).median()
    return (
        f"**Reading.** The largest {criterion} score of a layer goes from {_f(peak[low], 3)} (layer {low}) to "
        f"{_f(peak[high], 3)} (layer {high}), a factor of {_f(peak[high] / peak[low], 1)}; within a layer the "
        f"strongest expert scores a median {_f(within, 1)}x the weakest. A uniform plan compares scores only "
        "within a layer; a global budget (notebook 4) compares them across layers, each divided by its layer's "
        "mean score."
    )


def cutoff(scores: pd.DataFrame, criterion: str, ratio: float) -> str:
    """What a uniform plan at `ratio` keeps: the score mass its kept experts hold in each layer."""
    data = select(scores, criterion=criterion, domain=ALL)
    table = value_table(data)
    if table.empty:
        return f"No {criterion} scores to read."
    cut = uniform_cutoffs(data, ratio)
    mass = []
    for _, row in table.iterrows():
        values = np.sort(row.dropna().to_numpy(float))[::-1]
        total = values.sum()
        keep = values.size - pruned_count(values.size, ratio)
        mass.append(values[:keep].sum() / total if total > 0 else np.nan)
    mass = np.asarray(mass)
    return (
        f"**Reading.** Removing {ratio:.0%} of the experts of each layer ({int(cut.experts.iloc[0] - cut.kept.iloc[0])} "
        f"of {int(cut.experts.iloc[0])}) keeps experts holding {np.nanmin(mass):.0%} to {np.nanmax(mass):.0%} of a "
        f"layer's total {criterion} score. A steep curve at the cut-off means the choice there is clear; a "
        "flat one means the removed and the kept experts score alike."
    )


def criterion_agreement(agreement: pd.DataFrame, *, experts: int, ratio: float) -> str:
    """Rank correlation and pruned-set overlap of each pair of criteria, against chance."""
    data = agreement[agreement["ratio"] == ratio] if "ratio" in agreement.columns else agreement
    if data.empty:
        return "No criterion pairs to compare."
    pairs = data.groupby(["criterion_a", "criterion_b"])[["spearman", "overlap"]].mean()
    removed = pruned_count(experts, ratio)
    chance = expected_jaccard(experts, removed)
    low, high = spearman_band(experts)
    lines = [
        f"**Reading.** Mean over layers, at {ratio:.0%} removed. Two random choices of {removed} of {experts} "
        f"experts overlap by {chance:.2f} (Jaccard) on average, and random rankings give a Spearman rho "
        f"between {low:.2f} and {high:.2f} (95%):",
        "",
    ]
    for (a, b), row in pairs.sort_values("overlap", ascending=False).iterrows():
        verdict = "at chance" if row.overlap <= chance + 0.05 else "above chance"
        lines.append(f"- {a} / {b}: rho {row.spearman:.2f}, overlap {row.overlap:.2f} ({verdict})")
    return "\n".join(lines)


def domain_experts(shares: pd.DataFrame, *, threshold: float = 2.0) -> str:
    """How many experts serve one domain far more than a uniform router would (enrichment >= threshold)."""
    if shares.empty:
        return "No per-domain statistics (the calibration has one domain)."
    enriched = shares[shares["enrichment"] >= threshold]
    per_domain = enriched.groupby("domain")["expert"].count().reindex(sorted(set(shares.domain)), fill_value=0)
    cells = shares.groupby(["layer", "expert"]).ngroups
    top = shares.loc[shares["enrichment"].idxmax()]
    return (
        f"**Reading.** {len(enriched.groupby(['layer', 'expert']))} of {cells} experts receive at least "
        f"{threshold:g}x a uniform share of some domain ("
        + ", ".join(f"{d} {n}" for d, n in per_domain.items())
        + f"). The most enriched is expert {int(top.expert)} of layer {int(top.layer)} for {top.domain}: "
        f"{top.enrichment:.1f}x. Pruning such an expert costs its domain most; calibration without that domain "
        "gives it no reason to stay."
    )


def specialisation(table: pd.DataFrame) -> str:
    """How specialisation changes with depth."""
    if table.empty:
        return "No per-domain statistics (the calibration has one domain)."
    weighted = table.assign(_w=table["specialisation"] * table["usage"]).groupby("layer")
    by_layer = weighted["_w"].sum() / weighted["usage"].sum()  # usage-weighted, as the figure draws it
    first, last = by_layer.index[0], by_layer.index[-1]
    peak = by_layer.idxmax()
    change = by_layer[last] - by_layer[first]
    trend = "rises" if change > 0.02 else "falls" if change < -0.02 else "stays level"
    return (
        f"**Reading.** Mean specialisation (weighted by usage) {trend} from {by_layer[first]:.2f} (layer {first}) to "
        f"{by_layer[last]:.2f} "
        f"(layer {last}); it peaks at layer {peak} ({by_layer[peak]:.2f}). 0 means an expert serves every domain "
        "alike, 1 that it serves one domain only."
    )


# --------------------------------------------------------------------------------------------
# 02 clusters
# --------------------------------------------------------------------------------------------


def distances(matrices: dict) -> str:
    """Spread of the off-diagonal angular distances in each space: structure or none."""
    rows = []
    for (space, layer), d in matrices.items():
        d = np.asarray(d, float)
        off = d[~np.eye(len(d), dtype=bool)]
        rows.append((space, layer, off.mean(), off.std()))
    frame = pd.DataFrame(rows, columns=["space", "layer", "mean", "std"]).groupby("space")[["mean", "std"]].mean()
    lines = [
        "**Reading.** Angular distance 0 = same direction, 0.5 = orthogonal. Mean (spread) of the distances "
        "between two experts of a layer:",
        "",
    ]
    for space, row in frame.iterrows():
        note = (
            " - nearly constant: no cluster structure in this space"
            if row["std"] < 0.1 * max(row["mean"], 1e-9)
            else ""
        )
        lines.append(f"- {space}: {row['mean']:.2f} ({row['std']:.3f}){note}")
    return "\n".join(lines)


def space_agreement(table: pd.DataFrame) -> str:
    """Whether the spaces rank expert pairs alike (Spearman of their distances)."""
    if table.empty:
        return "Only one space: nothing to compare."
    pairs = table.groupby(["space_a", "space_b"])["spearman"].mean()
    text = "; ".join(f"{a} / {b} {r:.2f}" for (a, b), r in pairs.items())
    verdict = "barely agree" if pairs.abs().max() < 0.3 else "agree in part" if pairs.abs().max() < 0.7 else "agree"
    return (
        f"**Reading.** Mean rank correlation of the pairwise distances, per pair of spaces: {text}. The spaces "
        f"{verdict}: which experts look alike depends on where one looks."
    )


def clusters(saliency: np.ndarray, labels: dict, *, ratio: float) -> str:
    """How a uniform plan at `ratio` (by these scores) hits the clusters: whole clusters or inside them.

    `saliency`: {layer: scores [E]}; `labels`: {layer: cluster label per expert}."""
    whole, total = 0, 0
    for layer, scores in saliency.items():
        scores = np.asarray(scores, float)
        removed = set(np.argsort(scores, kind="stable")[: pruned_count(len(scores), ratio)].tolist())
        lab = np.asarray(labels[layer])
        for c in np.unique(lab):
            members = set(np.flatnonzero(lab == c).tolist())
            total += 1
            whole += members <= removed
    return (
        f"**Reading.** At {ratio:.0%} removed, {whole} of {total} clusters lose every member (a kind of function "
        f"removed); the other removals fall inside clusters that keep a member (near-duplicates removed)."
    )


# --------------------------------------------------------------------------------------------
# 03 pruning
# --------------------------------------------------------------------------------------------


def plans(plans_: dict) -> str:
    """How much the criteria's plans agree on the experts they remove, against chance, at each ratio."""
    by_ratio: dict = {}
    for (criterion, ratio), plan in plans_.items():
        by_ratio.setdefault(ratio, {})[criterion] = plan
    lines = ["**Reading.** Overlap (Jaccard) of the experts two criteria remove, mean over layers:", ""]
    for ratio, group in sorted(by_ratio.items()):
        names = list(group)
        plan = group[names[0]]
        experts = min(plan.num_experts.values())
        chance = expected_jaccard(experts, pruned_count(experts, ratio))
        values = []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                j = [
                    len(set(group[a].removed(layer)) & set(group[b].removed(layer)))
                    / max(1, len(set(group[a].removed(layer)) | set(group[b].removed(layer))))
                    for layer in plan.layers
                ]
                values.append(f"{a} / {b} {np.mean(j):.2f}")
        lines.append(f"- {ratio:.0%} removed (chance {chance:.2f}): " + ("; ".join(values) or "one criterion"))
    return "\n".join(lines)


#: Metrics where lower is better; every other metric (accuracy, agreement, ...) is read as higher = better.
LOWER_IS_BETTER = {"loss", "kl", "perplexity", "delta_loss", "bits_per_byte", "byte_perplexity", "word_perplexity"}


def _ratio_lines(data: pd.DataFrame, metric: str) -> list[str]:
    """One line per ratio > 0: the best criterion, every criterion's value and interval, and whether the
    two best intervals overlap."""
    better = "min" if metric in LOWER_IS_BETTER else "max"
    lines = []
    for ratio, group in data[data["ratio"] > 0].groupby("ratio"):
        group = group.set_index("criterion")
        best = getattr(group[metric], f"idx{better}")()
        ordered = group.sort_values(metric, ascending=better == "min")
        parts = [f"{c} {_f(r[metric])}{_interval(r, metric)}" for c, r in ordered.iterrows()]
        line = f"- {ratio:.0%} removed: best {best}; " + ", ".join(parts)
        bounds = [f"{metric}_lo", f"{metric}_hi"]
        if len(ordered) > 1 and set(bounds) <= set(ordered.columns) and np.isfinite(ordered[bounds].iloc[:2]).all(None):
            first, second = ordered.iloc[0], ordered.iloc[1]
            if better == "min":
                apart = first[f"{metric}_hi"] < second[f"{metric}_lo"]
            else:
                apart = first[f"{metric}_lo"] > second[f"{metric}_hi"]
            line += "" if apart else f" (the intervals of {ordered.index[0]} and {ordered.index[1]} overlap)"
        lines.append(line)
    return lines


def costs(results: pd.DataFrame, *, metric: str = "loss", domain: str = ALL) -> str:
    """Each criterion's cost at each ratio, with intervals when the results carry them."""
    data = results[results["domain"] == domain]
    base = data[data["ratio"] == 0]
    if data.empty or base.empty:
        return "No results to read."
    lines = [
        f"**Reading.** {metric} on {domain} held-out tokens; unpruned {_f(base[metric].iloc[0])}"
        f"{_interval(base.iloc[0], metric)}. Brackets: 95% bootstrap intervals over evaluation sequences.",
        "",
    ]
    return "\n".join(lines + _ratio_lines(data, metric))


def benchmark_scores(scores: pd.DataFrame) -> str:
    """lm-eval scores (long rows of `reapkit.measure.harness.lm_eval_plans`) per task and metric, as `costs` reads loss.

    >>> readings.benchmark_scores(scores)   # "**acc** on reapkit_continuation: unpruned 0.44 [0.19, 0.69] ..."
    """
    if scores.empty or "metric" not in scores.columns:
        return "No benchmark scores to read."
    wide = wide_results(scores)
    lines = [
        "**Reading.** lm-eval scores of the unpruned model and of each plan, masked in memory. Brackets: value "
        "± 1.96 stderr (a normal approximation), where the task reports a stderr; overlapping brackets are "
        "within noise at this number of documents.",
    ]
    for task, metric in scores[["domain", "metric"]].drop_duplicates().itertuples(index=False):
        data = wide[wide["domain"] == task].dropna(subset=[metric])
        base = data[data["ratio"] == 0]
        if base.empty:
            continue
        direction = "lower" if metric in LOWER_IS_BETTER else "higher"
        lines += [
            "",
            f"**{metric}** on {task} ({direction} is better): unpruned {_f(base[metric].iloc[0])}"
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


# --------------------------------------------------------------------------------------------
# 04 / 05 study
# --------------------------------------------------------------------------------------------


def disagreement(scores: pd.DataFrame, *, ratio: float, a: str = "reap", b: str = "frequency") -> str:
    """How many experts the two criteria keep differently at `ratio`, and what those experts look like."""
    only_a = only_b = total = 0
    gate_a, gate_b = [], []
    for _, part in select(scores, domain=ALL).groupby("layer"):
        table = part.pivot_table(index="expert", columns="criterion", values="value")
        if a not in table or b not in table:
            return f"Needs {a} and {b} scores."
        n = len(table)
        keep = n - pruned_count(n, ratio)
        kept_a = set(table[a].sort_values(ascending=False, kind="stable").index[:keep])
        kept_b = set(table[b].sort_values(ascending=False, kind="stable").index[:keep])
        only_a += len(kept_a - kept_b)
        only_b += len(kept_b - kept_a)
        total += n
        share = table[b] / table[b].sum() if table[b].sum() > 0 else table[b]
        gate_a += list(share[list(kept_a - kept_b)])
        gate_b += list(share[list(kept_b - kept_a)])
    text = (
        f"**Reading.** At {ratio:.0%} removed, {a} and {b} keep the same experts except {only_a} of {total}: "
        f"{only_a} kept by {a} only, as many by {b} only."
    )
    if gate_a and gate_b:
        text += (
            f" The experts only {a} keeps receive a median {np.median(gate_a):.1%} of their layer's tokens, "
            f"those only {b} keeps {np.median(gate_b):.1%}: {a} keeps rarely routed experts whose gated outputs "
            "are large."
        )
    return text


def global_budget(uniform, budget) -> str:
    """What a global budget of the same total changes against the uniform plan."""
    diff = {layer: len(budget.kept[layer]) - len(uniform.kept[layer]) for layer in uniform.layers}
    more = [f"layer {k} {v:+d}" for k, v in diff.items() if v]
    return (
        f"**Reading.** Both plans keep {uniform.total_kept} experts in all. The global budget moves them between "
        "layers: " + (", ".join(more) if more else "it keeps the same count in every layer") + "."
    )


def coactivation(coselect: np.ndarray) -> str:
    """The strongest co-selected pair of one layer against what independent routing would give."""
    c = np.asarray(coselect, float)
    diag = np.diag(c)
    union = diag[:, None] + diag[None, :] - c
    jac = np.divide(c, union, out=np.zeros_like(c), where=union > 0)
    np.fill_diagonal(jac, np.nan)
    if not np.isfinite(jac).any():
        return "No co-selection recorded."
    i, j = np.unravel_index(np.nanargmax(jac), jac.shape)
    return (
        f"**Reading.** Experts {i} and {j} are co-selected most: {jac[i, j]:.2f} of the tokens routed to either go "
        f"to both (mean over pairs {np.nanmean(jac):.2f}). Experts that always fire together are candidates for "
        "merging rather than pruning."
    )


def study_curves(
    results: pd.DataFrame, *, ratio: float = 0.5, metric: str = "loss", domain: str = ALL, hue: str = "label"
) -> str:
    """The methods at one ratio, best first, with intervals; which differences the intervals resolve."""
    if hue not in results.columns:
        hue = "criterion"
    data = results[(results["domain"] == domain) & np.isclose(results["ratio"], ratio)]
    if data.empty:
        return f"No results at {ratio:.0%} to read."
    means = data.groupby(hue).mean(numeric_only=True).sort_values(metric, ascending=metric != "agreement")
    name = "Δ loss" if metric == "delta_loss" else metric
    best, second = means.index[0], means.index[1] if len(means) > 1 else None
    parts = [f"{name} {_f(row[metric])}{_interval(row, metric)}" for name, row in means.iterrows()]
    text = f"**Reading.** {name} at {ratio:.0%} removed ({domain}), best first: " + ", ".join(parts) + "."
    if second is not None and f"{metric}_lo" in means.columns:
        a, b = means.loc[best], means.loc[second]
        overlap = (
            (a[f"{metric}_hi"] >= b[f"{metric}_lo"])
            if metric != "agreement"
            else (a[f"{metric}_lo"] <= b[f"{metric}_hi"])
        )
        text += (
            f" The intervals of {best} and {second} overlap (each interval alone; a paired comparison on the "
            "same sequences is sharper)."
            if overlap
            else f" {best}'s interval clears {second}'s."
        )
    return text


def calibration(loss: pd.DataFrame, overlap: pd.DataFrame) -> str:
    """Whether each domain's own calibration serves it best, and how far kept sets overlap against chance.

    `loss`: eval_domain, calibration, delta_loss (`Sensitivity.loss`); `overlap`: calibration_a,
    calibration_b, jaccard, chance (`Sensitivity.overlap`)."""
    data = loss[(loss["calibration"] != UNPRUNED) & (loss["eval_domain"] != ALL)]
    if data.empty:
        return "No calibration sensitivity to read."
    best = data.loc[data.groupby("eval_domain")["delta_loss"].idxmin(), ["eval_domain", "calibration", "delta_loss"]]
    own = [row.eval_domain for row in best.itertuples() if row.calibration == row.eval_domain]
    parts = [f"{row.eval_domain}: {row.calibration} (+{row.delta_loss:.2f})" for row in best.itertuples()]
    text = (
        f"**Reading.** Lowest Δ loss per evaluation domain, by calibration set: {'; '.join(parts)}. "
        f"Own-domain calibration is best for {len(own)} of {len(best)} domains."
    )
    pairs = overlap[
        (overlap["calibration_a"] != overlap["calibration_b"])
        & ~overlap["calibration_a"].isin(["mix"])
        & ~overlap["calibration_b"].isin(["mix"])
    ]
    if len(pairs):
        text += (
            f" Kept sets of two single-domain calibrations overlap by a mean Jaccard of {pairs.jaccard.mean():.2f}, "
            f"against {pairs.chance.mean():.2f} for random kept sets."
        )
    return text


def sensitivity(frame: pd.DataFrame, *, value: str = "delta_loss") -> str:
    """Which layer's pruning costs most (per-layer sensitivity)."""
    if frame.empty or value not in frame.columns:
        return "No per-layer sensitivity to read."
    by_layer = frame.groupby("layer")[value].mean()
    return (
        f"**Reading.** Pruning one layer alone costs most in layer {by_layer.idxmax()} (+{by_layer.max():.2f} nats) "
        f"and least in layer {by_layer.idxmin()} (+{by_layer.min():.2f}): where a global budget should keep more "
        "experts."
    )
