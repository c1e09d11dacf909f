"""reapkit's checkpoint format for a plan that keeps a different number of experts in each MoE layer.

    >>> import json
    >>> from reapkit.compress.prune import load_pruned, remove_experts, save_non_uniform
    >>> save_non_uniform(remove_experts(model, global_plan), global_plan, "pruned-global")
    PosixPath('pruned-global')
    >>> model = load_pruned("pruned-global")                # transformers, one expert count per layer
    >>> experts_per_layer(json.loads(open("pruned-global/config.json").read()))
    {0: 10, 1: 7, 2: 8, 3: 7}

vLLM reads the same folder through reapkit's plugin (`reapkit.run.vllm_plugin`, docs/serving.md).
A stock `config.json` names one expert count for all layers, so the folder says what it is:

| file | holds |
|---|---|
| `config.json` | the unpruned model's config (its expert count under `num_experts_key` too); `architectures` is `["ReapkitNonUniform" + the original]` (vLLM finds the plugin's model class by it; a loader without the plugin refuses the folder by name instead of misreading it), plus the `reapkit_non_uniform` section below |
| `pruning_plan.json` | the plan: experts kept in each layer, scores, provenance |
| `reapkit_non_uniform.safetensors` | the pruned weights under transformers' own names (a tied embedding once, under one of its two names): experts fused, `...mlp.experts.gate_up_proj` [kept, 2 x intermediate, hidden] (gate rows, then up rows), `...mlp.experts.down_proj` [kept, hidden, intermediate], router `...mlp.gate.weight` [kept, hidden], selection bias `...mlp.gate.e_score_correction_bias` [kept] |
| tokenizer files | as the tokenizer saves them |

The `reapkit_non_uniform` section (format `reapkit-non-uniform/1`):

| key | value |
|---|---|
| `format` | `"reapkit-non-uniform/1"` |
| `architecture` | the original architecture, e.g. `"Qwen3MoeForCausalLM"` |
| `num_experts_key` | the config key of the expert count, e.g. `"num_experts"`, `"n_routed_experts"` |
| `experts_per_layer` | `{"decoder layer": experts kept}` for every MoE layer |
| `weights` | `"reapkit_non_uniform.safetensors"` |

`per_expert_tensors` turns the fused tensors into the per-expert names of the hub layout
(`...experts.{e}.gate_proj.weight`, ...), which is how vLLM's model classes load experts.
"""

from __future__ import annotations

import re

from reapkit.errors import CheckpointError

FORMAT = "reapkit-non-uniform/1"
SECTION = "reapkit_non_uniform"
PREFIX = "ReapkitNonUniform"
WEIGHTS = "reapkit_non_uniform.safetensors"
#: Model types whose fused experts are stored gate rows then up rows, not transposed (transformers 5),
#: and whose vLLM model classes build each MoE layer from the config's expert count.
FAMILIES = {
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "glm4_moe": "Glm4MoeForCausalLM",
    "glm4_moe_lite": "Glm4MoeLiteForCausalLM",
}
_FUSED = re.compile(r"^(?P<experts>.+\.experts)\.(?P<kind>gate_up_proj|down_proj)$")


def describe(config: dict, plan, *, architecture: str, num_experts_key: str) -> dict:
    """`config` (the unpruned model's config.json) marked as this format for `plan`.

    `architecture` is the model's class name (`type(model).__name__`, e.g. `Qwen3MoeForCausalLM`).
    """
    section = {
        "format": FORMAT,
        "architecture": architecture,
        "num_experts_key": num_experts_key,
        "experts_per_layer": {str(layer): len(plan.kept[layer]) for layer in plan.layers},
        "weights": WEIGHTS,
    }
    unpruned = {num_experts_key: max(plan.num_experts.values())} if num_experts_key not in config else {}
    return {**config, **unpruned, "architectures": [PREFIX + architecture], SECTION: section}


def section_of(config) -> dict | None:
    """The `reapkit_non_uniform` section of a config (dict or config object), checked; None when absent."""
    section = config.get(SECTION) if isinstance(config, dict) else getattr(config, SECTION, None)
    if section is None:
        return None
    if not isinstance(section, dict) or section.get("format") != FORMAT:
        found = section.get("format") if isinstance(section, dict) else type(section).__name__
        raise CheckpointError(
            f"config.json has a {SECTION} section of format {found!r}, not {FORMAT!r}; "
            "save the checkpoint again with this version of reapkit (reapkit.compress.prune.save_non_uniform)"
        )
    return section


def original_config(config):
    """A config object read from such a folder, back as the unpruned model's (architecture, no section)."""
    section = section_of(config)
    if section is not None:
        config.architectures = [section["architecture"]] if section["architecture"] else None
        delattr(config, SECTION)
    return config


def experts_per_layer(config) -> dict[int, int]:
    """`{decoder layer: experts kept}` of a non-uniform checkpoint's config (dict or config object)."""
    section = section_of(config)
    if section is None:
        raise CheckpointError(
            f"this config has no {SECTION} section, so it is not a reapkit non-uniform checkpoint; "
            "save one with reapkit.compress.prune.save_non_uniform(model, plan, out)"
        )
    return {int(layer): int(count) for layer, count in section["experts_per_layer"].items()}


def per_expert_tensors(name: str, tensor):
    """Yield `(name, tensor)` in the hub's per-expert layout: fused experts split, anything else as it is.

    >>> import torch
    >>> [(n, tuple(t.shape)) for n, t in per_expert_tensors("m.layers.1.mlp.experts.gate_up_proj", torch.zeros(2, 6, 4))]
    [('m.layers.1.mlp.experts.0.gate_proj.weight', (3, 4)), ('m.layers.1.mlp.experts.0.up_proj.weight', (3, 4)), \
('m.layers.1.mlp.experts.1.gate_proj.weight', (3, 4)), ('m.layers.1.mlp.experts.1.up_proj.weight', (3, 4))]
    """
    match = _FUSED.match(name)
    if match is None:
        yield name, tensor
        return
    experts = match["experts"]
    if match["kind"] == "down_proj":
        for e in range(tensor.shape[0]):
            yield f"{experts}.{e}.down_proj.weight", tensor[e]
        return
    half = tensor.shape[1] // 2
    for e in range(tensor.shape[0]):
        yield f"{experts}.{e}.gate_proj.weight", tensor[e, :half]
        yield f"{experts}.{e}.up_proj.weight", tensor[e, half:]
