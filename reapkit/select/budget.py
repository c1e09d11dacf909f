"""Non-uniform budgets by water-filling: how many experts each layer keeps, from its saliency curve.

    >>> water_fill([[4.0, 3.0, 2.0, 1.0], [6.0, 2.0, 1.0, 1.0]], total=5, minimum=1).tolist()
    [3, 2]
    >>> counts = water_counts(obs, "reap", total=global_plan.total_kept)     # {decoder layer: experts kept}
    >>> sum(counts.values()) == global_plan.total_kept
    True
    >>> water_plan(obs, "reap", total=32).provenance["budget_search"]        # a PruningPlan of those counts
    'water'

Each layer's experts are ranked by the criterion and that ranking is kept: a layer keeping n experts
keeps its n best. What is chosen is the count per layer. Every layer first keeps `minimum` experts
(top-k, plus a margin); then the next expert is kept, one at a time, in the layer where it is worth
most, until the budget is spent.

What an expert is worth: the layer's score curve is turned into its *retained share*
``C_l(n)`` = (sum of the n best scores) / (sum of all scores), and keeping the (n+1)-th expert is
worth ``log C_l(n+1) - log C_l(n)``. The share makes layers comparable (raw saliency grows with
depth, as the residual stream does); the logarithm makes the sum over layers the log of the
*product* of retained shares, since an error made in one layer is carried through every later one,
and it favours the layer that has kept the smallest share so far. Because each curve is sorted, its
gains never increase, so this greedy choice maximises the product exactly for an expert budget;
with a parameter budget (`costs`: parameters per expert of each layer) it ranks by gain per
parameter, the usual greedy for a knapsack (good, not always optimal). Ranking raw shares instead
of their logarithm would reproduce today's global budget on layers of equal size
(`PruningPlan.from_global_budget` divides by the layer mean, i.e. the share times the expert count).
Ties go to the earlier layer. Group-limited routing (`n_group` > 1) is refused.
"""

from __future__ import annotations

import numpy as np

from reapkit.errors import InvalidInput

__all__ = [
    "SEARCHES",
    "check_search",
    "check_budget",
    "water_fill",
    "water_counts",
    "water_plan",
    "plan_from_counts",
    "uniform_counts",
    "refuse_groups",
]

#: How a non-uniform budget is spread over the layers: `global` ranks normalised scores
#: (`PruningPlan.from_global_budget`), `water` is `water_fill`, `evolution` is
#: `reapkit.measure.budget_search.evolve_counts` (it needs the model).
SEARCHES = ("global", "water", "evolution")


def check_search(name: str) -> str:
    """`name` if it is one of `SEARCHES`; otherwise one line naming them."""
    if name not in SEARCHES:
        raise InvalidInput(f"unknown budget search {name!r}; choose one of {', '.join(SEARCHES)}")
    return name


def check_budget(total, num_experts, minimum: int, *, costs=None, what: str = "experts") -> None:
    """Refuse a budget no plan can meet: below `minimum` kept experts in every layer, or above all of them.

    `total` counts experts, or parameters when `costs` (parameters per expert of each layer) is given.
    """
    sizes = np.asarray(num_experts, dtype=np.int64)
    weights = np.ones(len(sizes)) if costs is None else np.asarray(costs, dtype=np.float64)
    low, high = float(minimum * weights.sum()), float((sizes * weights).sum())
    if np.any(sizes < minimum):
        raise InvalidInput(
            f"a layer has {int(sizes.min())} experts, fewer than the {minimum} each layer must keep; lower the margin"
        )
    if not low <= float(total) <= high:
        unit = "experts" if costs is None else "expert parameters"
        raise InvalidInput(
            f"a budget of {total:,} {unit} is outside [{low:,.0f}, {high:,.0f}]: each of the {len(sizes)} MoE layers "
            f"keeps at least {minimum} experts (top-k + margin) and at most all of them; choose a budget in that range"
        )


def _gains(curve: np.ndarray) -> np.ndarray:
    """[len(curve)]: gain j is log C(j+1) - log C(j) of the sorted curve's retained share C (C(0) = 0)."""
    total = curve.sum()
    share = np.cumsum(curve) / total if total > 0 else np.zeros(len(curve))
    before = np.concatenate([[0.0], share[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        gains = np.log(share) - np.log(before)
    return np.where(share > before, gains, 0.0)  # a zero score adds nothing; the first positive one is worth inf


def water_fill(curves, total, *, minimum: int, costs=None) -> np.ndarray:
    """[layers] int: experts each layer keeps, greedily by the log gain in retained share (module docstring).

    `curves`: one array of non-negative scores per layer (any order; each is sorted, best first).
    `total`: experts kept in all (exact), or with `costs` (parameters per expert of each layer) the
    most expert parameters kept; every layer keeps at least `minimum` and at most all its experts.
    """
    curves = [np.sort(np.asarray(c, dtype=np.float64))[::-1] for c in curves]
    if any((c < 0).any() or not np.isfinite(c).all() for c in curves):
        raise InvalidInput(
            "water-filling needs finite, non-negative scores (shares of a layer's saliency); "
            "use a criterion such as reap, frequency or ean_mean"
        )
    check_budget(total, [len(c) for c in curves], minimum, costs=costs)
    weights = np.ones(len(curves)) if costs is None else np.asarray(costs, dtype=np.float64)
    counts = np.full(len(curves), minimum, dtype=np.int64)
    left = float(total) - float(minimum * weights.sum())
    gains = [_gains(c) for c in curves]
    candidates = sorted(  # (-(gain per unit of cost), layer, position): best first, ties to the earlier layer
        (-(gains[pos][j] / weights[pos]), pos, j) for pos, c in enumerate(curves) for j in range(minimum, len(c))
    )
    for _, pos, j in candidates:  # within a layer, gains never increase, so its experts come in order
        if j != counts[pos] or weights[pos] > left + 1e-9:
            continue
        counts[pos] += 1
        left -= weights[pos]
    return counts


def water_counts(obs, criterion: str = "reap", *, total, margin: int = 0, costs=None, domains=None, seed: int = 0):
    """`{decoder layer: experts kept}` by `water_fill` of the `criterion` scores of `obs`."""
    from reapkit.select.criteria import score

    refuse_groups(obs)
    values = score(obs, criterion, domains=domains, seed=seed)
    curves = [values[pos][:size] for pos, size in enumerate(obs.num_experts)]
    counts = water_fill(curves, total, minimum=obs.top_k + margin, costs=costs)
    return dict(zip(obs.layers, (int(n) for n in counts)))


def plan_from_counts(obs, criterion: str, counts: dict, *, search: str, domains=None, seed: int = 0, **provenance):
    """The `PruningPlan` keeping, in each layer, its `counts[layer]` best experts by `criterion`."""
    from reapkit.select.criteria import score
    from reapkit.select.plan import PruningPlan

    values = score(obs, criterion, domains=domains, seed=seed)
    extra = obs.provenance(domains=domains, seed=seed, budget_search=search, **provenance)
    return PruningPlan.from_scores(
        values, obs.layers, obs.num_experts, top_k=obs.top_k, counts=counts, criterion=criterion, provenance=extra
    )


def water_plan(obs, criterion: str = "reap", *, total, margin: int = 0, costs=None, domains=None, seed: int = 0):
    """The `PruningPlan` of `water_counts`: each layer keeps its best experts, as many as water-filling gives it."""
    counts = water_counts(obs, criterion, total=total, margin=margin, costs=costs, domains=domains, seed=seed)
    return plan_from_counts(
        obs, criterion, counts, search="water", domains=domains, seed=seed, global_budget=total, margin=margin
    )


def uniform_counts(num_experts, total: int, minimum: int) -> np.ndarray:
    """[layers] int: `total` kept experts spread as evenly as the layer sizes allow (earlier layers first).

    >>> uniform_counts([16, 16, 16, 16], 34, 2).tolist()
    [9, 9, 8, 8]
    """
    sizes = np.asarray(num_experts, dtype=np.int64)
    check_budget(total, sizes, minimum)
    counts = np.minimum(sizes, max(minimum, total // len(sizes)))
    while counts.sum() < total:  # one more each, in layer order, where there is room
        for pos in np.flatnonzero(counts < sizes)[: total - counts.sum()]:
            counts[pos] += 1
    return counts


def refuse_groups(obs) -> None:
    """Refuse observations of a group-limited router (`n_group` > 1): its groups must stay equal in size."""
    if obs.meta.get("n_group", 1) > 1:
        raise InvalidInput(
            "a non-uniform budget cannot keep routing groups equal in size; use a uniform plan (ratio= or keep=) "
            "for group-limited routers"
        )
