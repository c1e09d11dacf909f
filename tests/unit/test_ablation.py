import copy

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from reapkit.compress.prune import mask_experts, remove_experts
from reapkit.errors import InvalidInput, MissingStatistic
from reapkit.model.layer import moe_layers
from reapkit.observe.recorder import observe
from reapkit.study.ablation import (
    ablation_correlation,
    ablation_reading,
    held_out,
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
    assert "reap" in ablation_reading(costs, table)
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
