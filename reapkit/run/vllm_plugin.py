"""vLLM plugin: serve reapkit's non-uniform checkpoints, a different number of experts in each MoE layer.

    $ vllm-env/bin/pip install --no-deps -e /path/to/reapkit     # into vLLM's own environment
    $ vllm-env/bin/python -m vllm.entrypoints.openai.api_server --model pruned-global

vLLM calls `register` in each of its processes through the `vllm.general_plugins` entry point
that reapkit's `pyproject.toml` declares. It registers, for each family in
`reapkit.compress.nonuniform.FAMILIES` (Qwen3-MoE, DeepSeek-V2/V3, GLM-4.5-4.7, GLM-4.7-Flash), the
architecture `ReapkitNonUniform<Architecture>` that such a checkpoint's `config.json` names; the
model class (`reapkit.run.vllm_models`) is imported only when a checkpoint asks for it.

How each layer gets its own count: vLLM's model classes build every MoE layer from the config's
expert count (`num_experts`, `n_routed_experts`), inside constructors that receive the layer's
module name as `prefix` (`model.layers.7.mlp`). While the model is built, `per_layer_experts`
makes the config answer those keys with the count of the layer whose module is being built (found
from the nearest `prefix` on the call stack) and the unpruned count everywhere else, such as the
weight loader's expert table. Nothing in vLLM is changed; afterwards the config is as it was.
This module imports only the standard library (and vLLM inside `register`).
"""

from __future__ import annotations

import contextlib
import re
import sys

from reapkit.compress.nonuniform import FAMILIES, PREFIX

#: The layer index in a module name: `model.layers.7.mlp.experts` -> 7.
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")
#: Config keys that hold an MoE layer's expert count (as in reapkit.model.records.EXPERT_COUNT_NAMES).
COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
#: How far up the call stack a constructor's `prefix` is looked for.
SEARCH_FRAMES = 12


def architectures() -> dict[str, str]:
    """`{architecture in config.json: "module:Class"}` of every model class the plugin registers."""
    return {PREFIX + arch: f"reapkit.run.vllm_models:{PREFIX + arch}" for arch in sorted(set(FAMILIES.values()))}


def register() -> None:
    """The `vllm.general_plugins` entry point: register the non-uniform model classes (lazily) with vLLM."""
    from vllm import ModelRegistry

    for name, target in architectures().items():
        ModelRegistry.register_model(name, target)


def layer_being_built(frame) -> int | None:
    """The decoder layer of the nearest constructor up the stack from `frame` that has a `prefix`; None if it has none."""
    for _ in range(SEARCH_FRAMES):
        if frame is None:
            return None
        prefix = frame.f_locals.get("prefix")
        if isinstance(prefix, str):
            match = LAYER.search(prefix)
            return int(match[1]) if match else None
        frame = frame.f_back
    return None


@contextlib.contextmanager
def per_layer_experts(config, counts: dict[int, int], keys=COUNT_KEYS):
    """While inside, `config.<key>` read by code building layer L gives `counts[L]` (other reads: as stored).

    Inside vLLM's model loading (``config`` and ``vllm_config`` are vLLM's)::

        with per_layer_experts(config, {1: 12, 2: 14}):
            model = ModelClass(vllm_config=vllm_config)   # layer 1 gets 12 experts, layer 2 gets 14

    The config's class is swapped for a subclass for the duration, and swapped back after (so the
    config pickles and compares as before).
    """
    original = type(config)

    def __getattribute__(self, name):
        value = original.__getattribute__(self, name)
        if name in keys:
            layer = layer_being_built(sys._getframe(1))
            if layer in counts:
                return counts[layer]
        return value

    config.__class__ = type(original.__name__, (original,), {"__getattribute__": __getattribute__})
    try:
        yield config
    finally:
        config.__class__ = original
