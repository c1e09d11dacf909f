import copy

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import tiny_model

from reapkit.compress.prune import mask_experts, remove_experts
from reapkit.data import calibration_batches
from reapkit.errors import InvalidInput, Mismatch, MissingStatistic
from reapkit.measure.evaluate import sequence_metrics
from reapkit.measure.replay import layer_inputs, sequence_losses
from reapkit.measure.stats import bootstrap
from reapkit.model.layer import moe_layers
from reapkit.model.loading import load_model
from reapkit.observe.recorder import observe
from reapkit.select.plan import PruningPlan
from reapkit.study.ablation import (
    PLAN_COLUMNS,
    ablation_correlation,
    ablation_reading,
    held_out,
    plan_ablation,
    plan_ablation_reading,
    single_expert_ablation,
    single_expert_plan,
)


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral"])
def test_masking_one_expert_equals_removing_it(name, batches):
    model = tiny_model(name)
    b = batches[0]
    layer = moe_layers(model)[-1].index
    plan = single_expert_plan(model, layer, 3)
    assert plan.removed(layer) == [3] and sum(len(plan.removed(x)) for x in plan.layers) == 1
    with torch.no_grad(), mask_experts(model, plan):
        masked = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    removed = copy.deepcopy(model)
    remove_experts(removed, plan)
    with torch.no_grad():
        pruned = removed(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    keep = b.attention_mask.bool()
    torch.testing.assert_close(masked[keep], pruned[keep], rtol=1e-4, atol=1e-5)


def test_ablation_table_and_its_correlation_with_criteria(batches):
    model = tiny_model("qwen3_moe")
    obs = observe(model, batches, progress=False)
    first = obs.layers[0]
    costs = single_expert_ablation(model, batches, layers=[first], progress=False)
    assert list(costs.columns) == ["layer", "expert", "loss_change", "lo", "hi", "tokens"]
    assert costs["layer"].tolist() == [first] * obs.num_experts[0]
    assert costs["expert"].tolist() == list(range(obs.num_experts[0]))
    assert (costs["lo"] <= costs["loss_change"] + 1e-12).all() and (costs["loss_change"] <= costs["hi"] + 1e-12).all()
    assert costs["loss_change"].abs().max() > 0  # masking changes the loss
    table = ablation_correlation(obs, costs, ["reap", "random"], resamples=200)
    assert table["criterion"].tolist() == ["reap", "random"] and (table["layer"] == first).all()
    assert ((table["lo"] <= table["rho"] + 1e-12) & (table["rho"] <= table["hi"] + 1e-12)).all()
    assert (table["chance_lo"] < 0).all() and (table["chance_hi"] > 0).all()
    assert "REAP" in ablation_reading(costs, table)
    assert len(held_out(batches, 1)) == 1 and len(held_out(batches, None)) == len(batches)
    with pytest.raises(MissingStatistic, match="--statistics output_sum"):
        ablation_correlation(obs, costs, ["ean_ca"])
    with pytest.raises(InvalidInput, match="not MoE layers"):
        single_expert_ablation(model, batches, layers=[999], progress=False)
    assert np.isfinite(table["rho"]).all()


def test_the_figure_draws_each_criterion(batches):
    import matplotlib.pyplot as plt

    from reapkit.plot.criteria import ablation_rank_correlation

    model = tiny_model("qwen3_moe")
    obs = observe(model, batches, progress=False)
    costs = single_expert_ablation(model, batches, layers=obs.layers[:1], progress=False)
    fig = ablation_rank_correlation(ablation_correlation(obs, costs, ["reap", "frequency"], resamples=50))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] in (["REAP", "frequency"], ["frequency", "REAP"])
    plt.close(fig)


def _full_forward_costs(model, batches, layer: int) -> pd.DataFrame:
    """The plain path: mask each expert of `layer` alone and evaluate every sequence with full forwards."""
    base = sequence_metrics(model, batches, progress=False)
    tokens = base["tokens"].to_numpy(np.float64)
    unpruned = base["loss"].to_numpy(np.float64) * tokens
    rows = []
    for expert in range({m.index: m.num_experts for m in moe_layers(model)}[layer]):
        with mask_experts(model, single_expert_plan(model, layer, expert)):
            masked = sequence_metrics(model, batches, progress=False)["loss"].to_numpy(np.float64) * tokens
        rows.append((layer, expert, *bootstrap(masked, tokens, minus=unpruned), int(tokens.sum())))
    return pd.DataFrame(rows, columns=["layer", "expert", "loss_change", "lo", "hi", "tokens"])


# deepseek_v3: a dense first layer, shared experts, routing groups; gpt_oss: sliding-window layers, biased experts
@pytest.mark.parametrize("name", ["demo", "deepseek_v3", "gpt_oss"])
def test_replayed_forwards_give_the_costs_of_full_forwards(name, batches):
    if name == "demo":
        model, tokenizer = load_model("demo")
        batches = calibration_batches("code:2,prose:2", tokenizer, batch_size=2, max_length=24, split="validation")
    else:
        model = tiny_model(name)
    last = moe_layers(model)[-1].index
    assert layer_inputs(model, batches, last) is not None  # the layers before it are replayed
    fast = single_expert_ablation(model, batches, layers=[last], progress=False)
    plain = _full_forward_costs(model, batches, last)
    assert plain["loss_change"].abs().max() > 1e-4
    columns = ["loss_change", "lo", "hi"]
    np.testing.assert_allclose(fast[columns].to_numpy(), plain[columns].to_numpy(), rtol=1e-5, atol=1e-6)
    assert (fast["tokens"] == plain["tokens"]).all()


def test_sequence_losses_are_those_of_sequence_metrics(batches):
    model = tiny_model("mixtral")
    losses, tokens = sequence_losses(model, batches)
    frame = sequence_metrics(model, batches, progress=False)
    np.testing.assert_allclose(losses, frame["loss"] * frame["tokens"], rtol=1e-6)
    assert tokens.tolist() == frame["tokens"].tolist()
    replay = layer_inputs(model, batches, 1)
    with pytest.raises(Mismatch, match="other batches"):
        sequence_losses(model, batches[:1], replay=replay)
    with pytest.raises(InvalidInput, match="decoder layer 2 does not exist: the model has 2"):
        layer_inputs(model, batches, 2)


def test_plan_ablation_adds_single_costs_and_masks_what_pruning_removes(batches):
    model = tiny_model("qwen3_moe")
    first, last = [m.index for m in moe_layers(model)]
    one = single_expert_plan(model, last, 5)
    table = plan_ablation(model, batches, one, progress=False)
    assert list(table.columns) == PLAN_COLUMNS and table["layer"].tolist() == [last, "all"]
    costs = single_expert_ablation(model, batches, layers=[last], progress=False)
    single = costs.set_index("expert").loc[5]
    for row in table.itertuples():  # one expert: together is alone, nothing interacts
        assert row.removed == 1
        assert row.joint == pytest.approx(single.loss_change, abs=1e-9)
        assert row.singles == pytest.approx(single.loss_change, abs=1e-9)
        assert row.interaction == pytest.approx(0, abs=1e-9)
        assert (row.joint_lo, row.joint_hi) == pytest.approx((single.lo, single.hi), abs=1e-9)

    plan = PruningPlan({first: [0, 2, 3, 4, 5, 7], last: [0, 1, 2, 5, 6, 7]}, {first: 8, last: 8}, "test")
    table = plan_ablation(model, batches, plan, progress=False).set_index("layer")
    pruned = copy.deepcopy(model)
    remove_experts(pruned, plan)
    base = sequence_metrics(model, batches, progress=False)
    after = sequence_metrics(pruned, batches, progress=False)
    removed_cost = ((after["loss"] - base["loss"]) * base["tokens"]).sum() / base["tokens"].sum()
    assert table.loc["all", "joint"] == pytest.approx(removed_cost, abs=1e-5)  # the plan masked = the plan removed
    both = single_expert_ablation(model, batches, progress=False).set_index(["layer", "expert"])["loss_change"]
    assert table.loc[first, "singles"] == pytest.approx(both[first, 1] + both[first, 6], abs=1e-9)
    assert table.loc["all", "singles"] == pytest.approx(
        sum(both[x, e] for x in (first, last) for e in plan.removed(x)), abs=1e-9
    )
    assert table.loc["all", "removed"] == 4 and abs(table.loc["all", "interaction"]) > 1e-6
    for scope in table.index:
        row = table.loc[scope]
        assert row.interaction == pytest.approx(row.joint - row.singles, abs=1e-12)
        for name in ("joint", "singles", "interaction"):
            assert row[f"{name}_lo"] <= row[name] + 1e-12 <= row[f"{name}_hi"] + 2e-12
    reading = plan_ablation_reading(table.reset_index())
    assert f"{table.loc['all', 'joint']:+.4f}" in reading and "of 2 layers" in reading
    with pytest.raises(InvalidInput, match="removes no expert"):
        plan_ablation(model, batches, PruningPlan({x: list(range(8)) for x in (first, last)}, plan.num_experts, "none"))


def test_the_joint_figure_draws_each_layer(batches):
    import matplotlib.pyplot as plt

    from reapkit.plot.criteria import joint_vs_singles

    model = tiny_model("qwen3_moe")
    plan = PruningPlan({x: [0, 1, 2, 3, 4, 5] for x in (0, 1)}, {0: 8, 1: 8}, "test")
    fig = joint_vs_singles(plan_ablation(model, batches, plan, progress=False))
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0", "1"]
    assert "whole plan" in fig.axes[0].get_title(loc="left")
    plt.close(fig)


def test_a_forward_that_cannot_be_replayed_falls_back_to_full_forwards(batches):
    model = tiny_model("qwen3_moe")
    model.model.layers[0].register_forward_hook(lambda module, args, output: output * 2)  # runs again on replay
    with pytest.warns(UserWarning, match="cannot be replayed"):
        assert layer_inputs(model, batches, 1) is None
    with pytest.warns(UserWarning, match="cannot be replayed"):
        fast = single_expert_ablation(model, batches, layers=[1], progress=False)
    columns = ["loss_change", "lo", "hi"]
    plain = _full_forward_costs(model, batches, 1)
    np.testing.assert_allclose(fast[columns].to_numpy(), plain[columns].to_numpy(), rtol=1e-5, atol=1e-6)
