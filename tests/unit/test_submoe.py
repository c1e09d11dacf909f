"""Sub-MoE: the joint-SVD merge (block split against the reference's row-major reshape), k-means labels, merges spent
across paired layers, and agreement with the REAP code's own output (tests/fixtures/merge_reference/submoe_*)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from reapkit.compress.merge import apply_merge
from reapkit.compress.svd_merge import svd_merge
from reapkit.data import Batch
from reapkit.errors import InvalidInput
from reapkit.observe.recorder import observe
from reapkit.select.merge import plan_merge
from reapkit.select.submoe import groups_of, spend_merges, submoe_labels

FIXTURE = Path(__file__).parents[1] / "fixtures" / "merge_reference" / "submoe_qwen3_moe.pt"


def test_block_split_at_full_rank_is_the_weighted_average():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(6, 4, generator=g) for _ in range(3)]
    w = [0.2, 0.3, 0.5]
    average = sum(a * b for a, b in zip(w, ws))
    torch.testing.assert_close(svd_merge(ws, w), average, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(svd_merge(ws, w, split="row_major"), average, atol=1e-2)


def test_truncated_rank_differs_from_the_average_and_full_rank_is_the_default():
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(8, 8, generator=g) for _ in range(2)]
    assert torch.equal(svd_merge(ws, [1, 1]), svd_merge(ws, [1, 1], rank=8))
    low = svd_merge(ws, [1, 1], rank=2)
    assert torch.linalg.matrix_rank(low) == 2


def test_row_major_reshape_does_not_return_a_copied_expert():
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(svd_merge([w, w], [0.5, 0.5]), w, atol=1e-5, rtol=1e-5)
    assert (svd_merge([w, w], [0.5, 0.5], split="row_major") - w).norm() / w.norm() > 0.1


def test_merges_go_to_the_layer_whose_next_level_costs_less():
    assert spend_merges([np.array([1.0, 5.0, 9.0]), np.array([2.0, 3.0, 4.0])], 4) == [1, 3]
    assert spend_merges([np.array([1.0]), np.array([2.0])], 5) == [1, 1]  # no more merges possible


def test_labels_keep_the_budget_of_each_block_of_layers():
    rng = np.random.default_rng(0)
    ca = [rng.normal(size=(8, 5)) for _ in range(3)]
    labels = submoe_labels(ca, keep=4, layers_per_block=2, seed=42)
    sizes = [len(set(layer.tolist())) for layer in labels]
    assert sizes[0] + sizes[1] == 8 and sizes[2] == 4  # the last block is one layer alone
    assert [len(layer) for layer in labels] == [8, 8, 8]
    assert all(sorted(set(layer.tolist())) == list(range(len(set(layer.tolist())))) for layer in labels)


def test_the_seed_changes_kmeans_and_the_same_seed_repeats_it():
    rng = np.random.default_rng(3)
    ca = [rng.normal(size=(16, 4))]
    first = submoe_labels(ca, keep=5, layers_per_block=1, seed=42)
    assert all((a == b).all() for a, b in zip(first, submoe_labels(ca, keep=5, layers_per_block=1, seed=42)))
    others = [submoe_labels(ca, keep=5, layers_per_block=1, seed=s)[0] for s in range(6)]
    assert any(groups_of(o) != groups_of(first[0]) for o in others)


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=False)


def test_clusters_equal_the_reference_code_on_its_characteristic_activations(reference):
    ca = [reference["characteristic"][i].numpy() for i in sorted(reference["characteristic"])]
    labels = submoe_labels(ca, keep=reference["keep"], layers_per_block=2, seed=reference["seed"])
    for layer, ours in zip(sorted(reference["layers"]), labels):
        assert sorted(groups_of(ours)) == sorted(reference["layers"][layer]["groups"])


def frequencies(token_ids) -> torch.Tensor:
    """Routed-token share of each expert [layers, E] of the tiny qwen3_moe on `token_ids` (the reference's weights)."""
    obs = observe(tiny_model("qwen3_moe"), [Batch(token_ids, torch.ones_like(token_ids), "code")], progress=False)
    pooled = obs.pooled()
    return pooled["count"].float() / float(pooled["tokens"][0])


def test_row_major_merge_equals_the_reference_code_to_1e5_and_the_block_split_does_not(reference):
    experts = tiny_model("qwen3_moe").model.layers[0].mlp.experts
    proba = frequencies(reference["token_ids"])[0]
    merged = reference["layers"][0]["merged"]
    assert merged, "the fixture holds no merged group"
    for dom, tensors in merged.items():
        members = next(g for g in reference["layers"][0]["groups"] if dom in g)
        order = [dom] + [e for e in members if e != dom]
        for name, expected in tensors.items():
            matrices = [getattr(experts, name).data[e] for e in order]
            row_major = svd_merge(matrices, proba[order], split="row_major")
            assert (row_major - expected).norm() / expected.norm() < 1e-5
            # the difference the block split makes: it is the frequency-weighted average instead
            blocks = svd_merge(matrices, proba[order])
            assert (blocks - expected).norm() / expected.norm() > 1e-2


def test_groups_from_observations_equal_the_reference_code(reference):
    model = tiny_model("qwen3_moe")
    token_ids = reference["token_ids"]
    batch = Batch(token_ids, torch.ones_like(token_ids), "code")
    obs = observe(model, [batch], progress=False, statistics=["all_output_sum"])
    plan = plan_merge(model, obs, method="submoe", keep=reference["keep"], seed=reference["seed"])
    for layer, expected in reference["layers"].items():
        assert sorted(plan.groups[layer]) == sorted(expected["groups"])
    assert plan.combine == "svd" and plan.options["layers_per_block"] == 2 and plan.rule == "frequency"

    row_major = plan_merge(
        model, obs, method="submoe", keep=reference["keep"], seed=reference["seed"], options={"split": "row_major"}
    )
    merged = apply_merge(copy.deepcopy(model), row_major).model.layers[0].mlp.experts
    for dom, tensors in reference["layers"][0]["merged"].items():
        slot = row_major.representatives[0].index(dom)  # the dominant (most frequent) member keeps its slot
        for name, expected in tensors.items():
            assert (getattr(merged, name).data[slot] - expected).norm() / expected.norm() < 1e-5


def test_missing_all_token_outputs_are_refused_with_the_observe_flag():
    model = tiny_model("qwen3_moe")
    token_ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    obs = observe(model, [Batch(token_ids, torch.ones_like(token_ids), "code")], progress=False)
    with pytest.raises(InvalidInput, match="--all-token-outputs"):
        plan_merge(model, obs, method="submoe", keep=4)


def test_clusters_on_the_demo_model_equal_the_reference_code(reference):
    from reapkit.model.loading import load_model

    demo = reference["demo"]
    model, _ = load_model("demo")
    token_ids = demo["token_ids"]
    batch = Batch(token_ids, torch.ones_like(token_ids), "code")
    obs = observe(model, [batch], progress=False, statistics=["all_output_sum"])
    plan = plan_merge(model, obs, method="submoe", keep=demo["keep"], seed=demo["seed"])
    for layer in plan.layers:
        assert sorted(plan.groups[layer]) == sorted(demo["groups"][layer]), layer
    assert sum(plan.kept_per_layer.values()) == demo["keep"] * len(plan.layers)
