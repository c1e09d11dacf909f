"""Non-uniform budgets: water-filling on hand-made curves, the evolutionary search on a tiny model, the CLI."""

import json

import numpy as np
import pytest
from tiny_models import tiny_checkpoint, tiny_model

from reapkit.errors import InvalidInput
from reapkit.measure.budget_search import evolve_counts, expert_costs
from reapkit.observe.recorder import observe
from reapkit.select.budget import check_search, uniform_counts, water_counts, water_fill, water_plan
from reapkit.select.criteria import score


def test_water_fill_known_answer():
    # shares: a .4 .7 .9 1, b .6 .8 .9 1; log gains: a .56 .25 .11, b .29 .12 .11
    curves = [[4.0, 3.0, 2.0, 1.0], [6.0, 2.0, 1.0, 1.0]]
    assert water_fill(curves, 5, minimum=1).tolist() == [3, 2]
    assert water_fill(curves, 3, minimum=1).tolist() == [2, 1]
    assert water_fill(curves, 4, minimum=1).tolist() == [2, 2]
    assert water_fill([c[::-1] for c in curves], 5, minimum=1).tolist() == [3, 2]  # any order in, sorted inside
    assert water_fill(curves, 8, minimum=1).tolist() == [4, 4] and water_fill(curves, 4, minimum=2).tolist() == [2, 2]


def test_water_fill_respects_bounds_and_favours_the_flat_layer():
    rng = np.random.default_rng(0)
    curves = [rng.random(8) ** 4, rng.random(16), rng.random(4)]  # a peaked layer, a flat one, a small one
    for total in range(2 * 3, 8 + 16 + 4 + 1):
        counts = water_fill(curves, total, minimum=2)
        assert counts.sum() == total and (counts >= 2).all() and (counts <= [8, 16, 4]).all()
    flat, peaked = [1.0] * 8, [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.1]
    assert water_fill([peaked, flat], 8, minimum=2).tolist() == [2, 6]  # the peaked layer holds its share in 2


def test_water_fill_parameter_budget_never_exceeds_it():
    curves, costs = [[5.0, 4.0, 3.0, 2.0], [5.0, 4.0, 3.0, 2.0]], [10, 30]
    counts = water_fill(curves, 120, minimum=1, costs=costs)
    assert counts @ costs <= 120 and counts.tolist() == [4, 2]  # equal curves: the cheap layer fills first


def test_water_fill_refusals():
    with pytest.raises(InvalidInput, match=r"outside \[4, 8\].*keeps at least 2 experts"):
        water_fill([[1.0] * 4, [1.0] * 4], 3, minimum=2)
    with pytest.raises(InvalidInput, match=r"outside \[4, 8\]"):
        water_fill([[1.0] * 4, [1.0] * 4], 9, minimum=2)
    with pytest.raises(InvalidInput, match="non-negative"):
        water_fill([[1.0, -1.0]], 1, minimum=1)
    with pytest.raises(InvalidInput, match="unknown budget search 'greedy'; choose one of global, water, evolution"):
        check_search("greedy")


def test_uniform_counts():
    assert uniform_counts([16, 16, 16, 16], 34, 2).tolist() == [9, 9, 8, 8]
    assert uniform_counts([4, 16], 12, 2).tolist() == [4, 8]


@pytest.fixture(scope="module")
def tiny():
    import torch

    from reapkit.data import pad_batches

    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 96, (12,), generator=g).tolist() for _ in range(8)]
    model = tiny_model("qwen3_moe")
    observed = observe(model, pad_batches(seqs[:4], "code", 4), progress=False)
    return model, observed, pad_batches(seqs[4:], "prose", 4)  # 2 layers, 8 experts, top-2


def test_water_plan_keeps_each_layers_best_experts(tiny):
    _, obs, _ = tiny
    plan = water_plan(obs, "reap", total=9)
    values = score(obs, "reap")
    assert plan.total_kept == 9 and plan.provenance["budget_search"] == "water"
    for pos, layer in enumerate(obs.layers):
        n = len(plan.kept[layer])
        assert sorted(plan.kept[layer]) == sorted(np.argsort(-values[pos], kind="stable")[:n].tolist())
    assert water_counts(obs, "reap", total=9) == {layer: len(k) for layer, k in plan.kept.items()}


def test_evolution_is_seeded_exact_and_never_worse_than_uniform(tiny):
    model, obs, batches = tiny
    kwargs = dict(total=9, generations=3, population=4, survivors=2, moves=2, progress=False)
    first = evolve_counts(model, obs, batches, seed=3, **kwargs)
    again = evolve_counts(model, obs, batches, seed=3, **kwargs)
    assert first.counts == again.counts and first.history.equals(again.history)
    assert sum(first.counts.values()) == 9 and all(2 <= n <= 8 for n in first.counts.values())
    assert all(sum(c.values()) == 9 for c in first.history.counts)
    assert first.fitness <= first.start["uniform"] and first.fitness == first.history.fitness.min()
    agreement = evolve_counts(model, obs, batches, fitness="agreement", seed=3, **kwargs)
    assert agreement.fitness >= agreement.start["uniform"] and agreement.fitness == agreement.history.fitness.max()
    plan = first.plan(obs)
    assert {layer: len(k) for layer, k in plan.kept.items()} == first.counts


def test_comparison_pairs_every_search_with_uniform_and_the_global_budget(tiny):
    from reapkit.study.budget import budget_comparison, budget_reading

    model, obs, batches = tiny
    frame = budget_comparison(model, obs, batches[:1], batches, ratios=[0.5], generations=1, population=2,
                              resamples=200, progress=False)  # fmt: skip
    assert set(frame.search) == {"uniform", "global", "water", "evolution"} and frame.kept.nunique() == 1
    for metric, part in frame.groupby("metric"):
        rows = part.set_index("search")
        assert rows.delta["uniform"] == 0 and rows.vs_global["global"] == 0
        # paired point estimates: (x - uniform) - (x - global) = global - uniform, for every search x
        gap = rows.value["global"] - rows.value["uniform"]
        assert np.allclose(rows.delta - rows.vs_global, gap, atol=1e-9), metric
        assert ((rows.vs_global_lo <= rows.vs_global + 1e-12) & (rows.vs_global <= rows.vs_global_hi + 1e-12)).all()
    assert "against the global budget" in budget_reading(frame)


def test_evolution_under_a_parameter_budget(tiny):
    model, obs, batches = tiny
    costs = expert_costs(model)
    budget = 9 * costs[0]
    found = evolve_counts(model, obs, batches, parameters=budget, generations=2, population=4, progress=False)
    assert sum(n * costs[layer] for layer, n in found.counts.items()) <= budget


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(total=3), r"outside \[4, 16\]"),
        (dict(total=17), r"outside \[4, 16\]"),
        (dict(total=9, fitness="loss"), "unknown fitness 'loss'"),
        (dict(total=9, population=1), "population >= 2"),
        (dict(), "give exactly one budget"),
    ],
)
def test_evolution_refusals(tiny, kwargs, message):
    model, obs, batches = tiny
    with pytest.raises(InvalidInput, match=message):
        evolve_counts(model, obs, batches, progress=False, **kwargs)


def test_cli_prunes_with_searched_budgets(tmp_path, capsys):
    from reapkit.compress.prune import load_pruned
    from reapkit.run.cli import main

    def cli(*args):
        return main([str(a) for a in args])

    model, spec = tiny_checkpoint(tmp_path)
    assert cli("observe", model, "--data", spec, "--batch-size", 2, "--out", tmp_path / "obs") == 0
    plan_args = ("--observations", tmp_path / "obs", "--global-budget", 0.5)
    search = ("--budget-search", "evolution", "--generations", 2, "--population", 3, "--search-data", spec)
    assert cli("prune", model, *plan_args, *search, "--out", tmp_path / "evo") == 0
    assert "searched by evolution, kl " in capsys.readouterr().out
    saved = json.loads((tmp_path / "evo" / "pruning_plan.json").read_text())
    assert saved["provenance"]["budget_search"] == "evolution" and sum(map(len, saved["kept"].values())) == 8
    pruned = load_pruned(tmp_path / "evo")
    assert [layer.mlp.experts.num_experts for layer in pruned.model.layers] == [len(k) for k in saved["kept"].values()]
    assert (
        cli("plan", tmp_path / "obs", "--global-budget", 0.5, "--budget-search", "water", "--out", tmp_path / "w.json")
        == 0
    )
    assert json.loads((tmp_path / "w.json").read_text())["provenance"]["budget_search"] == "water"
    capsys.readouterr()
    refusals = [
        (("prune", model, *plan_args, "--budget-search", "greedy"), "unknown budget search 'greedy'"),
        (("prune", model, "--observations", tmp_path / "obs", "--budget-search", "water"), "add --global-budget"),
        (("prune", model, *plan_args, "--generations", 2), "apply to --budget-search evolution"),
        (("prune", model, *plan_args, "--budget-search", "evolution", "--fitness", "loss"), "unknown --fitness"),
        (("plan", tmp_path / "obs", "--global-budget", 0.5, "--budget-search", "evolution"), "scores plans on the model"),
        (("prune", model, "--observations", tmp_path / "obs", "--global-budget", 0.9, "--budget-search", "water"),
         "is outside [4, 16]"),
    ]  # fmt: skip
    for args, message in refusals:
        assert cli(*args, "--out", tmp_path / "refused") == 2
        assert message in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_group_limited_routers_are_refused(batches):
    obs = observe(tiny_model("deepseek_v3"), batches, progress=False)  # 8 experts in 2 groups
    with pytest.raises(InvalidInput, match="cannot keep routing groups equal"):
        water_counts(obs, "reap", total=12)
