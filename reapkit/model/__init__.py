"""The model: one record per MoE architecture, discovery from the module tree, loading, hooks, the demo.

    >>> from reapkit.model import architecture_for, moe_layers
    >>> architecture_for(model).model_type, len(moe_layers(model))
    ('qwen3_moe', 4)

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "records": ["Architecture", "ARCHITECTURES", "VERIFIED", "register_architecture"],
    "discover": ["architecture_for", "UnknownArchitectureError"],
    "layer": ["MoELayer", "moe_layers"],
    "loading": ["load_model", "load_tokenizer"],
    "checkpoint": ["Checkpoint"],
    "demo": ["DEMO", "DEMO_PATH", "resolve_name"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
