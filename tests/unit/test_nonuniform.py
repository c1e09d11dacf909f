"""reapkit's non-uniform checkpoint format, and the parts of its vLLM plugin that run without vLLM.

The plugin's end-to-end check (vLLM serving a global-budget checkpoint) is `make check-handoffs`.
"""

from __future__ import annotations

import copy
import json
import pickle
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_model
from transformers import DeepseekV3Config, Glm4MoeConfig, Qwen3MoeConfig

from reapkit.compress import nonuniform
from reapkit.compress.prune import load_pruned, remove_experts, save_non_uniform
from reapkit.errors import CheckpointError
from reapkit.observe.recorder import observe
from reapkit.run import vllm_models, vllm_plugin
from reapkit.select.plan import PruningPlan

ROOT = Path(__file__).resolve().parents[2]


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


@pytest.mark.parametrize(
    "model_type, counts",
    [("qwen3_moe", {0: 5, 1: 7}), ("deepseek_v3", {1: 4, 2: 6}), ("glm4_moe", {1: 3, 2: 6})],
)
def test_the_format_on_disk_and_back_in_transformers(batches, tmp_path, model_type, counts):
    model = tiny_model(model_type)
    plan = PruningPlan.from_observations(observe(model, batches, progress=False), "reap", counts=counts)
    masked = copy.deepcopy(model)
    remove_experts(model, plan)
    save_non_uniform(model, plan, tmp_path / "nu")
    config = json.loads((tmp_path / "nu" / "config.json").read_text())
    original = nonuniform.FAMILIES[model_type]
    assert config["architectures"] == [f"ReapkitNonUniform{original}"]
    section = config[nonuniform.SECTION]
    assert section == {
        "format": "reapkit-non-uniform/1",
        "architecture": original,
        "num_experts_key": section["num_experts_key"],
        "experts_per_layer": {str(layer): n for layer, n in counts.items()},
        "weights": "reapkit_non_uniform.safetensors",
    }
    assert config[section["num_experts_key"]] == 8  # the unpruned count stays the config's own
    assert nonuniform.experts_per_layer(config) == counts
    weights = load_file(tmp_path / "nu" / nonuniform.WEIGHTS)
    for layer, n in counts.items():
        assert weights[f"model.layers.{layer}.mlp.experts.gate_up_proj"].shape[0] == n
        assert weights[f"model.layers.{layer}.mlp.gate.weight"].shape[0] == n
    loaded = load_pruned(tmp_path / "nu")
    assert loaded.config.architectures == [original] and not hasattr(loaded.config, nonuniform.SECTION)
    torch.testing.assert_close(logits(loaded, batches[0]), logits(model, batches[0]), rtol=0, atol=1e-6)
    from reapkit.compress.prune import mask_experts

    with mask_experts(masked, plan):  # removing experts = masking them: the strongest identity
        torch.testing.assert_close(logits(loaded, batches[0]), logits(masked, batches[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(nonuniform.FAMILIES))
def test_fused_experts_split_into_the_hub_layout(tmp_path, model_type):
    """What the plugin hands vLLM's loader equals what `save_pretrained` writes for stock checkpoints."""
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path)
    hub = {}
    for shard in tmp_path.glob("*.safetensors"):
        hub |= load_file(shard)
    converted = {}
    for name, tensor in model.state_dict().items():
        converted.update(nonuniform.per_expert_tensors(name, tensor))
    experts = {n for n in hub if ".experts." in n}
    assert experts and experts == {n for n in converted if ".experts." in n}
    for name in experts:
        torch.testing.assert_close(converted[name], hub[name], rtol=0, atol=0, msg=name)


def build_like_vllm(config, prefix=""):
    """vLLM's pattern: a model constructor builds layers whose MoE blocks read the count with their `prefix`."""

    def moe_block(config, prefix):
        return {"experts": config.num_experts, "gate": gate(config, prefix=f"{prefix}.gate")}

    def gate(config, prefix):
        return config.num_experts

    def decoder_layer(config, prefix):
        return moe_block(config, prefix=f"{prefix}.mlp")

    layers = [decoder_layer(config, prefix=f"{prefix}.layers.{i}") for i in range(config.num_hidden_layers)]
    return {"layers": layers, "expert_table": config.num_experts}  # read outside any layer


def test_per_layer_experts_answers_each_layer_with_its_count():
    config = Qwen3MoeConfig(num_experts=16, num_hidden_layers=3)
    before = config.to_dict()
    with vllm_plugin.per_layer_experts(config, {1: 12, 2: 14}):
        built = build_like_vllm(config, prefix="model")
        assert config.num_experts == 16  # read by no layer's constructor
    assert [layer["experts"] for layer in built["layers"]] == [16, 12, 14]  # layer 0 is not in the plan
    assert [layer["gate"] for layer in built["layers"]] == [16, 12, 14]
    assert built["expert_table"] == 16
    assert type(config) is Qwen3MoeConfig and config.to_dict() == before
    assert pickle.loads(pickle.dumps(config)).num_experts == 16


@pytest.mark.parametrize(
    "config_class, key", [(DeepseekV3Config, "n_routed_experts"), (Glm4MoeConfig, "n_routed_experts")]
)
def test_per_layer_experts_for_deepseek_and_glm_configs(config_class, key):
    config = config_class(**{key: 16}, num_hidden_layers=2)

    def moe(config, prefix):
        return getattr(config, key)

    with vllm_plugin.per_layer_experts(config, {1: 6}):
        assert [moe(config, prefix=f"model.layers.{i}.mlp") for i in range(2)] == [16, 6]
    assert getattr(config, key) == 16 and type(config) is config_class


def test_the_plugin_is_declared_and_names_every_family():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["vllm.general_plugins"]["reapkit_non_uniform"]
    module, function = target.split(":")
    assert module == vllm_plugin.__name__ and callable(getattr(vllm_plugin, function))
    registered = vllm_plugin.architectures()
    assert set(registered) == {f"ReapkitNonUniform{a}" for a in nonuniform.FAMILIES.values()}
    assert set(vllm_models.VLLM_MODULES) == set(nonuniform.FAMILIES.values())
    assert all(t == f"reapkit.run.vllm_models:{name}" for name, t in registered.items())
    with pytest.raises(AttributeError):
        vllm_models.ReapkitNonUniformMixtralForCausalLM  # noqa: B018 - a family the plugin does not serve


def test_a_foreign_section_is_refused():
    with pytest.raises(CheckpointError, match="format 'other/2'"):
        nonuniform.experts_per_layer({nonuniform.SECTION: {"format": "other/2"}})
    with pytest.raises(CheckpointError, match="not a reapkit non-uniform checkpoint"):
        nonuniform.experts_per_layer({"model_type": "qwen3_moe"})


def test_a_tied_embedding_stored_as_lm_head_reaches_vllm_as_both():
    """safetensors stores a tied embedding once; when that name is lm_head.weight, vLLM unties and needs both."""
    mixin = object.__new__(vllm_models.NonUniformExperts)
    embedding, experts = torch.ones(4, 2), torch.zeros(3, 6, 2)
    weights = [("lm_head.weight", embedding), ("model.layers.0.mlp.experts.gate_up_proj", experts)]
    mixin._lm_head_is_embedding = True
    names = [name for name, _ in mixin._per_expert(weights)]
    assert names[:2] == ["model.embed_tokens.weight", "lm_head.weight"] and len(names) == 2 + 3 * 2
    mixin._lm_head_is_embedding = False
    assert [name for name, _ in mixin._per_expert(weights)][0] == "lm_head.weight"
