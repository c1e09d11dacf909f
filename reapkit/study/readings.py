"""Short readings of the notebooks' figures, in Markdown, with every number computed from the run.

    >>> from reapkit.study import readings
    >>> print(readings.saliency_scale(scores, "reap"))    # in a notebook: display(Markdown(...))
    **Reading.** The largest reap score of a layer goes from 3.845 (layer 1) to 11.735 (layer 3), a
    factor of 3.1; ...
    >>> from reapkit.study.tables import agreement_table
    >>> agreement = agreement_table(scores, criteria=["reap", "frequency"], ratio=0.5)
    >>> print(readings.criterion_agreement(agreement, experts=16, ratio=0.5))
    **Reading.** Mean over 4 layer(s), at 50% removed. ...
    - reap / frequency: rho 0.28 (above chance), overlap 0.46 (at chance)

Each function takes the table a figure was drawn from and returns a few sentences saying what to
look at and what this run shows; nothing is pasted by hand, so the text follows the data. The
readings that compare methods (costs, study_curves, gaps, calibration, ...) live in
:mod:`reapkit.study.comparisons` (every difference from a paired gap) and are reached from here too.
No matplotlib here (and neither torch nor transformers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, display_name, interval_columns, select
from reapkit.select.geometry import coselection_lift
from reapkit.select.plan import pruned_count
from reapkit.study.comparisons import (
    benchmark_scores,
    calibration,
    calibration_size,
    costs,
    gaps,
    number,
    reconstruction,
    sensitivity,
    study_curves,
)
from reapkit.study.tables import (
    expected_jaccard,
    jaccard_band,
    pruned_experts,
    spearman_band,
    specialisation_by_layer,
    uniform_plans,
    value_table,
)

__all__ = [
    "saliency_scale",
    "cutoff",
    "usage",
    "kept_mass",
    "criterion_agreement",
    "domain_experts",
    "specialisation",
    "distances",
    "space_agreement",
    "clusters",
    "plans",
    "costs",
    "benchmark_scores",
    "reconstruction",
    "disagreement",
    "global_budget",
    "coactivation",
    "study_curves",
    "gaps",
    "calibration",
    "calibration_size",
    "sensitivity",
    "merging",
]


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
        f"**Reading.** The largest {criterion} score of a layer goes from {number(peak[low], 3)} (layer {low}) to "
        f"{number(peak[high], 3)} (layer {high}), a factor of {number(peak[high] / peak[low], 1)}; within a layer the "
        f"strongest expert scores a median {number(within, 1)}x the weakest. A uniform plan compares scores only "
        "within a layer; a global budget (notebook 4) compares them across layers, each divided by its layer's "
        "mean score."
    )


def cutoff(scores: pd.DataFrame, criterion: str, ratio: float) -> str:
    """What the sorted-score curves show at the cut-off: how far the weakest kept expert's score is from
    the strongest's and from the strongest pruned one's (ratios read off the log axis)."""
    data = select(scores, criterion=criterion, domain=ALL)
    table = value_table(data)
    if table.empty:
        return f"No {criterion} scores to read."
    spans, steps = [], []
    for _, row in table.iterrows():
        values = np.sort(row.dropna().to_numpy(float))[::-1]
        keep = values.size - pruned_count(values.size, ratio)
        if 0 < keep < values.size and values[keep - 1] > 0:
            spans.append(values[0] / values[keep - 1])
            steps.append(values[keep - 1] / values[keep] if values[keep] > 0 else np.inf)
    if not spans:
        return f"No {criterion} scores to read."
    return (
        f"**Reading.** At {ratio:.0%} removed, the strongest expert of a layer scores {min(spans):.1f}x to "
        f"{max(spans):.1f}x the weakest one kept, and the weakest kept one {min(steps):.2f}x to {max(steps):.2f}x "
        "the strongest pruned one. A step near 1x at the cut-off means the kept and the pruned experts there "
        "score alike: the choice is close."
    )


def usage(summary: pd.DataFrame) -> str:
    """How unevenly each layer routes (`reapkit.study.kept.usage_summary`), never-routed experts counted."""
    if summary.empty:
        return "No routing counts to read."
    never = int(summary["never_routed"].sum())
    flat, steep = summary.loc[summary["gini"].idxmin()], summary.loc[summary["gini"].idxmax()]
    return (
        f"**Reading.** Gini of the routed tokens from {flat.gini:.2f} (layer {int(flat.layer)}) to {steep.gini:.2f} "
        f"(layer {int(steep.layer)}); the less-used half of a layer's experts receives {summary.bottom_half.min():.0%} "
        f"to {summary.bottom_half.max():.0%} of its tokens (a uniform router: 50%). {never} expert(s) never routed "
        "on the calibration data: every criterion scores them 0."
    )


def kept_mass(table: pd.DataFrame, *, ratio: float) -> str:
    """At `ratio`, the share of the REAP score and of the routed tokens each criterion's plan keeps."""
    rows = table[np.isclose(table["ratio"], ratio)] if len(table) else table
    if rows.empty:
        return "No kept mass to read."
    means = rows.groupby("criterion", sort=False)[["kept_score", "kept_routing"]].agg(["mean", "min", "max"])
    parts = [
        f"{c}: {r[('kept_score', 'mean')]:.0%} of the REAP score ({r[('kept_score', 'min')]:.0%}-"
        f"{r[('kept_score', 'max')]:.0%} over layers), {r[('kept_routing', 'mean')]:.0%} of the routed tokens"
        for c, r in means.iterrows()
    ]
    return (
        f"**Reading.** Keeping {1 - ratio:.0%} of each layer's experts, "
        + "; ".join(parts)
        + ". A criterion keeps more of what it optimises; the gap between the panels is what it gives up."
    )


def criterion_agreement(agreement: pd.DataFrame, *, experts: int, ratio: float) -> str:
    """Rank correlation and pruned-set overlap of each pair of criteria, against what chance gives for a
    mean over that many layers (`jaccard_band`, `spearman_band`)."""
    data = agreement[agreement["ratio"] == ratio] if "ratio" in agreement.columns else agreement
    if data.empty:
        return "No criterion pairs to compare."
    pairs = data.groupby(["criterion_a", "criterion_b"])[["spearman", "overlap"]].mean()
    layers = int(data["layer"].nunique()) if "layer" in data.columns else 1
    removed = pruned_count(experts, ratio)
    chance = expected_jaccard(experts, removed)
    (rho_lo, rho_hi), (jac_lo, jac_hi) = spearman_band(experts, layers), jaccard_band(experts, removed, layers)
    lines = [
        f"**Reading.** Mean over {layers} layer(s), at {ratio:.0%} removed. Two random choices of {removed} of "
        f"{experts} experts overlap by {chance:.2f} (Jaccard) on average, and 95% of means over {layers} layer(s) "
        f"fall in [{jac_lo:.2f}, {jac_hi:.2f}]; for Spearman rho of random rankings: [{rho_lo:.2f}, {rho_hi:.2f}]:",
        "",
    ]

    def place(value, low, high):
        return "above chance" if value > high else "below chance" if value < low else "at chance"

    for (a, b), row in pairs.sort_values("overlap", ascending=False).iterrows():
        lines.append(
            f"- {a} / {b}: rho {row.spearman:.2f} ({place(row.spearman, rho_lo, rho_hi)}), overlap "
            f"{row.overlap:.2f} ({place(row.overlap, jac_lo, jac_hi)})"
        )
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
    """How specialisation changes with depth; a change is claimed only where the first and the last
    layer's 95% intervals (bootstrap over their experts, independent samples) do not overlap."""
    if table.empty:
        return "No per-domain statistics (the calibration has one domain)."
    mean, low, high = interval_columns("specialisation")
    by_layer = specialisation_by_layer(table).set_index("layer")  # usage-weighted, as the figure draws it
    first, last = by_layer.iloc[0], by_layer.iloc[-1]
    peak = by_layer[mean].idxmax()
    trend = (
        "rises" if first[high] < last[low] else "falls" if first[low] > last[high] else "does not change beyond noise"
    )
    return (
        f"**Reading.** Mean specialisation (weighted by usage) {trend} from {first[mean]:.2f} "
        f"[{first[low]:.2f}, {first[high]:.2f}] (layer {by_layer.index[0]}) to {last[mean]:.2f} "
        f"[{last[low]:.2f}, {last[high]:.2f}] (layer {by_layer.index[-1]}); the largest mean is layer {peak}'s "
        f"({by_layer.loc[peak, mean]:.2f}). 0 means an expert serves every domain alike, 1 that it serves one "
        "domain only."
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
        removed = set(np.flatnonzero(pruned_experts(scores, ratio)).tolist())
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


# --------------------------------------------------------------------------------------------
# 04 / 05 study
# --------------------------------------------------------------------------------------------


def disagreement(scores: pd.DataFrame, *, ratio: float, a: str = "reap", b: str = "frequency", **routing) -> str:
    """How many experts the two criteria's plans keep differently at `ratio`, and what those experts look
    like (`routing`: n_group, topk_group, top_k of the router, as for `reapkit.study.tables.uniform_plans`)."""
    only_a = only_b = total = 0
    gate_a, gate_b = [], []
    plans = uniform_plans(scores, [a, b], ratio=ratio, **routing)
    if set(plans) != {a, b}:
        return f"Needs {a} and {b} scores."
    shares = value_table(select(scores, criterion=b, domain=ALL))
    for layer in plans[a].layers:
        kept_a, kept_b = set(plans[a].kept[layer]), set(plans[b].kept[layer])
        only_a += len(kept_a - kept_b)
        only_b += len(kept_b - kept_a)
        total += plans[a].num_experts[layer]
        row = shares.loc[layer]
        share = row / row.sum() if row.sum() > 0 else row
        gate_a += list(share.iloc[sorted(kept_a - kept_b)])
        gate_b += list(share.iloc[sorted(kept_b - kept_a)])
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


def global_budget(uniform, budget, table: pd.DataFrame | None = None) -> str:
    """What a global budget of the same total changes against the uniform plan, and its one threshold
    (`table`: `reapkit.study.kept.budget_table`)."""
    diff = {layer: len(budget.kept[layer]) - len(uniform.kept[layer]) for layer in uniform.layers}
    more = [f"layer {k} {v:+d}" for k, v in diff.items() if v]
    text = (
        f"**Reading.** Both plans keep {uniform.total_kept} experts in all. The global budget moves them between "
        "layers: " + (", ".join(more) if more else "it keeps the same count in every layer") + "."
    )
    if table is not None and np.isfinite(table.attrs.get("threshold", np.nan)):
        floor = int((table["kept"] & table["floor"] & (table["budget_score"] < table.attrs["threshold"])).sum())
        text += f" It keeps every expert scoring above {table.attrs['threshold']:.2f}x its layer's mean" + (
            f", and {floor} below it that are their layer's top-k floor." if floor else "."
        )
    return text


def coactivation(coselect: np.ndarray) -> str:
    """The pair of one layer co-selected most often relative to independent routing (`coselection_lift`)."""
    lift = coselection_lift(coselect)
    if not np.isfinite(lift).any():
        return "No co-selection recorded."
    i, j = np.unravel_index(np.nanargmax(lift), lift.shape)
    above = np.nanmean(lift > 1)
    return (
        f"**Reading.** Experts {i} and {j} share a token's top-k {lift[i, j]:.1f}x as often as independent routing "
        f"with their frequencies would give; {above:.0%} of pairs are co-selected more often than that. Experts "
        "that fire together are candidates for merging rather than pruning."
    )


# --------------------------------------------------------------------------------------------
# 02 merging
# --------------------------------------------------------------------------------------------


def merging(distances: pd.DataFrame, fidelity: pd.DataFrame, method: str) -> str:
    """What merging did to the members of its groups (`alignment_distances`, `merge_fidelity`), every number computed.

    >>> print(merging(alignment, fidelity, "m_smoe_faithful"))
    **Reading.** M-SMoE (faithful): ...
    """
    name = display_name(method)
    lines = []
    if len(distances):
        ratio = (distances["after"] / distances["before"].where(distances["before"] > 0)).dropna()
        lines.append(
            f"Aligning neurons brought {int((distances['after'] < distances['before']).sum())} of {len(distances)} "
            f"group members closer to their dominant expert (weight distance after / before: median {number(ratio.median())}, "
            f"range {number(ratio.min())} to {number(ratio.max())})."
        )
    members = fidelity[fidelity["member"] != fidelity["representative"]]
    if len(members):
        wide = members.pivot_table(index=["layer", "member"], columns="expert", values="rel_error")
        better = int((wide["merged"] < wide["representative"]).sum())
        lines.append(
            f"On the calibration tokens routed to each of the {len(wide)} merged-away experts, the merged expert's "
            f"output is off by {number(wide['merged'].mean())} of the member's own output norm on average, against "
            f"{number(wide['representative'].mean())} for its representative left unmerged (what pruning the member "
            f"gives its tokens); merging is the closer of the two for {better} of {len(wide)} members."
        )
    return f"**Reading.** {name}: " + " ".join(lines or ["no group merged more than one expert."])
