"""One declarative record per MoE architecture: where the router and experts live, and config keys.

    >>> arch = architecture_for(model)            # looked up by config.model_type
    >>> [(i, block) for i, block in arch.moe_blocks(model)][:1]
    [(0, Qwen3MoeSparseMoeBlock(...))]
    >>> register_architecture(Architecture("my_moe", num_experts_key="num_experts"))

The observer, the planner and the pruner read these records and never branch on a model name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Attribute names under which transformers caches an expert count on modules and configs.
EXPERT_COUNT_NAMES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class Architecture:
    """Names that locate the MoE parts of one transformers model type.

    Paths are dotted attribute paths: `layers` from the causal-LM model, `block` from a decoder
    layer, `router`, `experts` and `correction_bias` from the block.
    """

    model_type: str
    num_experts_key: str  # the config key published checkpoints use (written back on save)
    top_k_key: str = "num_experts_per_tok"
    layers: str = "model.layers"
    block: str = "mlp"
    router: str = "gate"
    experts: str = "experts"
    correction_bias: str | None = None  # selection-only bias, sliced on its last dimension
    scoring: str = "softmax"  # "softmax" or "sigmoid": router logits -> probabilities
    logits_index: int = 0  # position of the router logits in the router's output tuple
    gated_input: bool = False  # the block scales the experts' *input* by the gate (llama4)
    n_group_key: str | None = None  # config key of group-limited routing
    notes: str = field(default="", compare=False)

    def moe_blocks(self, model: torch.nn.Module):
        """Yield `(decoder_layer_index, block)` for every layer whose block holds routed experts.

        Dense layers of mixed models (first_k_dense_replace, mlp_layer_types) are skipped.
        """
        for index, layer in enumerate(get_path(model, self.layers)):
            block = get_path(layer, self.block, None)
            if block is not None and get_path(block, self.experts, None) is not None:
                yield index, block

    def router_of(self, block):
        return get_path(block, self.router)

    def experts_of(self, block):
        return get_path(block, self.experts)

    def correction_bias_of(self, block):
        return None if self.correction_bias is None else get_path(block, self.correction_bias, None)

    def top_k(self, config) -> int:
        return int(getattr(config, self.top_k_key))

    def n_group(self, config) -> int:
        return int(getattr(config, self.n_group_key, 1) or 1) if self.n_group_key else 1


def get_path(obj, path: str, *default):
    """`get_path(model, "model.layers")` follows a dotted attribute path."""
    try:
        for name in path.split("."):
            obj = getattr(obj, name)
        return obj
    except AttributeError:
        if default:
            return default[0]
        raise


_GROUPED = dict(correction_bias="gate.e_score_correction_bias", scoring="sigmoid", n_group_key="n_group")

ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture, *, overwrite: bool = False) -> Architecture:
    """Make `arch` known to reapkit, keyed by its `model_type`."""
    if arch.model_type in ARCHITECTURES and not overwrite:
        raise ValueError(f"architecture {arch.model_type!r} is already registered; pass overwrite=True to replace it")
    if arch.scoring not in ("softmax", "sigmoid"):
        raise ValueError(f"scoring must be 'softmax' or 'sigmoid', got {arch.scoring!r}")
    ARCHITECTURES[arch.model_type] = arch
    return arch


for _arch in (
    Architecture("qwen3_moe", num_experts_key="num_experts"),
    Architecture("qwen2_moe", num_experts_key="num_experts", notes="shared expert with its own sigmoid gate"),
    Architecture("qwen3_next", num_experts_key="num_experts", notes="hybrid linear attention, shared expert"),
    Architecture("mixtral", num_experts_key="num_local_experts"),
    Architecture("olmoe", num_experts_key="num_experts"),
    Architecture("deepseek_v3", num_experts_key="n_routed_experts", **_GROUPED),
    Architecture("glm4_moe", num_experts_key="n_routed_experts", **_GROUPED, notes="GLM-4.5/4.6/4.7"),
    Architecture("glm4_moe_lite", num_experts_key="n_routed_experts", **_GROUPED, notes="GLM-4.7-Flash"),
    Architecture("minimax_m2", num_experts_key="num_local_experts", correction_bias="e_score_correction_bias", scoring="sigmoid"),
    Architecture("ernie4_5_moe", num_experts_key="moe_num_experts", correction_bias="gate.moe_statics.e_score_correction_bias"),
    Architecture("gpt_oss", num_experts_key="num_local_experts", router="router", notes="transposed, biased experts"),
    Architecture(
        "llama4_text", num_experts_key="num_local_experts", block="feed_forward", router="router",
        scoring="sigmoid", logits_index=1, gated_input=True, notes="gate scales the experts' input",
    ),
):
    register_architecture(_arch)


class UnknownArchitectureError(ValueError):
    pass


def architecture_for(model_or_config) -> Architecture:
    """The registered `Architecture` of a model (or config), by `model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    if config.model_type not in ARCHITECTURES and getattr(config, "text_config", None) is not None:
        config = config.text_config
    model_type = config.model_type
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitectureError(
            f"reapkit does not know the MoE architecture {model_type!r}. Supported: {known}. "
            f"To add it, describe where its router and experts live: "
            f"reapkit.register_architecture(reapkit.Architecture({model_type!r}, num_experts_key=..., router=..., ...))"
        )
    return ARCHITECTURES[model_type]
