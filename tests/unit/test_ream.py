"""REAM: distances, greedy grouping, merge weights, neuron alignment, and agreement with the authors' code
(tests/fixtures/merge_reference/ream_*, made by scripts/reference_ream.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from reapkit.compress.align import permute_neurons
from reapkit.compress.merge import apply_merge
from reapkit.compress.ream_merge import ream_permutation, weight_features
from reapkit.data import Batch
from reapkit.errors import InvalidInput
from reapkit.observe.recorder import observe
from reapkit.select.merge import plan_merge
from reapkit.select.ream import check_group_size, ream_distances, ream_groups, ream_weights

FIXTURE = Path(__file__).parents[1] / "fixtures" / "merge_reference" / "ream_qwen3_moe.pt"


def test_gate_distance_from_the_gram_matrix_equals_the_distance_between_unit_logit_columns():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=g, dtype=torch.float64)
    outputs = torch.randn(6, 4, generator=g, dtype=torch.float64)
    unit = logits.T / (logits.T.norm(dim=1, keepdim=True) + 1e-8)
    direct = torch.cdist(unit, unit).numpy()
    cos = torch.nn.functional.cosine_similarity(outputs[:, None], outputs[None], dim=-1).numpy()
    expected = 1 - ((cos + 1) / 2 + 1 - direct / direct.max()) / 2
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(ream_distances(outputs.numpy(), (logits.T @ logits).numpy()), expected, atol=1e-6)
    alone = ream_distances(outputs.numpy())  # without the gate term (use_gate_output=False)
    np.testing.assert_allclose(alone[0, 1], 1 - (cos[0, 1] + 1) / 2, atol=1e-6)


def test_groups_fill_the_most_salient_centroid_first_up_to_the_group_size():
    saliency = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.05])
    d = np.abs(np.arange(6)[:, None] - np.arange(6)[None, :]).astype(np.float32)
    assert ream_groups(saliency, d, keep=2, group_size=3) == [[1, 0, 2], [3, 4, 5]]
    assert ream_groups(saliency, d, keep=2, group_size=16) == [[1, 0, 2, 4, 5], [3]]


def test_a_group_size_too_small_for_the_target_is_refused_with_the_sizes_that_work():
    with pytest.raises(InvalidInput, match="choose group_size of at least 4 or keep of at least 6"):
        check_group_size(16, 4, 3, layer=2)
    with pytest.raises(InvalidInput, match="group size must be a positive"):
        check_group_size(16, 4, 0)
    check_group_size(16, 4, 4)  # 4 groups of 4: reachable


def test_weights_raise_a_zero_saliency_to_the_smallest_positive_one():
    assert ream_weights([0.2, 0.0, 0.6], [2, 1]) == pytest.approx([0.6 / 0.8, 0.2 / 0.8])
    assert ream_weights([2.0, 0.0, 4.0], [0, 1]) == pytest.approx([2.0 / 2.5, 0.5 / 2.5])  # capped at 0.5


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])  # plain; transposed, interleaved gate/up, biases
def test_aligning_a_permuted_copy_finds_the_permutation(name):
    experts = tiny_model(name).model.layers[0].mlp.experts
    tensors = {n: t for n, t in experts.named_parameters(recurse=False) if t.shape[0] == experts.num_experts}
    size = experts.down_proj.shape[1 if experts.is_transposed else 2]
    with torch.no_grad():
        for t in tensors.values():
            t.data[1] = t.data[0]
    permute_neurons(experts, 1, torch.randperm(size, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(experts.down_proj.data[1], experts.down_proj.data[0])
    permute_neurons(experts, 1, ream_permutation(experts, 1, 0, weight_features(experts)))
    for t in tensors.values():
        torch.testing.assert_close(t.data[1], t.data[0])


def observed(token_ids, name="qwen3_moe", statistics=("prob_output_sum", "router_gram")):
    model = tiny_model(name)
    mask = torch.ones_like(token_ids)
    return model, observe(model, [Batch(token_ids, mask, "code")], progress=False, statistics=list(statistics))


def test_prob_output_sum_is_every_experts_output_weighted_by_its_router_probability_over_all_tokens():
    token_ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(4))
    model, obs = observed(token_ids, statistics=("prob_output_sum", "all_output_sum"))
    block = model.model.layers[1].mlp
    captured = {}
    handle = block.register_forward_pre_hook(lambda m, a: captured.update(x=a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=token_ids)
        handle.remove()
        x, experts = captured["x"], block.experts
        probs = torch.softmax(x @ block.gate.weight.T, dim=-1)
        expected = torch.stack(
            [
                (
                    probs[:, e : e + 1]
                    * experts.down_proj[e]
                    .matmul(
                        (
                            torch.nn.functional.silu(x @ experts.gate_up_proj[e][:32].T)
                            * (x @ experts.gate_up_proj[e][32:].T)
                        ).T
                    )
                    .T
                ).sum(0)
                for e in range(experts.num_experts)
            ]
        )
    torch.testing.assert_close(obs.pooled()["prob_output_sum"][1].float(), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(obs.pooled()["all_output_sum"][1].float(), expected, atol=1e-3)


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=False)


@pytest.mark.parametrize("group_size", [16, 3])
def test_groups_from_observations_equal_the_reference_code(reference, group_size):
    model, obs = observed(reference["token_ids"])
    plan = plan_merge(model, obs, method="ream", keep=reference["keep"], options={"group_size": group_size})
    for layer, expected in reference["layers"].items():
        assert sorted(plan.groups[layer]) == sorted(sorted(g) for g in expected["groups"][group_size])
        assert sorted(plan.representatives[layer]) == sorted(g[0] for g in expected["groups"][group_size])
    assert plan.rule == "ream" and plan.align and plan.alignment == "ream" and plan.router == "representative"


def test_merged_weights_equal_the_reference_code_with_the_weight_cost(reference):
    """The code's default cost adds neuron-activation distances on sampled tokens, which observations do not keep:
    with it ("logits+weights") the alignment, and so the merged tensors, differ (measured here, not hidden)."""
    model, obs = observed(reference["token_ids"])
    plan = plan_merge(model, obs, method="ream", keep=reference["keep"])
    merged = apply_merge(copy.deepcopy(model), plan).model.layers[0].mlp.experts
    seen = set()
    for (merging, centroid), expected in reference["layers"][0]["merged"].items():
        slot = plan.representatives[0].index(centroid)
        for name, tensor in expected.items():
            relative = float((getattr(merged, name).data[slot] - tensor).norm() / tensor.norm())
            if merging == "weights":
                assert relative < 1e-5
            else:
                assert relative > 1e-2  # the activation term changes the permutation
            seen.add(merging)
    assert seen == {"weights", "logits+weights"}


def test_missing_statistics_are_refused_with_the_observe_flag_that_records_them(reference):
    model, obs = observed(reference["token_ids"], statistics=("router_gram",))
    with pytest.raises(InvalidInput, match="--statistics prob_output_sum"):
        plan_merge(model, obs, method="ream", keep=4)


def test_a_group_size_the_target_cannot_meet_and_an_unknown_option_are_refused(reference):
    model, obs = observed(reference["token_ids"])
    with pytest.raises(InvalidInput, match="cannot merge 8 experts into 4 groups of at most 1"):
        plan_merge(model, obs, method="ream", keep=4, options={"group_size": 1})
    with pytest.raises(InvalidInput, match="has no option 'groupsize'; its options: group_size"):
        plan_merge(model, obs, method="ream", keep=4, options={"groupsize": 4})


@pytest.mark.parametrize("method,options", [("ream", {}), ("submoe", {"layers_per_block": 1})])
@pytest.mark.parametrize("name", ["qwen3_moe", "glm4_moe", "qwen2_moe", "gpt_oss"])  # plain; selection bias and
def test_merged_checkpoints_reload_with_stock_transformers(tmp_path, name, method, options):  # shared experts;
    from tiny_models import auto_class  # shared expert; transposed experts with biases, interleaved gate/up

    from reapkit.compress.prune import save_pruned
    from reapkit.model.layer import moe_layers

    token_ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(5))
    model, obs = observed(token_ids, name, ("prob_output_sum", "router_gram", "all_output_sum"))
    plan = plan_merge(model, obs, method=method, keep=4, seed=42, options=options)
    merged = apply_merge(copy.deepcopy(model), plan)
    save_pruned(merged, plan.to_pruning_plan(), tmp_path / "merged")
    reloaded = auto_class(name).from_pretrained(tmp_path / "merged")
    assert [layer.num_experts for layer in moe_layers(reloaded)] == [4] * len(obs.layers)
    if moe_layers(model)[0].selection_bias is not None:  # the kept experts' selection bias entries follow them
        layer = obs.layers[0]
        torch.testing.assert_close(
            moe_layers(reloaded)[0].selection_bias, moe_layers(model)[0].selection_bias[plan.representatives[layer]]
        )
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=token_ids).logits, merged(input_ids=token_ids).logits)
        assert not torch.allclose(merged(input_ids=token_ids).logits, model(input_ids=token_ids).logits)


def test_groups_on_the_demo_model_equal_the_reference_code(reference):
    from reapkit.model.loading import load_model

    demo = reference["demo"]
    model, _ = load_model("demo")
    token_ids = demo["token_ids"]
    statistics = ["prob_output_sum", "router_gram"]
    obs = observe(model, [Batch(token_ids, torch.ones_like(token_ids), "code")], progress=False, statistics=statistics)
    for size in {size for _, size in demo["groups"]}:
        plan = plan_merge(model, obs, method="ream", keep=demo["keep"], options={"group_size": size})
        for layer in plan.layers:
            assert sorted(plan.groups[layer]) == sorted(demo["groups"][(layer, size)]), (layer, size)
