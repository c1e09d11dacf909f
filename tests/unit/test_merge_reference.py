"""reapkit's faithful HC-SMoE and M-SMoE against the REAP code's own functions (fixtures of scripts/reference_merge.py).

The fixture holds a tiny Qwen3-MoE (state dict), its calibration batches, the statistics reapkit
recorded on them, and what the reference's `hierarchical_clustering` / `mc_smoe_clustering` and
`MoEExpertMerger` (frequency-weighted, `permute="wm"` for M-SMoE) made of them: labels and every
expert after merging (the reference's tied form). The only known difference: the reference divides
by Σ p_i + float32 eps, reapkit by Σ p_i (relative 1e-7 here).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reapkit.compress.merge import apply_merge
from reapkit.data.batches import Batch
from reapkit.model.layer import moe_layers
from reapkit.observe.recorder import observe
from reapkit.select.merge import plan_merge

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "merge_reference"


@pytest.fixture(scope="module")
def reference():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    meta = json.loads((FIXTURE / "reference.json").read_text())
    inputs, expected = np.load(FIXTURE / "inputs.npz"), np.load(FIXTURE / "reference.npz")
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**meta["config"])).eval()
    state = {k.removeprefix("state/"): torch.from_numpy(inputs[k]) for k in inputs.files if k.startswith("state/")}
    model.load_state_dict(state, strict=True)
    batches = [
        Batch(
            torch.from_numpy(inputs[f"batch/{i}/input_ids"]),
            torch.from_numpy(inputs[f"batch/{i}/attention_mask"]),
            str(domain),
        )
        for i, domain in enumerate(inputs["domains"])
    ]
    obs = observe(model, batches, statistics=["all_output_sum", "router_distance_sum"], progress=False)
    return meta, expected, model, obs


def partition(labels) -> list[list[int]]:
    return sorted(sorted(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels))


def test_the_fixture_names_its_reference_and_statistics_reproduce(reference):
    meta, expected, _, obs = reference
    assert meta["reference"] == "CerebrasResearch/reap@1970473c51ca3caeb98c10392f15b3a08a672974"
    assert {"torch", "transformers", "scipy"} <= set(meta["versions"])
    for name, value in obs.pooled().items():  # the inputs the reference was given are what reapkit records
        np.testing.assert_allclose(value.double().numpy(), expected[f"stat/{name}"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["hc_smoe_faithful", "m_smoe_faithful"])
def test_groups_and_merged_weights_equal_the_reference(reference, method):
    meta, expected, model, obs = reference
    plan = plan_merge(model, obs, method=method, keep=meta["keep"][method])
    tied = apply_merge(copy.deepcopy(model), plan, router="tied")
    small = apply_merge(copy.deepcopy(model), plan)
    for pos, layer in enumerate(plan.layers):
        assert sorted(plan.groups[layer]) == partition(expected[f"{method}/{pos}/labels"])
        experts, size = moe_layers(tied)[pos].experts, meta["config"]["moe_intermediate_size"]
        got = {
            "gate_proj": experts.gate_up_proj.data[:, :size],
            "up_proj": experts.gate_up_proj.data[:, size:],
            "down_proj": experts.down_proj.data,
        }
        kept = moe_layers(small)[pos].experts
        for part, value in got.items():
            want = torch.from_numpy(expected[f"{method}/{pos}/{part}"])
            torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-7)  # every slot: the tied form
            fused = kept.gate_up_proj.data if part != "down_proj" else kept.down_proj.data
            half = {"gate_proj": slice(0, size), "up_proj": slice(size, 2 * size), "down_proj": slice(None)}[part]
            for i, rep in enumerate(plan.representatives[layer]):  # the saved form: each representative's slot
                torch.testing.assert_close(fused[i][half] if part != "down_proj" else fused[i], want[rep])
    if method == "m_smoe_faithful":
        assert len(set(plan.kept_per_layer.values())) > 1 and plan.align
