"""One declarative record per MoE architecture, completed by reading the model's own structure.

    >>> from reapkit.model import architecture_for
    >>> arch = architecture_for(model)            # read from the module tree, completed by the table
    >>> [(i, block) for i, block in arch.moe_blocks(model)][:1]
    [(0, Qwen3MoeSparseMoeBlock(...))]
    >>> register_architecture(Architecture("my_moe", num_experts_key="num_experts"))
    Architecture(model_type='my_moe', num_experts_key='num_experts', ...)

What can be read is read (`reapkit.model.discover`): the fused experts module (transformers'
`@use_experts_implementation`), its block and decoder layers, the router (the module transformers
records `router_logits` from, or the block's module whose weight has E rows), a selection-only
correction bias, shared experts, and the config keys of the expert count, top-k and routing groups.
A record in `ARCHITECTURES` names only what cannot be read (the key published checkpoints use when
it differs from the config's own, a scoring function, a reason a type is not supported).
The observer, the planner and the pruner read these records and never branch on a model name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from reapkit.errors import InvalidInput

#: Attribute names under which transformers caches an expert count on modules and configs.
EXPERT_COUNT_NAMES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

#: Router scoring functions: router logits -> per-expert probabilities.
SCORING = {
    "softmax": lambda logits: torch.softmax(logits, dim=-1),
    "sigmoid": torch.sigmoid,
    "sqrtsoftplus": lambda logits: torch.nn.functional.softplus(logits).sqrt(),
}


@dataclass(frozen=True)
class Architecture:
    """Names that locate the MoE parts of one transformers model type; `None` means "read it".

    Paths are dotted attribute paths: `layers` from the top model, `block` from a decoder
    layer, `router`, `experts`, `correction_bias` and `shared_experts` from the block,
    `router_weight` and `router_expert_tensors` from the router.
    """

    model_type: str
    num_experts_key: str | None = None  # the config key published checkpoints use (written back on save)
    top_k_key: str | None = None
    layers: str | None = None
    block: str | None = None
    router: str | None = None
    router_weight: str | None = None  # the router's [E, hidden] weight ("weight", "gate.weight", "wg.weight")
    router_expert_tensors: tuple[str, ...] | None = None  # the router's tensors with a leading expert axis
    experts: str | None = None
    correction_bias: str | None = None  # selection-only bias, sliced on its last dimension
    shared_experts: str | None = None
    scoring: str | None = None  # a key of SCORING
    logits_index: int | None = None  # position of the router logits in the router's output tuple
    gated_input: bool = False  # the block scales the experts' *input* by the gate (llama4)
    n_group_key: str | None = None  # config key of group-limited routing
    topk_group_key: str | None = None
    unsupported: str = ""  # why reapkit cannot prune this type (one line); empty when it can
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

    def router_weight_of(self, block) -> torch.Tensor:
        """The router's [E, hidden] weight (the router's own `weight`, or its linear map's)."""
        return get_path(self.router_of(block), self.router_weight)

    def experts_of(self, block):
        return get_path(block, self.experts)

    def correction_bias_of(self, block):
        return None if self.correction_bias is None else get_path(block, self.correction_bias, None)

    def top_k(self, config) -> int:
        return int(getattr(config, self.top_k_key))

    def n_group(self, config) -> int:
        return int(getattr(config, self.n_group_key, 1) or 1) if self.n_group_key else 1

    def topk_group(self, config) -> int | None:
        """Groups a token may route to (None when routing is not group-limited)."""
        if self.n_group(config) <= 1 or not self.topk_group_key:
            return None
        return int(getattr(config, self.topk_group_key, 0) or self.n_group(config))


def get_path(obj, path: str, *default):
    """`get_path(model, "model.layers")` follows a dotted attribute path (`""` is `obj` itself)."""
    if not path:
        return obj
    try:
        for name in path.split("."):
            obj = getattr(obj, name)
        return obj
    except AttributeError:
        if default:
            return default[0]
        raise


ARCHITECTURES: dict[str, Architecture] = {}
_read_cache: dict[tuple, Architecture] = {}  # (model class, record) -> the record completed from its structure


def register_architecture(arch: Architecture, *, overwrite: bool = False) -> Architecture:
    """Make `arch` known to reapkit, keyed by its `model_type`; unset fields are read from the model."""
    if arch.model_type in ARCHITECTURES and not overwrite:
        raise InvalidInput(f"architecture {arch.model_type!r} is already registered; pass overwrite=True to replace it")
    if arch.scoring is not None and arch.scoring not in SCORING:
        raise InvalidInput(f"scoring must be one of {', '.join(SCORING)}, got {arch.scoring!r}")
    ARCHITECTURES[arch.model_type] = arch
    _read_cache.clear()
    return arch


_PUBLISHED_NUM_EXPERTS = "published checkpoints write `num_experts`, transformers 5 writes `num_local_experts`"
_NO_TOP_K = "dense expert compute: every expert runs on every token, no top-k routing to prune"

for _arch in (
    # Only what cannot be read from the module tree and the config.
    Architecture("qwen3_moe", num_experts_key="num_experts", notes=_PUBLISHED_NUM_EXPERTS),
    Architecture("qwen3_vl_moe", num_experts_key="num_experts", notes=_PUBLISHED_NUM_EXPERTS),
    Architecture(
        "flint",
        unsupported="transformers decorates its MoE block, not its experts, as experts: "
        "the experts implementation that observes cannot be swapped in",
    ),
    Architecture(
        "zaya",
        unsupported="its router scores E+1 classes (a compute-free skip expert) and routes top-1 "
        "only; the skip class has no expert to keep or remove",
    ),
    Architecture(
        "inkling",
        unsupported="transformers 5.23 ships its modeling file without a config class or "
        "Auto mapping, so no checkpoint of it can be built or loaded",
    ),
    Architecture(
        "deepseek_v4",
        unsupported="its first layers route by a frozen token-id hash (hash_moe): no "
        "router score can mask an expert those routes point to",
    ),
    Architecture(
        "ernie4_5_vl_moe",
        notes="not verified: its blocks hold text and vision experts side by side "
        "(two expert groups per block); removing text experts alone does not yet equal masking",
    ),
    Architecture(
        "diffusion_gemma",
        notes="not verified: its block-diffusion forward runs a canvas of extra "
        "positions beside the prompt, which the per-token padding mask does not describe",
    ),
    Architecture(
        "qwen3_omni_moe",
        notes="not verified: its ForConditionalGeneration has no forward of its own "
        "(generate drives the thinker), so the suite's logits identities cannot run on it",
    ),
    Architecture(
        "dots3_note",
        notes="not verified: its default per-layer config names 45 layers and cannot be shrunk to a tiny model",
    ),
    Architecture(
        "muse_spark", notes="not verified: its tiny model keeps a full-width (4,096) expert path, observing fails"
    ),
    Architecture(
        "llama4_text",
        num_experts_key="num_local_experts",
        layers="model.layers",
        block="feed_forward",
        experts="experts",
        router="router",
        scoring="sigmoid",
        logits_index=1,
        gated_input=True,
        notes="gate scales the experts' input (not decorated)",
    ),
):
    register_architecture(_arch)


#: model types the test suite runs every identity on (tests/tiny_models.py parametrises over exactly these)
VERIFIED = frozenset(
    {
        "afmoe",
        "aria",
        "axk1",
        "axk2",
        "bailing_hybrid",
        "beam",
        "cohere2_moe",
        "deepseek_ocr2",
        "deepseek_v2",
        "deepseek_v3",
        "deepseek_v32",
        "dots1",
        "ernie4_5_moe",
        "exaone_moe",
        "flex_olmo",
        "gemma4",
        "glm4_moe",
        "glm4_moe_lite",
        "glm4v_moe",
        "glm5_next",
        "glm_moe_dsa",
        "gpt_oss",
        "granitemoe",
        "granitemoe_swa",
        "granitemoehybrid",
        "granitemoeshared",
        "hunyuan_v1_moe",
        "hy_v3",
        "hy_v4",
        "inkling2",
        "jamba",
        "kimi_linear",
        "kolibri1",
        "laguna",
        "lfm2_moe",
        "llama4_text",
        "mellum",
        "minimax",
        "minimax_m2",
        "minimax_m3_vl",
        "mistral_large4",
        "mixtral",
        "nemotron_h",
        "olmoe",
        "openai_privacy_filter",
        "phimoe",
        "qwen2_moe",
        "qwen3_5_moe",
        "qwen3_moe",
        "qwen3_next",
        "qwen3_vl_moe",
        "solar_open",
        "unlimited_ocr",
        "mistral4",
        "qwen4_exp",
        "mimo_v2_flash",
    }
)


def explicit_fields(arch: Architecture) -> list[str]:
    """Names of the fields a table record sets by hand (everything else is read)."""
    default = Architecture(arch.model_type)
    return [
        f.name
        for f in fields(arch)
        if f.name not in ("model_type", "notes") and getattr(arch, f.name) != getattr(default, f.name)
    ]


__all__ = [
    "ARCHITECTURES",
    "EXPERT_COUNT_NAMES",
    "SCORING",
    "VERIFIED",
    "Architecture",
    "explicit_fields",
    "get_path",
    "register_architecture",
]
