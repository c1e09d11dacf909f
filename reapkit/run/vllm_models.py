"""vLLM model classes for reapkit's non-uniform checkpoints; vLLM imports them through `reapkit.run.vllm_plugin`.

With vLLM installed (not here)::

    from reapkit.run.vllm_models import ReapkitNonUniformQwen3MoeForCausalLM   # made on first use

Each class is vLLM's own class of the family with `NonUniformExperts` in front: the model is built
inside `per_layer_experts` (each MoE layer with the count `config.json`'s `reapkit_non_uniform`
section gives it), and the fused expert tensors of the checkpoint are handed to vLLM's loader in
the per-expert layout it reads from hub checkpoints (a tied embedding, which safetensors stores once
and may name `lm_head.weight`, as the input embedding too). Importing this module needs vLLM only when a
class is asked for.
"""

from __future__ import annotations

from contextlib import ExitStack
from importlib import import_module

from reapkit.compress.nonuniform import PREFIX, experts_per_layer, per_expert_tensors
from reapkit.run.vllm_plugin import per_layer_experts

#: The vLLM module that defines each architecture (vLLM 0.32's layout).
VLLM_MODULES = {
    "Qwen3MoeForCausalLM": "vllm.model_executor.models.qwen3_moe",
    "DeepseekV2ForCausalLM": "vllm.model_executor.models.deepseek_v2",
    "DeepseekV3ForCausalLM": "vllm.model_executor.models.deepseek_v2",
    "Glm4MoeForCausalLM": "vllm.model_executor.models.glm4_moe",
    "Glm4MoeLiteForCausalLM": "vllm.model_executor.models.glm4_moe_lite",
}


class NonUniformExperts:
    """Mixin before a vLLM model class: per-layer expert counts when building, fused experts split when loading."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        model_config = vllm_config.model_config
        counts = experts_per_layer(model_config.hf_config)
        configs = {id(c): c for c in (model_config.hf_config, model_config.hf_text_config)}
        # tied embeddings that safetensors stored once, as lm_head.weight: vLLM then unties them (and re-ties after)
        self._lm_head_is_embedding = getattr(model_config, "word_embeddings_untied_by_checkpoint", False)
        with ExitStack() as stack:
            for config in configs.values():
                stack.enter_context(per_layer_experts(config, counts))
            super().__init__(vllm_config=vllm_config, prefix=prefix)

    def load_weights(self, weights):
        return super().load_weights(self._per_expert(weights))

    def _per_expert(self, weights):
        for name, tensor in weights:
            if name == "lm_head.weight" and self._lm_head_is_embedding:
                yield "model.embed_tokens.weight", tensor
            yield from per_expert_tensors(name, tensor)


def __getattr__(name: str):
    """`ReapkitNonUniform<Architecture>`: vLLM's class of that architecture with `NonUniformExperts` in front."""
    original = name.removeprefix(PREFIX)
    if not name.startswith(PREFIX) or original not in VLLM_MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    base = getattr(import_module(VLLM_MODULES[original]), original)
    cls = type(name, (NonUniformExperts, base), {"__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls
