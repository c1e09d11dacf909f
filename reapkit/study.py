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

import copy
import warnings

import numpy as np
import pandas as pd

from .plan import pruned_count

__all__ = ["RATIOS", "CRITERIA", "MERGES", "COLUMNS", "compression_study", "calibration_sensitivity",
           "kept_overlap", "summarise", "results_table"]

RATIOS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625)
CRITERIA = ("reap", "frequency", "soft_frequency", "ean_mean")
MERGES = ("m_smoe", "hc_smoe")
DOMAINS = ("code", "prose", "tools", "math")
#: Columns of the `compression_study` frame, in order.
COLUMNS = ["method", "criterion", "label", "seed", "ratio", "experts_kept", "experts_total", "kept_routing", "domain",
           "tokens", "loss", "perplexity", "kl", "agreement"]
MIX = "mix"
UNPRUNED = "unpruned"


def _label(method: str, criterion: str) -> str:
    return f"global_{criterion}" if method == "global" else criterion


def _check_ratios(ratios) -> list[float]:
    ratios = [ratios] if isinstance(ratios, (int, float)) else list(ratios)
    bad = [r for r in ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1]
    if bad or not ratios:
        raise ValueError(f"ratios must be fractions of experts removed in [0, 1), got {bad or ratios!r}")
    return sorted(dict.fromkeys(float(r) for r in ratios))


# --------------------------------------------------------------------------------------------
# (a) compression study
# --------------------------------------------------------------------------------------------

def compression_study(model, obs, eval_batches, *, ratios=RATIOS, criteria=CRITERIA, random_seeds=(0, 1, 2),
                      merges=MERGES, global_budget=True, margin: int = 0, reference=None,
                      progress: bool = True) -> pd.DataFrame:
    """Every method at every ratio, evaluated per domain against the unpruned model.

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
    evaluation domain and ``"all"``), `tokens`, `loss`, `perplexity`, `kl` (mean KL(unpruned ||
    variant), nats) and `agreement`.
    """
    import torch
    from tqdm.auto import tqdm

    from .evaluate import evaluate, reference_outputs
    from .merge import _check_method, apply_merge, plan_merge
    from .plan import PruningPlan
    from .prune import mask_experts
    from .saliency import check_criterion

    ratios = _check_ratios(ratios)
    criteria = [check_criterion(c) for c in ([criteria] if isinstance(criteria, str) else criteria) if c != "random"]
    random_seeds = [int(s) for s in ([random_seeds] if isinstance(random_seeds, int) else (random_seeds or []))]
    merges = [merges] if isinstance(merges, str) else list(merges or [])
    for method in merges:
        _check_method(method)
    global_criterion = "reap" if global_budget is True else (check_criterion(global_budget) if global_budget else None)
    obs.check_model(model)
    sizes, top_k, n_layers = list(obs.num_experts), obs.top_k, len(obs.layers)
    counts_seen = obs.pooled()["count"].double().numpy()
    shares = counts_seen / np.maximum(counts_seen.sum(1, keepdims=True), 1)

    notes: list[str] = []
    jobs = []  # (method, criterion, seed, ratio)
    for ratio in ratios:
        counts = [n - pruned_count(n, ratio) for n in sizes]
        if min(counts) < top_k:
            notes.append(f"ratio {ratio:g}: a layer would keep {min(counts)} experts, fewer than top-k = {top_k}; "
                         "every method skipped at this ratio")
            continue
        jobs += [("prune", c, None, ratio) for c in criteria]
        jobs += [("prune", "random", s, ratio) for s in random_seeds]
        if merges and len(set(counts)) > 1:
            notes.append(f"ratio {ratio:g}: layers have different numbers of experts ({sorted(set(sizes))}), and merging "
                         "reduces every layer to one count; merges skipped")
        else:
            jobs += [("merge", m, None, ratio) for m in merges]
        if global_criterion:
            jobs.append(("global", global_criterion, None, ratio))

    if reference is None:
        reference = reference_outputs(model, eval_batches, dtype=torch.float32, progress=False)
    base = evaluate(model, eval_batches, reference=reference, progress=False)
    frames = []
    for method, criterion, seed, ratio in tqdm(jobs, desc="study", unit="variant", disable=not progress):
        counts = [n - pruned_count(n, ratio) for n in sizes]
        total = sum(counts)
        try:
            if method == "merge":
                plan = plan_merge(model, obs, method=criterion, keep=counts[0])
                if all(len(g) == 1 for groups in plan.groups.values() for g in groups):
                    frame = base  # nothing merged: the model itself
                else:
                    merged = apply_merge(copy.deepcopy(model), plan)
                    frame = evaluate(merged, eval_batches, reference=reference, progress=False)
                    del merged
                kept, routing = counts[0], float("nan")
            else:
                if method == "global":
                    plan = PruningPlan.from_global_budget(obs, criterion, total=total, margin=margin)
                    kept = sum(len(v) for v in plan.kept.values())
                else:
                    plan = PruningPlan.from_observations(obs, criterion, ratio=ratio, seed=seed or 0)
                    kept = counts[0] if len(set(counts)) == 1 else total / n_layers
                routing = float(np.mean([shares[pos, plan.kept[layer]].sum() for pos, layer in enumerate(obs.layers)]))
                if not any(plan.removed(layer) for layer in plan.layers):
                    frame = base  # masking nothing is the model itself
                else:
                    with mask_experts(model, plan):
                        frame = evaluate(model, eval_batches, reference=reference, progress=False)
        except ValueError as error:
            notes.append(f"{method} {criterion} at ratio {ratio:g}: skipped ({error})")
            continue
        frames.append(frame.assign(method=method, criterion=criterion, label=_label(method, criterion), seed=seed,
                                   ratio=ratio, experts_kept=kept, experts_total=total, kept_routing=routing))
    if frames:
        results = pd.concat(frames, ignore_index=True)
    else:
        results = pd.DataFrame(columns=COLUMNS)
    results["seed"] = results["seed"].astype("Int64")
    results = results[COLUMNS]
    results.attrs["notes"] = notes
    if notes:
        warnings.warn("compression_study skipped some combinations:\n  " + "\n  ".join(notes), stacklevel=2)
    return results


def results_table(results: pd.DataFrame, **extra) -> pd.DataFrame:
    """The study frame in the layout notebook 04 and `reapkit.plot.loss_vs_ratio` read
    (ratio, criterion = one name per curve, domain, tokens, loss, perplexity, kl, agreement, ...);
    `extra` columns (e.g. model=, calibration=) are added."""
    table = results.drop(columns=["criterion"]).rename(columns={"label": "criterion", "top1_agreement": "agreement"})
    for key, value in extra.items():
        table[key] = value
    return table


# --------------------------------------------------------------------------------------------
# (b) calibration sensitivity
# --------------------------------------------------------------------------------------------

def kept_overlap(plans: dict) -> pd.DataFrame:
    """Mean over layers of the Jaccard index of the kept experts of every pair of plans {name: PruningPlan}."""
    names = list(plans)
    matrix = np.ones((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i < j:
                values = []
                for layer in plans[a].layers:
                    x, y = set(plans[a].kept[layer]), set(plans[b].kept.get(layer, []))
                    values.append(len(x & y) / len(x | y) if x | y else 1.0)
                matrix[i, j] = matrix[j, i] = float(np.mean(values))
    return pd.DataFrame(matrix, index=pd.Index(names, name="calibration"), columns=pd.Index(names, name="calibration"))


def calibration_sensitivity(model, tokenizer, eval_batches, *, domains=DOMAINS, samples: int = 16, ratio: float = 0.5,
                            criterion: str = "reap", calibration=None, max_length: int = 128, batch_size: int = 8,
                            seed: int = 0, cache_dir=None, progress: bool = True):
    """Prune at `ratio` by `criterion` calibrated on each single domain and on their mix; loss on every domain.

    Calibration: `calibration` may be `Observations` (with per-domain statistics, e.g. those of the
    main study: no model pass at all), a list of `Batch` (observed here), or None: `samples`
    sequences of each built-in domain of `domains` (calibration split, `max_length` tokens),
    tokenised with `tokenizer` and observed (cached under `cache_dir` when given). The calibration
    sets are each domain of `domains` the observations hold, and ``"mix"`` (all of them pooled).

    Returns ``(loss_matrix, overlap)``: `loss_matrix` has one row per evaluation domain (and
    ``"all"``) and the columns ``"unpruned"``, then one per calibration set; `overlap` is calibration
    set x calibration set, the mean over MoE layers of the Jaccard index of their kept experts
    (1 on the diagonal).
    """
    from .evaluate import evaluate
    from .observations import Observations
    from .observe import observe, observe_cached
    from .plan import PruningPlan
    from .prune import mask_experts
    from .saliency import check_criterion

    check_criterion(criterion)
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be a fraction of experts removed in [0, 1), got {ratio!r}")
    domains = [domains] if isinstance(domains, str) else list(domains)
    if isinstance(calibration, Observations):
        obs = calibration
        obs.check_model(model)
    else:
        if calibration is None:
            from .data import calibration_batches

            if tokenizer is None:
                raise ValueError("calibration_sensitivity builds its calibration sets from text, so it needs a tokenizer; "
                                 "pass tokenizer=..., or calibration= token-id batches or Observations with per-domain statistics")
            spec = ",".join(f"{d}:{samples}" for d in domains)
            batches = calibration_batches(spec, tokenizer, batch_size=batch_size, max_length=max_length, seed=seed)
            info = {"spec": spec, "max_length": max_length, "seed": seed}
        else:
            batches, info = list(calibration), {"source": "batches"}
        obs = (observe_cached(model, batches, cache_dir, calibration=info, progress=progress) if cache_dir
               else observe(model, batches, calibration=info, progress=progress))
    sets = [d for d in domains if d in obs.domains]
    if not sets:
        raise ValueError(f"none of the domains {domains} is in the calibration observations (domains {obs.domains}); "
                         "pass domains= that the calibration data holds")
    missing = [d for d in domains if d not in obs.domains]
    if missing:
        warnings.warn(f"calibration_sensitivity: domain(s) {missing} are not in the calibration data; left out", stacklevel=2)
    plans = {d: PruningPlan.from_observations(obs, criterion, ratio=ratio, domains=[d], seed=seed) for d in sets}
    plans[MIX] = PruningPlan.from_observations(obs, criterion, ratio=ratio, domains=sets, seed=seed)
    columns = {UNPRUNED: evaluate(model, eval_batches, progress=False).set_index("domain")["loss"]}
    for name, plan in plans.items():
        with mask_experts(model, plan):
            columns[name] = evaluate(model, eval_batches, progress=False).set_index("domain")["loss"]
    loss = pd.DataFrame(columns)
    order = [d for d in loss.index if d != "all"] + ["all"]
    loss = loss.loc[order]
    loss.index.name, loss.columns.name = "eval_domain", "calibration"
    loss.attrs.update(ratio=ratio, criterion=criterion)
    return loss, kept_overlap(plans)


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


def summarise(results: pd.DataFrame, sensitivity=None, *, domain: str = "all", metric: str = "loss") -> str:
    """Markdown: where REAP wins or loses against each baseline at each ratio and by how much
    (`metric` on `domain`; random = mean over seeds, KL wins counted too), and how the calibration
    set changes each domain's loss (`sensitivity` = the pair `calibration_sensitivity` returns)."""
    lines = ["### Compression: REAP against each baseline", ""]
    data = results[(results["domain"] == domain) & (results["ratio"] > 0)] if len(results) else results
    base = results[(results["domain"] == domain) & (results["ratio"] == 0)] if len(results) else results
    if data is None or data.empty:
        lines.append("No compressed variants were evaluated.")
    else:
        curves = list(dict.fromkeys(data["label"]))
        table = data.groupby(["ratio", "label"])[metric].mean().unstack("label")[curves]
        kl = data.groupby(["ratio", "label"])["kl"].mean().unstack("label") if "kl" in data else None
        spread = data[data["criterion"] == "random"].groupby("ratio")[metric].agg(["min", "max"])
        kept = data[data["method"] == "prune"].groupby("ratio")["experts_kept"].first()
        labels = list(table.columns)
        methods = {label: m for label, m in zip(data["label"], data["method"])}
        if not base.empty:
            lines.append(f"Metric: {metric} on {'all evaluation tokens' if domain == 'all' else domain} (lower is better); "
                         f"the unpruned model has {base[metric].mean():.3f}.")
        if "reap" not in labels:
            lines.append("REAP (criterion `reap`, method prune) is not in these results, so there is nothing to compare it with.")
        else:
            baselines = [label for label in labels if label != "reap"]
            lines += ["", f"Each baseline's {metric} minus REAP's: positive = REAP better. Methods: "
                      + ", ".join(f"`{label}` ({methods[label]})" for label in labels) + ".", ""]
            shown = table[["reap", *baselines]].copy()
            cells = shown.copy().astype(object)
            for label in shown.columns:
                for r in shown.index:
                    v = shown.loc[r, label]
                    if pd.isna(v):
                        cells.loc[r, label] = "-"
                    elif label == "reap":
                        cells.loc[r, label] = f"**{_num(v)}**"
                    else:
                        cells.loc[r, label] = _num(v - shown.loc[r, "reap"], sign=True)
            cells.index = [f"{_pct(r)} ({int(kept[r]) if r in kept.index else '?'} kept)" for r in cells.index]
            cells.index.name = "ratio"
            lines += [_md_table(cells), ""]
            for label in baselines:
                diff = (table[label] - table["reap"]).dropna()
                if diff.empty:
                    continue
                wins = diff[diff > 0]
                name = f"`{label}`" + (" (mean of seeds)" if label == "random" else "")
                text = f"- vs {name}: REAP is better at {len(wins)} of {len(diff)} ratios"
                if len(wins) < len(diff):
                    lost = ", ".join(_pct(r) for r in diff.index if diff[r] <= 0)
                    text += f" (not at {lost})"
                big = diff.abs().idxmax()
                text += (f"; the largest gap is at {_pct(big)}: {_num(diff[big], sign=True)} "
                         f"({diff[big] / table.loc[big, 'reap']:+.2%} of REAP's {metric})")
                if kl is not None and label in kl:
                    kdiff = (kl[label] - kl["reap"]).dropna()
                    text += f"; KL to the unpruned model lower for REAP at {int((kdiff > 0).sum())} of {len(kdiff)}"
                if label == "random" and not spread.empty:
                    beat = [r for r in spread.index if r in table.index and table.loc[r, "reap"] < spread.loc[r, "min"]]
                    text += f"; REAP beats every random seed at {len(beat)} of {len(spread)} ratios"
                lines.append(text + ".")
            for r in table.index:
                row = table.loc[r].dropna()
                if len(row) > 1:
                    order = row.sort_values(kind="stable")
                    rank = list(order.index).index("reap") + 1 if "reap" in order.index else None
                    lines.append(f"- At {_pct(r)} the best method is `{order.index[0]}` ({_num(order.iloc[0])})"
                                 + (f"; REAP ranks {rank} of {len(order)}." if rank else "."))
            if 0.5 in table.index:
                row = table.loc[0.5].drop("reap").dropna()
                if len(row):
                    losing = [label for label in row.index if row[label] <= table.loc[0.5, "reap"]]
                    lines.append("- At 50% compression (the paper's headline ratio) REAP "
                                 + ("beats every baseline." if not losing else
                                    "does not beat " + ", ".join(f"`{label}`" for label in losing) + "."))
            if "kept_routing" in data.columns and 0.5 in table.index:
                routing = data[(data["ratio"] == 0.5)].groupby("label")["kept_routing"].mean().dropna()
                if "reap" in routing.index and len(routing) > 1:
                    lines.append("- Share of the calibration tokens' expert assignments that the kept experts received, at 50%: "
                                 + ", ".join(f"`{label}` {value:.0%}" for label, value in routing.items()) + ".")
            every = results[(results["ratio"] > 0) & (results["domain"] != domain)]
            if not every.empty and "reap" in set(every["label"]):
                r = min(every["ratio"].unique(), key=lambda v: (abs(v - 0.5), -v))
                per = every[every["ratio"] == r].groupby(["domain", "label"])[metric].mean().unstack("label")
                best = per.idxmin(axis=1)
                won = [d for d in per.index if best[d] == "reap"]
                lost = [f"{d} (best `{best[d]}`, {_num(per.loc[d, best[d]] - per.loc[d, 'reap'], sign=True)})"
                        for d in per.index if best[d] != "reap"]
                lines.append(f"- Per evaluation domain at {_pct(r)}: REAP has the lowest {metric} of all methods on "
                             + (", ".join(won) if won else "no domain")
                             + ("; not on " + ", ".join(lost) if lost else "") + ".")
    if sensitivity is not None:
        lines += ["", "### Calibration: which experts survive", ""]
        loss, overlap = sensitivity
        ratio, criterion = loss.attrs.get("ratio"), loss.attrs.get("criterion", "reap")
        singles = [c for c in loss.columns if c not in (UNPRUNED, MIX)]
        lines.append(f"Pruning {_pct(ratio) if ratio is not None else ''} by `{criterion}` with calibration on one domain "
                     f"at a time or on the mix; {metric} on each evaluation domain:".replace("  ", " "))
        lines += ["", _md_table(loss.round(3)), ""]
        own_best = []
        for d in loss.index:
            if d == "all":
                continue
            row = loss.loc[d]
            text = f"- **{d}**: unpruned {row[UNPRUNED]:.3f}"
            if d in singles:
                text += f"; calibrated on {d} {row[d]:.3f} ({row[d] - row[UNPRUNED]:+.3f})"
                others = [c for c in singles if c != d]
                if others:
                    worst = max(others, key=lambda c: row[c])
                    text += f"; without {d}, worst is {worst} calibration {row[worst]:.3f} ({row[worst] - row[UNPRUNED]:+.3f})"
                own_best.append(row[singles].idxmin() == d)
            if MIX in row:
                text += f"; the mix {row[MIX]:.3f} ({row[MIX] - row[UNPRUNED]:+.3f})"
            lines.append(text + ".")
        if own_best:
            lines.append(f"- A domain's own calibration gives it the lowest loss among single-domain sets for "
                         f"{sum(own_best)} of {len(own_best)} domains.")
        pairs = [(a, b) for i, a in enumerate(overlap.index) for b in overlap.columns[i + 1:] if a != MIX and b != MIX]
        if pairs:
            values = {p: overlap.loc[p] for p in pairs}
            low = min(values, key=values.get)
            lines.append(f"- Kept experts shared by two single-domain calibration sets (mean Jaccard over layers): "
                         f"{np.mean(list(values.values())):.2f} on average, least for {low[0]} / {low[1]} ({values[low]:.2f}).")
    return "\n".join(lines)
