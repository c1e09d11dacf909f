"""REAM: distances, greedy grouping, merge weights, neuron alignment, and agreement with the authors' code
(tests/fixtures/merge_reference/ream_*, made by scripts/reference_ream.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from reapkit.compress.ream_merge import neuron_permutation, permuted, ream_merge_group, weight_features
from reapkit.data import Batch
from reapkit.errors import InvalidInput
from reapkit.observe.recorder import observe
from reapkit.select.criteria import score
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
    shuffle = torch.randperm(size, generator=torch.Generator().manual_seed(0)).numpy()
    with torch.no_grad():
        for n, t in tensors.items():
            t.data[1] = permuted(experts, n, t.data[0], shuffle)
    perm = neuron_permutation(experts, 0, 1, weight_features(experts))
    for n, t in tensors.items():
        torch.testing.assert_close(permuted(experts, n, t.data[1], perm), t.data[0])


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=False)


def test_merged_weights_equal_the_reference_code_with_the_weight_cost(reference):
    """The code's default cost adds neuron-activation distances on sampled tokens, which observations do not keep:
    with it ("logits+weights") the alignment, and so the merged tensors, differ (measured here, not hidden)."""
    model = tiny_model("qwen3_moe")
    tokens = reference["token_ids"]
    saliency = score(observe(model, [Batch(tokens, torch.ones_like(tokens), "code")], progress=False), "reap")
    layer = reference["layers"][0]
    experts = model.model.layers[0].mlp.experts
    seen = set()
    for (merging, centroid), expected in layer["merged"].items():
        members = next(g for g in layer["groups"][16] if g[0] == centroid)
        ours = ream_merge_group(experts, members, ream_weights(saliency[0], members))
        for name, tensor in expected.items():
            relative = float((ours[name] - tensor).norm() / tensor.norm())
            if merging == "weights":
                assert relative < 1e-5
            else:
                assert relative > 1e-2  # the activation term changes the permutation
            seen.add(merging)
    assert seen == {"weights", "logits+weights"}
