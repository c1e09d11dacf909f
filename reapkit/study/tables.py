"""Tables behind the figures and chance levels (pure numpy / scipy / pandas).

    >>> agreement_table(scores, criteria=["reap", "frequency"], ratio=0.5).overlap.round(2).tolist()   # per layer
    [0.45, 0.33, 0.45, 0.6]
    >>> round(expected_jaccard(16, 8), 4), [round(rho, 2) for rho in spearman_band(16)]   # what chance gives
    (0.3434, [-0.49, 0.5])

This module imports no matplotlib (and neither torch nor transformers): the figures of
`reapkit.plot` draw these tables, and a study or a notebook can print them.

Scores frames (`reapkit.select.criteria.scores_frame`): layer, expert, domain ("all" = pooled), criterion, value.
Mask frames (`mask_frame`): layer, expert, kept [, any extra columns such as criterion, ratio].
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from reapkit.errors import InvalidInput, Mismatch
from reapkit.measure.schema import ALL, LABEL, RATIO, hi, interval, interval_columns, lo, select, wide_results
from reapkit.select.criteria import DEFAULT_CRITERIA
from reapkit.select.plan import pruned_count

__all__ = [
    "expected_jaccard",
    "jaccard_distribution",
    "spearman_band",
    "jaccard_band",
    "routing",
    "uniform_plans",
    "pruned_experts",
    "agreement_table",
    "domain_share_table",
    "specialisation_table",
    "specialisation_by_layer",
    "mask_frame",
    "plan_overlap",
    "curve_table",
    "uniform_cutoffs",
    "is_flat",
    "coselect_order",
    "value_table",
]


def value_table(frame: pd.DataFrame) -> pd.DataFrame:
    """layer x expert table of a scores frame's `value` (mean over duplicates), layers ascending."""
    return frame.pivot_table(index="layer", columns="expert", values="value", aggfunc="mean").sort_index()


def _empty(data) -> bool:
    return data is None or len(data) == 0


# --------------------------------------------------------------------------------------------
# Chance levels
# --------------------------------------------------------------------------------------------


def jaccard_distribution(experts: int, size: int, other: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact distribution of the Jaccard index of two independent uniformly random subsets of
    `experts` items, of `size` and `other` (default `size`) items: ``(values, probabilities)``.

        >>> values, p = jaccard_distribution(16, 8)
        >>> values[4], p[4].round(3)                 # two random halves of 16 share 4 experts: Jaccard 1/3
        (np.float64(0.3333333333333333), np.float64(0.381))

    The intersection is hypergeometric: P(|A & B| = x) = C(b, x) C(E - b, a - x) / C(E, a).
    """
    from scipy.stats import hypergeom

    other = size if other is None else other
    if not (0 <= size <= experts and 0 <= other <= experts):
        raise InvalidInput(
            f"subset sizes must be between 0 and the number of experts ({experts}), got {size} and {other}"
        )
    x = np.arange(max(0, size + other - experts), min(size, other) + 1)
    p = hypergeom(experts, other, size).pmf(x)
    union = size + other - x
    values = np.divide(x, union, out=np.ones(x.shape, float), where=union > 0)  # two empty sets: 1
    return values.astype(float), p


def expected_jaccard(experts: int, size: int, other: int | None = None) -> float:
    """Expected Jaccard index of two random subsets (sizes `size`, `other`) of `experts` items.

        >>> round(expected_jaccard(16, 8), 4)        # two random halves of 16 experts
        0.3434

    Overlap figures draw it as the chance line: an overlap at this level says the two sets agree
    no more than random choices would.
    """
    values, p = jaccard_distribution(experts, size, other)
    return float(np.sum(values * p))


@functools.lru_cache(maxsize=256)
def jaccard_band(experts: int, size: int, layers: int = 1, *, level: float = 0.95, draws: int = 20000, seed: int = 0):
    """Central `level` interval of the mean over `layers` layers of the Jaccard index of two random
    `size`-of-`experts` subsets (each layer an independent draw from `jaccard_distribution`; seeded).

        >>> jaccard_band(16, 8, 4)              # (lo, hi) around expected_jaccard(16, 8) = 0.34
        (0.23443223443223443, 0.4606060606060606)
    """
    values, p = jaccard_distribution(experts, size)
    rng = np.random.default_rng(seed)
    means = rng.choice(values, p=p, size=(draws, max(int(layers), 1))).mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


@functools.lru_cache(maxsize=64)
def spearman_band(
    n: int, layers: int = 1, *, level: float = 0.95, permutations: int = 20000, seed: int = 0
) -> tuple[float, float]:
    """Central `level` interval of Spearman's rho between two independent random rankings of `n` items,
    or of its mean over `layers` independent layers (a permutation null, `permutations` draws from
    `seed`; deterministic): ``(lo, hi)``.

        >>> [round(rho, 2) for rho in spearman_band(16)]   # |rho| < 0.5 is what unrelated scores of 16 experts give
        [-0.49, 0.5]

    n < 3 gives (-1, 1): every value is possible by chance.
    """
    if n < 3:
        return -1.0, 1.0
    rng = np.random.default_rng(seed)
    ranks = np.argsort(rng.random((permutations, n)), axis=1).astype(float)
    centred = ranks - (n - 1) / 2
    base = np.arange(n, dtype=float) - (n - 1) / 2
    rho = centred @ base / float(base @ base)
    if layers > 1:
        rho = rng.choice(rho, size=(permutations, int(layers))).mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(rho, tail)), float(np.quantile(rho, 1 - tail))


# --------------------------------------------------------------------------------------------
# Criteria against each other
# --------------------------------------------------------------------------------------------


def routing(obs) -> dict:
    """The router's group-limited routing as `uniform_plans` and `agreement_table` take it: n_group,
    topk_group and top_k of `obs` (Observations). ``uniform_plans(scores, ratio=0.5, **routing(obs))``."""
    return {"n_group": obs.meta.get("n_group", 1), "topk_group": obs.meta.get("topk_group"), "top_k": obs.top_k}


def uniform_plans(
    frame: pd.DataFrame,
    criteria=DEFAULT_CRITERIA,
    *,
    ratio: float,
    domain: str = ALL,
    n_group: int = 1,
    topk_group: int | None = None,
    top_k: int = 1,
) -> dict:
    """{criterion: PruningPlan}: the uniform plan each criterion of a scores frame makes at `ratio`,
    built by `PruningPlan.from_scores` itself (its ties, its routing groups), so every overlap and
    kept/pruned mark drawn from a scores frame is that of a plan.

        >>> plans = uniform_plans(scores, ["reap", "frequency"], ratio=0.5, n_group=obs.meta.get("n_group", 1))
        >>> {criterion: plan.kept[3] for criterion, plan in plans.items()}
        {'reap': [5, 7, 10, 11, 12, 13, 14, 15], 'frequency': [0, 3, 5, 7, 11, 12, 14, 15]}

    `n_group`, `topk_group`, `top_k`: the router's group-limited routing (as `obs.meta` and
    `obs.top_k` give them). Criteria missing from `frame` are left out.
    """
    from reapkit.select.plan import PruningPlan

    data = select(frame, domain=domain) if not _empty(frame) else frame
    plans = {}
    for criterion in [criteria] if isinstance(criteria, str) else criteria:
        part = data[data["criterion"] == criterion] if not _empty(data) else data
        if _empty(part):
            continue
        table = value_table(part)
        sizes = table.notna().sum(axis=1).astype(int).tolist()
        values = np.nan_to_num(table.to_numpy(float), nan=-np.inf)
        plans[criterion] = PruningPlan.from_scores(
            values,
            [int(layer) for layer in table.index],
            sizes,
            top_k=top_k,
            ratio=ratio,
            n_group=n_group,
            topk_group=topk_group,
            criterion=criterion,
        )
    return plans


def pruned_experts(scores, ratio: float, **routing) -> np.ndarray:
    """Boolean [E]: the experts the uniform plan at `ratio` prunes from one layer's `scores` (by
    `PruningPlan.from_scores`; `routing`: n_group, topk_group, top_k as in `uniform_plans`).

        >>> pruned_experts([0.3, 0.1, 0.2, 0.4], 0.5)
        array([False,  True,  True, False])
    """
    from reapkit.select.plan import PruningPlan

    s = np.asarray(scores, dtype=float).ravel()
    mask = np.zeros(s.size, bool)
    if s.size == 0 or ratio is None:
        return mask
    routing = {"top_k": 1, **routing}
    plan = PruningPlan.from_scores(np.nan_to_num(s, nan=-np.inf)[None], [0], [s.size], ratio=ratio, **routing)
    mask[plan.removed(0)] = True
    return mask


def agreement_table(data, *, criteria=None, ratio: float = 0.5, domain: str = ALL, **routing) -> pd.DataFrame:
    """Per layer and pair of criteria: Spearman rank correlation of the scores, the overlap (Jaccard
    index) of the sets of experts their plans prune, and that overlap's chance level.

        >>> agreement_table(scores, criteria=["reap", "frequency"], ratio=0.5)[["layer", "spearman", "overlap"]].round(2).head(2)
           layer  spearman  overlap
        0      0      0.15     0.45
        1      1      0.30     0.33
        >>> agreement_table({c: plans[c, 0.5] for c in ("reap", "frequency")}).overlap.round(2).tolist()   # {criterion: plan}
        [0.45, 0.33, 0.45, 0.6]

    `data`: {criterion: PruningPlan} (the plans' own pruned sets and scores), or a scores frame whose
    plans `uniform_plans` makes at `ratio` (`routing`: n_group, topk_group, top_k). Columns: layer,
    criterion_a, criterion_b, experts, spearman, overlap, overlap_chance, spearman_chance_lo,
    spearman_chance_hi (where 95% of rho between unrelated rankings falls). Criteria missing from
    `data` are skipped; `criteria` None: every plan given, or :data:`DEFAULT_CRITERIA` of a frame.
    """
    from scipy.stats import spearmanr

    chance_lo, chance_hi = interval("spearman", "chance")
    columns = ["layer", "criterion_a", "criterion_b", "experts", "spearman", "overlap", "overlap_chance"]
    columns += [chance_lo, chance_hi]
    if isinstance(data, dict):
        plans = {c: p for c, p in data.items() if criteria is None or c in criteria}
    else:
        criteria = DEFAULT_CRITERIA if criteria is None else criteria
        plans = {} if _empty(data) else uniform_plans(data, criteria, ratio=ratio, domain=domain, **routing)
    present = list(plans)
    layers = sorted(set.intersection(*(set(p.layers) for p in plans.values()))) if plans else []
    rows = []
    for layer in layers:
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                x, y = (np.asarray(plans[c].scores[layer], float) for c in (a, b))
                ok = np.isfinite(x) & np.isfinite(y)
                rho = float("nan")
                if ok.sum() > 1 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                    rho = float(spearmanr(x[ok], y[ok]).statistic)
                pa, pb = set(plans[a].removed(layer)), set(plans[b].removed(layer))
                overlap = len(pa & pb) / len(pa | pb) if pa | pb else 1.0
                experts = plans[a].num_experts[layer]
                chance = expected_jaccard(experts, len(pa), len(pb))
                rows.append((layer, a, b, experts, rho, overlap, chance, *spearman_band(int(ok.sum()))))
    return pd.DataFrame(rows, columns=columns)


def uniform_cutoffs(frame: pd.DataFrame, ratio: float) -> pd.DataFrame:
    """Per layer of a scores frame (one criterion, one domain): the score of the weakest expert a
    uniform plan at `ratio` keeps (`threshold`), experts and kept count.

    Columns: layer, experts, kept, threshold.
    """
    rows = []
    for layer, row in value_table(frame).iterrows():
        values = np.sort(row.dropna().to_numpy(float))[::-1]
        keep = values.size - pruned_count(values.size, ratio)
        rows.append((layer, values.size, keep, float(values[keep - 1]) if keep else float("nan")))
    return pd.DataFrame(rows, columns=["layer", "experts", "kept", "threshold"])


# --------------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------------


def domain_share_table(frame: pd.DataFrame, *, criterion: str = "frequency") -> pd.DataFrame:
    """Per layer, expert and domain: the expert's `share` of the domain's total score in that layer
    (sums to 1 over experts) and its `enrichment` = share x experts (1 = what a uniform router gives).

        >>> domain_share_table(scores, criterion="frequency").head(2).round(2)
           layer  expert domain  share  enrichment
        0      0       0   code   0.10        1.57
        1      0       1   code   0.09        1.45

    Columns: layer, expert, domain, share, enrichment. Uses the per-domain rows (not "all").
    """
    columns = ["layer", "expert", "domain", "share", "enrichment"]
    if _empty(frame):
        return pd.DataFrame(columns=columns)
    data = frame[(frame["criterion"] == criterion) & (frame["domain"] != ALL)]
    if data.empty:
        return pd.DataFrame(columns=columns)
    data = data.groupby(["layer", "domain", "expert"], as_index=False)["value"].mean()
    total = data.groupby(["layer", "domain"])["value"].transform("sum")
    experts = data.groupby(["layer", "domain"])["expert"].transform("count")
    data["share"] = np.where(total > 0, data["value"] / total.where(total > 0, 1), 0.0)
    data["enrichment"] = data["share"] * experts
    return data[columns].sort_values(["layer", "domain", "expert"], ignore_index=True)


def specialisation_table(frame: pd.DataFrame, *, criterion: str = "frequency") -> pd.DataFrame:
    """Per layer and expert: `dominant` domain and `specialisation` = 1 - H(p(domain | expert)) / log(#domains).

        >>> specialisation_table(scores).head(2).round(2)
           layer  expert dominant  specialisation  usage
        0      0       0    tools            0.22   0.08
        1      0       1    prose            0.24   0.06

    p(domain | expert) is proportional to the expert's share of each domain (domain sizes cancel);
    0 = serves all domains alike, 1 = serves one domain only. `usage` = the expert's mean share.
    Columns: layer, expert, dominant, specialisation, usage.
    """
    columns = ["layer", "expert", "dominant", "specialisation", "usage"]
    shares = domain_share_table(frame, criterion=criterion)
    if shares.empty:
        return pd.DataFrame(columns=columns)
    pivot = shares.pivot_table(index=["layer", "expert"], columns="domain", values="share").fillna(0.0)
    p = pivot.to_numpy(float)
    total = p.sum(axis=1, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(q > 0, q * np.log(q), 0.0), axis=1)
    d = p.shape[1]
    spec = 1 - entropy / np.log(d) if d > 1 else np.zeros(len(q))
    spec[total[:, 0] <= 0] = 0.0
    out = pd.DataFrame(
        {
            "layer": pivot.index.get_level_values(0),
            "expert": pivot.index.get_level_values(1),
            "dominant": np.asarray(pivot.columns)[np.argmax(p, axis=1)],
            "specialisation": spec,
            "usage": p.mean(axis=1),
        }
    )
    return out[columns].reset_index(drop=True)


def specialisation_by_layer(table: pd.DataFrame, *, resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per layer of a `specialisation_table`: the usage-weighted mean specialisation and its 95% percentile
    bootstrap interval over the layer's experts (`interval_columns("specialisation")`).

        >>> specialisation_by_layer(specialisation_table(scores)).specialisation.round(2).tolist()   # layers 0-3
        [0.37, 0.54, 0.58, 0.56]
    """
    from reapkit.measure.stats import bootstrap

    columns = ["layer", *interval_columns("specialisation"), "experts"]
    rows = []
    for layer, part in table.groupby("layer", sort=True):
        weights = part["usage"].clip(lower=0).to_numpy(float) + 1e-12
        values = bootstrap(part["specialisation"].to_numpy(float) * weights, weights, resamples=resamples, seed=seed)
        rows.append((layer, *values, len(part)))
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


def mask_frame(kept, num_experts=None, **extra) -> pd.DataFrame:
    """Tidy kept/pruned mask (layer, expert, kept) of a plan; `extra` columns are added.

    >>> mask_frame(plan, criterion="reap", ratio=0.5).head(2)
       layer  expert   kept criterion  ratio
    0      0       0  False      reap    0.5
    1      0       1   True      reap    0.5
    >>> mask_frame({0: [0, 2]}, {0: 4}).kept.tolist()   # {layer: kept experts}, {layer: experts}
    [True, False, True, False]
    """
    if hasattr(kept, "kept") and hasattr(kept, "num_experts"):
        kept, num_experts = kept.kept, kept.num_experts
    if num_experts is None:
        raise InvalidInput("mask_frame needs num_experts ({layer: experts}) when given a dict of kept experts")
    rows = [(int(layer), e, e in set(kept[layer])) for layer in sorted(kept) for e in range(int(num_experts[layer]))]
    frame = pd.DataFrame(rows, columns=["layer", "expert", "kept"])
    for key, value in extra.items():
        frame[key] = value
    return frame


def plan_overlap(a, b) -> pd.DataFrame:
    """Per layer both plans prune: how far plan `a`'s kept experts agree with plan `b`'s.

    >>> from reapkit.select.plan import PruningPlan
    >>> plan_overlap(plan, PruningPlan.from_observations(obs, "frequency", ratio=0.5)).round(2).head(2)
       layer  experts  kept_a  kept_b  shared  overlap  overlap_chance
    0      0       16       8       8       5     0.45            0.34
    1      1       16       8       8       4     0.33            0.34

    Columns: layer, experts, kept_a, kept_b, shared (experts both keep), overlap (Jaccard index of
    the kept sets) and overlap_chance (its expectation for two random choices of those sizes).
    """
    rows = []
    for layer in sorted(set(a.kept) & set(b.kept)):
        if a.num_experts[layer] != b.num_experts[layer]:
            raise Mismatch(
                f"the plans disagree on the experts of layer {layer} ({a.num_experts[layer]} and "
                f"{b.num_experts[layer]}); compare plans made for the same model"
            )
        experts, kept_a, kept_b = a.num_experts[layer], set(a.kept[layer]), set(b.kept[layer])
        shared = len(kept_a & kept_b)
        union = len(kept_a | kept_b)
        rows.append(
            {
                "layer": layer,
                "experts": experts,
                "kept_a": len(kept_a),
                "kept_b": len(kept_b),
                "shared": shared,
                "overlap": shared / union if union else 1.0,
                "overlap_chance": expected_jaccard(experts, len(kept_a), len(kept_b)),
            }
        )
    return pd.DataFrame(rows, columns=["layer", "experts", "kept_a", "kept_b", "shared", "overlap", "overlap_chance"])


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def curve_table(results: pd.DataFrame, metric: str, *, hue: str = LABEL) -> pd.DataFrame:
    """One row per curve (`hue` value) and ratio: the `mean` of `metric` over repeats (seeds) and its
    interval `lo`..`hi`; ratio-0 rows (the unpruned model) start every curve.

        >>> curve_table(results[(results.label == "random") & (results.domain == "all")], "loss").round(2).tail(1)
            label  ratio  mean    lo    hi  runs band
        2  random    0.5  4.69   4.0  5.22     2   ci

    The interval is the mean of the <metric>_lo / <metric>_hi columns when the frame has them
    (bootstrap intervals) and otherwise the min..max over repeats (e.g. random seeds; lo = hi = mean
    for a single run). `band` says which: "ci", "range" or "none". `runs` counts the repeats.
    Columns: <hue>, ratio, mean, lo, hi, runs, band. Long-form results (lm-eval scores) are read
    through `wide_results`.
    """
    columns = [hue, RATIO, "mean", "lo", "hi", "runs", "band"]
    results = results if _empty(results) else wide_results(results)
    if _empty(results) or metric not in results.columns:
        return pd.DataFrame(columns=columns)
    data = results.dropna(subset=[metric])
    has_ci = lo(metric) in data.columns and hi(metric) in data.columns
    baseline = data[data[RATIO] == 0]
    rest = data[data[RATIO] != 0]
    names = list(dict.fromkeys(rest[hue])) if hue in rest.columns and not rest.empty else [None]
    frames = []
    for name in names:
        part = rest if name is None else rest[rest[hue] == name]
        part = pd.concat([baseline, part]) if not baseline.empty else part
        grouped = part.groupby(RATIO)
        stats = grouped[metric].agg(mean="mean", lo="min", hi="max", runs="count")
        stats["band"] = np.where(stats["runs"] > 1, "range", "none")
        if has_ci:
            ci = grouped[[lo(metric), hi(metric)]].mean()
            ok = ci.notna().all(axis=1)
            stats.loc[ok, "lo"] = ci.loc[ok, lo(metric)]
            stats.loc[ok, "hi"] = ci.loc[ok, hi(metric)]
            stats.loc[ok, "band"] = "ci"
        stats = stats.reset_index().sort_values(RATIO)
        stats.insert(0, hue, name)
        frames.append(stats)
    return pd.concat(frames, ignore_index=True)[columns]


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def is_flat(linkage, *, tolerance: float = 0.1) -> bool:
    """True when a dendrogram has no cluster structure: all its merge heights lie within `tolerance`
    (relative) of the highest one, so where it is cut is arbitrary.

        >>> from reapkit.select.geometry import cluster, distance_matrix
        >>> is_flat(cluster(distance_matrix(model, 3, "weights")).linkage)   # weight space: every distance about 0.5
        True
    """
    heights = np.asarray(linkage, dtype=float)
    if heights.size == 0:
        return True
    heights = heights[:, 2]
    top = float(heights.max())
    return top <= 0 or (top - float(heights.min())) <= tolerance * top


def coselect_order(coselect) -> np.ndarray:
    """Dendrogram order of experts by co-selection profile (average linkage on the angular distances
    between the rows of the [E, E] co-selection matrix, diagonal left out)."""
    from reapkit.select.geometry import angular_distances, cluster

    m = np.asarray(coselect, dtype=float).copy()
    if m.shape[0] < 2:
        return np.arange(m.shape[0])
    np.fill_diagonal(m, 0.0)
    return np.asarray(cluster(angular_distances(m)).order)
