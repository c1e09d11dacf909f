"""The compression study's findings in plain words: each stated only where its 95 % interval supports it.

    >>> from reapkit.study import layer_sensitivity
    >>> layers = layer_sensitivity(model, obs, eval_batches)
    >>> print(summarise(sequences, sensitivity, layers))    # of study_sequences and calibration_sensitivity
    ### Compression: REAP against each baseline
    ...
    ### Calibration: which experts survive
    ...
    ### Per-layer sensitivity
    ...

Reads the per-sequence frames of :mod:`reapkit.study.experiments` and bootstraps every gap it reports
(`reapkit.study.gaps`: paired, on the same sequences), so the words never claim more than the data show.
"""

from __future__ import annotations

import pandas as pd

from reapkit.errors import InvalidInput
from reapkit.measure.schema import UNPRUNED, better
from reapkit.measure.schema import interval_columns as _interval
from reapkit.measure.stats import RESAMPLES, bootstrap, sequence_grid
from reapkit.study.experiments import MIX
from reapkit.study.gaps import PairedGaps, verdict
from reapkit.study.sensitivity import Sensitivity

__all__ = ["summarise"]


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


def _gap_table(gaps: PairedGaps, labels: list, ratios: list, kept, *, domain: str, metric: str):
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


def _baseline_line(gaps: PairedGaps, label: str, found: dict, *, domain: str, metric: str, with_kl: bool) -> str:
    """- vs `label`: at how many ratios REAP is better / worse / within noise, the largest gap, KL."""
    says = {r: verdict(g, metric) for r, g in found.items()}  # the baseline minus REAP: "worse" = REAP better
    better_ = [r for r, v in says.items() if v == "worse"]
    worse = [r for r, v in says.items() if v == "better"]
    noise = [r for r, v in says.items() if v == "within noise"]
    name = f"`{label}`" + (" (mean of seeds)" if label == "random" else "")
    text = f"- vs {name}: REAP is better at {len(better_)} of {len(found)} ratios"
    text += f", worse at {', '.join(_pct(r) for r in worse)}" if worse else ""
    text += f", within noise at {', '.join(_pct(r) for r in noise)}" if noise else ""
    big = max(found, key=lambda r: abs(found[r][0]))
    text += f"; the largest gap is {_interval_text(*found[big], sign=True)} at {_pct(big)}"
    if with_kl:
        kl = [verdict(gaps.gap(label, "reap", r, domain, "kl"), "kl") for r in found]
        text += (
            f"; KL to the unpruned model lower for REAP at {kl.count('worse')} of {len(kl)} ratios, "
            f"higher at {kl.count('better')}"
        )
    return text + "."


def _ranking_lines(gaps: PairedGaps, labels: list, ratios: list, *, domain: str, metric: str) -> list[str]:
    """Per ratio: the method with the best value (in the metric's direction), and which others are within noise of it."""
    lines = []
    for r in ratios:
        means = {label: gaps.value(label, r, domain, metric)[0] for label in labels if gaps.has(label, r)}
        if len(means) < 2:
            continue
        order = _best_first(means, metric)
        tied = [x for x in order[1:] if verdict(gaps.gap(x, order[0], r, domain, metric), metric) != "worse"]
        text = f"- At {_pct(r)} the {_best_word(metric)} {metric} is `{order[0]}` ({_num(means[order[0]])})"
        if tied:
            text += "; within noise of it: " + ", ".join(f"`{label}`" for label in tied)
        else:
            text += f", ahead of `{order[1]}` by {_interval_text(*gaps.gap(order[1], order[0], r, domain, metric), sign=True)}"
        lines.append(text + ".")
    return lines


def _best_first(means: dict, metric: str) -> list:
    """The keys of {name: value} best first in `metric`'s direction (`reapkit.measure.schema.better`)."""
    return sorted(means, key=means.get, reverse=better(metric) == "higher")


def _best_word(metric: str) -> str:
    return "lowest" if better(metric) == "lower" else "highest"


def _headline_line(at: dict, metric: str) -> str:
    """REAP against every baseline at 50 % ({baseline: its gap to REAP})."""
    beaten = [label for label, g in at.items() if verdict(g, metric) == "worse"]
    lost = [label for label, g in at.items() if verdict(g, metric) == "better"]
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
    gaps = PairedGaps(data, resamples=resamples, seed=seed)
    labels = list(dict.fromkeys(data["label"]))
    ratios = sorted(data["ratio"].unique())
    methods = dict(zip(data["label"], data["method"]))
    base = data[(data["label"] == labels[0]) & (data["ratio"] == ratios[0])]
    base = base.assign(loss=base["loss"] - base["delta_loss"], seed=pd.NA).drop_duplicates("sequence")
    unpruned = bootstrap(*sequence_grid(base, "loss", "seed"), resamples=resamples, seed=seed)
    where = "all evaluation tokens" if domain == "all" else domain
    lines.append(
        f"Metric: {metric} on {where} ({better(metric)} is better); the unpruned model has loss {_interval_text(*unpruned)}. "
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
        f"Each baseline's {metric} minus REAP's, on the same sequences: positive = REAP "
        f"{'better' if better(metric) == 'lower' else 'worse'}; `*` = the "
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
        lines.append(_headline_line(at, metric))
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
    gaps = PairedGaps(data, resamples=resamples, seed=seed)
    labels = [
        label for label in dict.fromkeys(data["label"]) if ((data["label"] == label) & (data["ratio"] == r)).any()
    ]
    if "reap" not in labels:
        return []
    parts, best = [], _best_word(metric)
    for d in dict.fromkeys(data["domain"]):
        means = {label: gaps.value(label, r, d, metric)[0] for label in labels}
        order = _best_first(means, metric)
        if order[0] == "reap":
            if len(order) < 2:
                continue
            gap = gaps.gap(order[1], "reap", r, d, metric)
            says = {"worse": "ahead of", "better": "behind", "within noise": "within noise of"}[verdict(gap, metric)]
            parts.append(f"{d}: REAP {best}, {says} `{order[1]}` ({_interval_text(*gap, sign=True)})")
        else:
            gap = gaps.gap("reap", order[0], r, d, metric)
            parts.append(
                f"{d}: `{order[0]}` {best}, REAP {_interval_text(*gap, sign=True)} from it"
                + ("" if verdict(gap, metric) == "worse" else " (within noise)")
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
        return sequence_grid(
            sequences[(sequences["calibration"] == name) & (sequences["domain"] == d)], "loss", "repeat"
        )

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
        top = rows.iloc[0]
        lines.append(
            f"- The largest estimate is layer {int(top.layer)}'s; the order of the layers is not tested (each "
            "interval is paired with the unpruned model, not with another layer)."
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

        >>> print(summarise(sequences))          # sequences: study_sequences(model, obs, eval_batches)
        ### Compression: REAP against each baseline
        ...

    `sequences` (from `study_sequences`): where REAP wins or loses against each baseline at each
    ratio, by `metric` on `domain`, with paired bootstrap intervals of each gap (random: the mean of
    its seeds, seeds resampled too). `sensitivity` (from `calibration_sensitivity`): how the
    calibration set changes each domain's loss, and how much kept sets overlap against chance.
    `layers` (from `layer_sensitivity`): which layers cost loss when pruned alone.
    """
    if "sequence" not in sequences.columns:
        raise InvalidInput(
            "summarise reads the per-sequence frame of study_sequences (it has a `sequence` column), not the "
            "results frame; call study_sequences(...) and pass that"
        )
    lines = _compression_section(sequences, domain=domain, metric=metric, resamples=resamples, seed=seed)
    if sensitivity is not None:
        lines += _calibration_section(sensitivity, resamples=resamples, seed=seed)
    if layers is not None:
        lines += _layer_section(layers)
    return "\n".join(lines)
