"""Tiny random models of every built-in architecture, built from configs (no downloads)."""
from __future__ import annotations

import torch
import transformers as T

COMMON = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, num_experts_per_tok=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MLA = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)

CONFIGS = {
    "qwen3_moe": (T.Qwen3MoeConfig, dict(num_experts=8, moe_intermediate_size=32, intermediate_size=64, head_dim=16)),
    "qwen2_moe": (T.Qwen2MoeConfig, dict(num_experts=8, moe_intermediate_size=32, shared_expert_intermediate_size=32, intermediate_size=64)),
    "mixtral": (T.MixtralConfig, dict(num_local_experts=8, intermediate_size=32)),
    "olmoe": (T.OlmoeConfig, dict(num_experts=8, intermediate_size=32)),
    "deepseek_v3": (T.DeepseekV3Config, dict(n_routed_experts=8, moe_intermediate_size=32, intermediate_size=64, n_shared_experts=1,
                                             first_k_dense_replace=1, num_hidden_layers=3, n_group=2, topk_group=1, **MLA)),
    "glm4_moe": (T.Glm4MoeConfig, dict(n_routed_experts=8, moe_intermediate_size=32, intermediate_size=64, n_shared_experts=1,
                                       first_k_dense_replace=1, num_hidden_layers=3, n_group=1, topk_group=1, head_dim=16)),
    "glm4_moe_lite": (T.Glm4MoeLiteConfig, dict(n_routed_experts=8, moe_intermediate_size=32, intermediate_size=64, n_shared_experts=1,
                                                num_hidden_layers=3, mlp_layer_types=["dense", "sparse", "sparse"], n_group=1, topk_group=1, **MLA)),
    "gpt_oss": (T.GptOssConfig, dict(num_local_experts=8, intermediate_size=32, head_dim=16)),
    "minimax_m2": (T.MiniMaxM2Config, dict(num_local_experts=8, intermediate_size=32, head_dim=16)),
    "ernie4_5_moe": (T.Ernie4_5_MoeConfig, dict(moe_num_experts=8, moe_intermediate_size=32, intermediate_size=64, moe_layer_start_index=0)),
    "llama4_text": (T.Llama4TextConfig, dict(num_local_experts=8, intermediate_size=32, intermediate_size_mlp=64,
                                             interleave_moe_layer_step=1, head_dim=16)),
    "qwen3_next": (T.Qwen3NextConfig, dict(num_experts=8, moe_intermediate_size=32, intermediate_size=64, shared_expert_intermediate_size=32,
                                           head_dim=16, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
                                           linear_value_head_dim=16, layer_types=["linear_attention", "full_attention"])),
}
ARCHS = sorted(CONFIGS)


def tiny_config(name: str, **overrides):
    cls, kwargs = CONFIGS[name]
    return cls(**{**COMMON, **kwargs, **overrides})


def tiny_model(name: str, seed: int = 0, router_scale: float = 8.0, **overrides):
    """A random tiny model; router weights scaled so that experts differ, correction biases random."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config(name, **overrides)).eval()
    from reapkit.arch import architecture_for

    arch = architecture_for(model)
    with torch.no_grad():
        for _, block in arch.moe_blocks(model):
            router = arch.router_of(block)
            router.weight.normal_(0, 0.02 * router_scale)
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
        path.write_text("".join(json.dumps(torch.randint(3, 96, (length,), generator=g).tolist()) + "\n" for _ in range(sequences)))
        files.append(str(path))
    return root / "model", ",".join(files)
