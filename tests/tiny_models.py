"""Tiny random models of every MoE model type reapkit supports, each built from its own config class (no downloads).

    >>> model = tiny_model("qwen3_moe")                 # AutoModelForCausalLM, 2 layers, 8 experts, top-2
    >>> model = tiny_model("qwen3_vl_moe")              # the full multimodal model, tiny vision tower

`tiny_config` shrinks a type's default config: every size key it has is set from TEXT (on the text
config) or VISION (on the other sub-configs, recursively), per-layer lists keep their last entries.
OVERRIDES holds what one type needs beyond that (a validator, MLA sizes, a layer pattern).
"""

from __future__ import annotations

import torch
import transformers as T
from transformers.models.auto import configuration_auto, modeling_auto

from reapkit.model.records import VERIFIED

TEXT = dict(
    vocab_size=96,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=16,
    intermediate_size=64,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    use_cache=False,
    num_experts=8,
    num_local_experts=8,
    n_routed_experts=8,
    moe_num_experts=8,
    num_experts_per_tok=2,
    num_experts_per_token=2,
    moe_k=2,
    top_k_experts=2,
    n_group=1,
    num_expert_group=1,
    topk_group=1,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    linear_num_value_heads=4,
    linear_num_key_heads=2,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    first_k_dense_replace=0,
    moe_layer_start_index=0,
    decoder_sparse_step=1,
    interleave_moe_layer_step=1,
    intermediate_size_mlp=64,
    vocab_size_per_layer_input=96,
    hidden_size_per_layer_input=16,
    sliding_window=16,
)
VISION = dict(
    hidden_size=32,
    num_hidden_layers=1,
    depth=1,
    intermediate_size=64,
    num_attention_heads=2,
    num_heads=2,
    out_hidden_size=64,
    embed_dim=32,
    vocab_size=96,
)
MLA = dict(
    num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16
)

#: per-type settings beyond TEXT (the text config's keys; a sub-config's under its name)
_ROPE_HALF = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
OVERRIDES = {
    "deepseek_v3": dict(first_k_dense_replace=1, num_hidden_layers=3, n_group=2, topk_group=1),
    "glm4_moe": dict(first_k_dense_replace=1, num_hidden_layers=3),
    "glm4_moe_lite": dict(num_hidden_layers=3, mlp_layer_types=["dense", "sparse", "sparse"]),
    "qwen3_next": dict(layer_types=["linear_attention", "full_attention"]),
    "deepseek_ocr2": dict(mlp_layer_types=["sparse", "sparse"]),
    "dots1": dict(n_shared_experts=1),
    "glm4v_moe": dict(rope_parameters={**_ROPE_HALF, "mrope_section": [2, 1, 1]}),
    "inkling2": dict(vision_config=dict(text_hidden_size=64)),
    "lfm2_moe": dict(layer_types=["full_attention", "full_attention"], num_dense_layers=0),
    "mimo_v2_flash": dict(
        num_key_value_heads=2,  # its sliding-window layers double the KV heads
        rope_parameters={"full_attention": _ROPE_HALF, "sliding_attention": _ROPE_HALF},
    ),
    "qwen3_omni_moe": dict(enable_audio_output=False),
    "mistral4": dict(head_dim=16),
    "beam": dict(mlp_layer_types=["sparse", "sparse"]),
    "glm5_next": dict(
        qk_rope_head_dim=0, mlp_layer_types=["sparse", "sparse"], layer_types=["indexed_attention", "indexed_attention"]
    ),  # no KDA layer: its reference kernel is slow
    "gemma4": dict(enable_moe_block=True),
    "diffusion_gemma": dict(enable_moe_block=True),
    "granitemoehybrid": dict(mamba_n_heads=4, mamba_d_state=8, mamba_d_head=16, mamba_chunk_size=8, mamba_expand=1),
    "kimi_linear": dict(linear_head_dim=16, linear_num_heads=4),
    "ernie4_5_vl_moe": dict(
        moe_intermediate_size=[32, 32],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [3, 3, 2]},
    ),
}

AUTO_CLASSES = (
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", T.AutoModelForCausalLM),
    ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", T.AutoModelForImageTextToText),
    ("MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", T.AutoModelForMultimodalLM),
    ("MODEL_MAPPING_NAMES", T.AutoModel),
)

#: the model types the parametrised tests run on: exactly the ones `reapkit architectures` calls verified
ARCHS = sorted(VERIFIED)


def auto_class(model_type: str):
    """The Auto class a type's checkpoints load with (causal LM first, then image-text-to-text, ...)."""
    for mapping, auto in AUTO_CLASSES:
        if model_type in getattr(modeling_auto, mapping):
            return auto
    raise KeyError(model_type)


def _shrink(defaults: dict, table: dict) -> dict:
    """The keys of `table` that `defaults` has, nested sub-configs shrunk with VISION; per-layer lists are left
    out so that the config class derives them again for the new number of layers."""
    out = {k: v for k, v in table.items() if k in defaults}
    if "qk_rope_head_dim" in defaults and "head_dim" in out:  # MLA: head_dim is the rope part
        out["head_dim"] = table["qk_rope_head_dim"]
    for key, value in defaults.items():
        if isinstance(value, dict) and "model_type" in value:
            out[key] = _shrink(value, VISION)
    return out


def tiny_config(name: str, **overrides):
    cls = configuration_auto.CONFIG_MAPPING[name]
    default = cls()
    text = default.get_text_config()
    overrides = {**OVERRIDES.get(name, {}), **overrides}
    if text is default:
        return cls(**{**_shrink(default.to_dict(), TEXT), **overrides})
    subs = {}
    outer = {
        k: v
        for k, v in overrides.items()
        if k in (getattr(cls, "sub_configs", {}) or {}) or hasattr(default, k) and not hasattr(text, k)
    }
    inner = {k: v for k, v in overrides.items() if k not in outer}
    for key in getattr(cls, "sub_configs", {}) or {}:
        sub = getattr(default, key, None)
        if hasattr(sub, "to_dict"):
            table = TEXT if sub is text else VISION
            subs[key] = {**_shrink(sub.to_dict(), table), **(inner if sub is text else {}), **outer.pop(key, {})}
            if sub is not text and hasattr(sub, "get_text_config") and sub.get_text_config() is text:
                subs[key]["text_config"] = {**_shrink(text.to_dict(), TEXT), **inner}  # qwen3_omni_moe's thinker
    return cls(**subs, **outer)


_BUILT: dict[str, torch.nn.Module] = {}


def tiny_model(name: str, seed: int = 0, router_scale: float = 8.0, **overrides):
    """A random tiny model (a fresh copy of one built once per session and arguments)."""
    import copy

    key = repr((name, seed, router_scale, sorted(overrides.items())))
    if key not in _BUILT:
        _BUILT[key] = _build(name, seed, router_scale, **overrides)
    return copy.deepcopy(_BUILT[key])


def _build(name: str, seed: int, router_scale: float, **overrides):
    """Router weights scaled so that experts differ, correction biases and expert biases random."""
    torch.manual_seed(seed)
    model = auto_class(name).from_config(tiny_config(name, **overrides)).eval()
    from reapkit.model.discover import architecture_for

    arch = architecture_for(model)
    with torch.no_grad():
        for _, block in arch.moe_blocks(model):
            arch.router_weight_of(block).normal_(0, 0.02 * router_scale)
            bias = arch.correction_bias_of(block)
            if bias is not None:
                bias.normal_(0, 0.05)
            experts = arch.experts_of(block)
            for name_, p in experts.named_parameters():
                if name_.endswith("bias"):
                    p.normal_(0, 0.02)
    return model


def tiny_checkpoint(root, domains=("code", "prose"), sequences: int = 4, length: int = 12):
    """A tiny qwen3_moe saved to `root/model` and one token-id .jsonl per domain; returns (model dir, spec)."""
    import json
    from pathlib import Path

    root = Path(root)
    tiny_model("qwen3_moe").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    files = []
    for domain in domains:
        path = root / f"{domain}.jsonl"
        path.write_text(
            "".join(json.dumps(torch.randint(3, 96, (length,), generator=g).tolist()) + "\n" for _ in range(sequences))
        )
        files.append(str(path))
    return root / "model", ",".join(files)
