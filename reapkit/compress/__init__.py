"""Compressing: apply a plan in memory (mask, remove, merge) or to a checkpoint on disk, and save.

    >>> from reapkit.compress import remove_experts
    >>> remove_experts(model, plan).config.num_experts      # in place; mask_experts(model, plan) only masks
    8

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "prune": ["mask_experts", "remove_experts", "save_pruned", "load_pruned", "prune_checkpoint"],
    "merge": ["apply_merge", "merge_experts"],
    "stream": ["stream_prune"],
    "gguf": ["prune_gguf"],
    "recover": ["recover", "save_recovered", "recover_checkpoint"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
