"""Evolutionary search of how many experts each layer keeps, scored on the model (EvoESAP-style).

    >>> search = evolve_counts(model, obs, batches[:2], total=32, generations=2, population=4, progress=False)
    >>> sum(search.counts.values()), search.fitness <= search.start["uniform"]   # exact budget, never worse
    (32, True)
    >>> search.history.columns.tolist()
    ['generation', 'candidate', 'origin', 'counts', 'fitness']
    >>> search.plan(obs).provenance["budget_search"]                             # each layer keeps its best experts
    'evolution'

The search follows EvoESAP (Liu et al., arXiv 2603.06003), as its authors' code does it
(ZongfangLiu/EvoESAP @a2766204676cd95b88fad0ed7927addfc7d30ef9, ``src/reap/search_utils.py``,
``evolutionary_search`` and ``mutate_plan``): a candidate is a vector of per-layer counts with a
fixed total; each layer keeps its best experts by the criterion; the search is mutation only and
elitist: every generation the `survivors` fittest candidates (default 4, as there; at most
population - 1 here, so that every generation tries a new one) are kept and the
rest of the population are children of a random survivor, each made by min(U{1..moves},
U{1..moves}) moves (default moves 1), a move shifting 1 to `max_delta` (default 2) experts from one
layer to another within each layer's bounds (at most 32 tries); scores are cached per count vector.
Where this differs from that code: the first population is uniform and water-filling
(`reapkit.select.budget.water_fill`), filled with their mutations (theirs: eleven fixed layer
patterns and random ones); plans are applied by masking router logits (`reapkit.compress.prune.mask_experts`);
a parameter budget is supported (a move must keep the expert parameters within it); and the
fitness is teacher-forced against the unpruned model's cached log-probs on the search tokens
(`reapkit.measure.evaluate.reference_outputs`): ``kl`` (mean KL(unpruned || pruned), lower is
better; their ``kl-baseline``), ``agreement`` (top-1 agreement, higher is better) or
``acceptance`` (mean sum_v min(p, q), their ``esp-dataset`` expected speculative acceptance).
Seeded (``numpy.random.default_rng(seed)``), so the same inputs give the same search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from reapkit.compress.prune import mask_experts
from reapkit.errors import InvalidInput
from reapkit.measure.evaluate import reference_outputs, sequence_metrics
from reapkit.model.hooks import eval_mode
from reapkit.model.layer import moe_layers
from reapkit.select.budget import check_budget, plan_from_counts, refuse_groups, uniform_counts, water_fill
from reapkit.select.plan import PruningPlan

__all__ = ["FITNESS", "BudgetSearch", "evolve_counts", "expert_costs", "candidate_fitness"]

#: Fitness names: True where higher is better.
FITNESS = {"kl": False, "agreement": True, "acceptance": True}


def expert_costs(model) -> dict[int, int]:
    """`{decoder layer: parameters of one expert}` (its fused tensors and router row), for parameter budgets.

    >>> expert_costs(model)[0]
    49280
    """
    return {
        layer.index: sum(t.numel() for t in layer.expert_tensors().values()) // layer.num_experts
        for layer in moe_layers(model)
    }


@dataclass
class BudgetSearch:
    """What `evolve_counts` found: the best counts, their fitness, the starting ones and every candidate scored."""

    counts: dict[int, int]
    fitness: float
    fitness_name: str
    criterion: str
    start: dict[str, float]  # fitness of the starting candidates: uniform, water
    history: pd.DataFrame = field(repr=False)
    settings: dict = field(default_factory=dict)

    def plan(self, obs, *, domains=None, seed: int = 0):
        """The `PruningPlan` of `counts`: each layer keeps its best experts by the search's criterion."""
        return plan_from_counts(
            obs, self.criterion, self.counts, search="evolution", domains=domains, seed=seed,
            fitness={self.fitness_name: self.fitness}, **self.settings,
        )  # fmt: skip


@torch.no_grad()
def candidate_fitness(model, plan, batches, reference, fitness: str = "kl") -> float:
    """Token-weighted mean of `fitness` of `model` with `plan` masked, against the cached `reference`."""
    if fitness == "acceptance":
        return _acceptance(model, plan, batches, reference)
    with mask_experts(model, plan):
        rows = sequence_metrics(model, batches, reference=reference, progress=False)
    return float((rows[fitness] * rows["tokens"]).sum() / rows["tokens"].sum())


def _acceptance(model, plan, batches, reference) -> float:
    from reapkit.measure.evaluate import _forward_logits

    if reference.indices is not None:
        raise InvalidInput("acceptance needs the full reference log-probs; build them with top_k=None")
    total, tokens = 0.0, 0
    with mask_experts(model, plan), eval_mode(model):
        for batch, ref in zip(batches, reference.log_probs):
            lp = torch.log_softmax(_forward_logits(model, batch), dim=-1)
            total += float(torch.minimum(lp.exp(), ref.to(lp.device, torch.float32).exp()).sum())
            tokens += lp.shape[0]
    return total / max(tokens, 1)


def _mutate(counts, low, high, costs, budget, rng, *, moves: int, max_delta: int, tries: int = 32) -> np.ndarray:
    """A child of `counts`: min(U{1..moves}, U{1..moves}) moves of 1..max_delta experts between layers."""
    child = counts.copy()
    target = min(rng.integers(1, moves + 1), rng.integers(1, moves + 1))
    done = 0
    for _ in range(tries):
        if done >= target:
            break
        src, dst = rng.integers(0, len(child), size=2)
        delta = int(rng.integers(1, max_delta + 1))
        if src == dst or child[src] - delta < low[src] or child[dst] + delta > high[dst]:
            continue
        if costs is not None and ((child @ costs) + delta * (costs[dst] - costs[src]) > budget + 1e-9):
            continue
        child[src] -= delta
        child[dst] += delta
        done += 1
    return child


def evolve_counts(
    model,
    obs,
    batches,
    criterion: str = "reap",
    *,
    total: int | None = None,
    parameters: int | None = None,
    margin: int = 0,
    fitness: str = "kl",
    generations: int = 8,
    population: int = 8,
    survivors: int = 4,
    moves: int = 1,
    max_delta: int = 2,
    seed: int = 0,
    reference=None,
    domains=None,
    progress: bool = True,
) -> BudgetSearch:
    """Search per-layer counts of kept experts under `total` experts (exact) or `parameters` expert parameters.

    Fitness is measured on `batches` (keep them apart from the tokens you report on) with each
    candidate masked on `model`; the unpruned model's log-probs are computed once (or pass
    `reference`, `reference_outputs(model, batches)`). Generation 0 scores uniform, water-filling
    and mutations of them; the best ever scored is returned, so it is never worse than uniform.
    """
    if fitness not in FITNESS:
        raise InvalidInput(f"unknown fitness {fitness!r}; choose one of {', '.join(FITNESS)}")
    if (total is None) == (parameters is None):
        raise InvalidInput("give exactly one budget: total= (experts kept) or parameters= (expert parameters kept)")
    if generations < 1 or population < 2 or survivors < 1 or moves < 1 or max_delta < 1:
        raise InvalidInput(
            f"generations={generations}, population={population}, survivors={survivors}, moves={moves}, "
            f"max_delta={max_delta}: use generations >= 1, population >= 2, survivors, moves and max_delta >= 1"
        )
    refuse_groups(obs)
    survivors = min(survivors, population - 1)  # at least one child per generation
    from reapkit.select.criteria import score

    sizes = np.asarray(obs.num_experts, dtype=np.int64)
    minimum = obs.top_k + margin
    costs = None
    if parameters is not None:
        by_layer = expert_costs(model)
        costs = np.asarray([by_layer[layer] for layer in obs.layers], dtype=np.float64)
    budget = total if parameters is None else parameters
    check_budget(budget, sizes, minimum, costs=costs)
    values = score(obs, criterion, domains=domains, seed=seed)
    curves = [values[pos][:size] for pos, size in enumerate(sizes)]
    water = water_fill(curves, budget, minimum=minimum, costs=costs)
    uniform = (
        uniform_counts(sizes, int(water.sum()), minimum)
        if costs is None
        else _uniform_params(sizes, costs, budget, minimum)
    )
    if reference is None:
        reference = reference_outputs(model, batches, progress=False)
    sign = -1.0 if FITNESS[fitness] else 1.0  # internally lower is better

    cache: dict[tuple, float] = {}
    rows = []
    low, high = np.full(len(sizes), minimum), sizes

    def evaluate(counts, generation, index, origin):
        key = tuple(int(n) for n in counts)
        if key not in cache:
            counts = dict(zip(obs.layers, key))
            plan = PruningPlan.from_scores(values, obs.layers, list(sizes), top_k=obs.top_k, counts=counts)
            cache[key] = candidate_fitness(model, plan, batches, reference, fitness)
        rows.append((generation, index, origin, dict(zip(obs.layers, key)), cache[key]))
        return sign * cache[key]

    rng = np.random.default_rng(seed)
    people = [("uniform", uniform), ("water", water)]
    while len(people) < population:
        parent = people[len(people) % 2][1]
        people.append(("mutant", _mutate(parent, low, high, costs, budget, rng, moves=moves, max_delta=max_delta)))
    people = people[:population]
    best, best_counts = np.inf, None
    for generation in tqdm(range(generations), desc="budget search", unit="generation", disable=not progress):
        scored = sorted(
            ((evaluate(c, generation, i, origin), i, c) for i, (origin, c) in enumerate(people)), key=lambda t: t[:2]
        )
        if scored[0][0] < best:
            best, best_counts = scored[0][0], scored[0][2]
        elites = [c for _, _, c in scored[:survivors]]
        children = [
            (
                "child",
                _mutate(
                    elites[rng.integers(len(elites))], low, high, costs, budget, rng, moves=moves, max_delta=max_delta
                ),
            )
            for _ in range(population - survivors)
        ]
        people = [("parent", c) for c in elites] + children
    history = pd.DataFrame(rows, columns=["generation", "candidate", "origin", "counts", "fitness"])
    first = history[history.generation == 0]
    start = {o: float(first[first.origin == o].fitness.iloc[0]) for o in ("uniform", "water")}
    settings = dict(
        generations=generations, population=population, survivors=survivors, moves=moves, max_delta=max_delta
    )
    settings["global_budget" if parameters is None else "parameter_budget"] = budget
    return BudgetSearch(
        dict(zip(obs.layers, (int(n) for n in best_counts))), sign * best, fitness, criterion, start, history, settings
    )


def _uniform_params(sizes, costs, budget, minimum) -> np.ndarray:
    """Counts as even as possible whose expert parameters fit `budget`: the same count, then one more by layer order."""
    counts = np.full(len(sizes), minimum, dtype=np.int64)
    while True:
        grown = False
        for pos in range(len(sizes)):
            if counts[pos] < sizes[pos] and counts @ costs + costs[pos] <= budget + 1e-9:
                counts[pos] += 1
                grown = True
        if not grown:
            return counts
