"""Which tensors of a GGUF model belong to its routed experts, and whether a pruning plan fits the file.

    >>> from reapkit.compress.gguf_file import open_gguf
    >>> gguf_model = open_gguf("model.gguf")
    >>> layers = moe_layers(gguf_model)                   # {decoder layer: MoeLayer}
    >>> layers[1].num_experts, sorted(layers[1].tensors)
    (16, ['blk.1.ffn_down_exps.weight', 'blk.1.ffn_gate_exps.weight', 'blk.1.ffn_gate_inp.weight', ...])
    >>> check_plan_fits(gguf_model, plan)                 # raises Mismatch naming what differs
    []

llama.cpp stores the experts of block N stacked, the expert axis first in numpy order, under the
names in `EXPERT_TENSORS`; the router (`ffn_gate_inp`) has one row per expert and the selection
bias (`exp_probs_b`) one entry. Block N of the GGUF is decoder layer N of the transformers model
it was converted from, so observations of that model map by index. A tensor of an MoE block that
looks like an expert tensor but is not in the table stops the prune, with its name: reapkit never
slices a layout it does not know.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from reapkit.errors import CheckpointError, Mismatch

#: Tensor stems (after `blk.N.`) with one entry per routed expert on their first numpy axis.
EXPERT_TENSORS = {
    "ffn_gate_inp": "router",
    "exp_probs_b": "selection bias",
    "ffn_gate_exps": "experts",
    "ffn_up_exps": "experts",
    "ffn_down_exps": "experts",
    "ffn_gate_up_exps": "experts",
}
#: Suffixes an expert tensor may carry (weights, biases, per-tensor scales of some quant formats).
EXPERT_SUFFIXES = ("weight", "bias", "scale")
#: Stems that mention experts but are not routed experts: shared experts and their gate.
SHARED = re.compile(r"_shexps?$|^ffn_gate_inp_shexp$")
#: Stems that look like routed-expert tensors (a tensor of an MoE block with one is refused unless known).
LOOKS_LIKE_EXPERTS = re.compile(r"exp")
BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
#: Per-expert tensors of old conversions (`blk.N.ffn_gate.E.weight`): refused, llama.cpp stacks them since 2024.
PER_EXPERT = re.compile(r"^ffn_(gate|up|down)\.\d+\.")

#: GGUF architecture -> transformers model types it is converted from (for the observations' check).
MODEL_TYPES = {
    "qwen2moe": ("qwen2_moe",),
    "qwen3moe": ("qwen3_moe",),
    "qwen3next": ("qwen3_next",),
    "qwen3vlmoe": ("qwen3_vl_moe", "qwen3_vl_moe_text"),
    "deepseek2": ("deepseek_v2", "deepseek_v3", "glm4_moe_lite", "kimi_k2"),
    "glm4moe": ("glm4_moe",),
    "llama": ("mixtral",),
    "olmoe": ("olmoe",),
    "gpt-oss": ("gpt_oss",),
    "granitemoe": ("granitemoe",),
    "phimoe": ("phimoe",),
    "minimax-m2": ("minimax_m2",),
    "ernie4_5-moe": ("ernie4_5_moe",),
    "hunyuan-moe": ("hunyuan_v1_moe",),
    "dots1": ("dots1",),
}
#: Router types whose values equal the transformers weights bit for bit (so the fingerprint can be compared).
EXACT_ROUTER_TYPES = ("F32", "BF16")


@dataclass
class MoeLayer:
    """One MoE block of the file: its expert count and `{tensor name: role}` of what gets sliced."""

    layer: int
    num_experts: int
    tensors: dict[str, str] = field(default_factory=dict)


def mtp_layers(model) -> list[int]:
    """Blocks holding multi-token-prediction layers (`{arch}.nextn_predict_layers`, the last blocks)."""
    blocks = int(model.value(f"{model.arch}.block_count", 0))
    nextn = int(model.value(f"{model.arch}.nextn_predict_layers", 0) or 0)
    return list(range(blocks - nextn, blocks))


def moe_layers(model) -> dict[int, MoeLayer]:
    """`{layer: MoeLayer}` of every block with a router, after checking every expert-like tensor is known."""
    routers = {}
    for name, tensor in model.tensors.items():
        match = BLOCK.match(name)
        if match and match[2] == "ffn_gate_inp.weight":
            routers[int(match[1])] = tensor.shape[0]
    layers = {layer: MoeLayer(layer, count) for layer, count in sorted(routers.items())}
    for name, tensor in model.tensors.items():
        match = BLOCK.match(name)
        if not match or int(match[1]) not in layers:
            continue
        moe = layers[int(match[1])]
        stem, _, suffix = match[2].rpartition(".")
        if PER_EXPERT.match(match[2]):
            raise CheckpointError(
                f"{name} stores one expert per tensor, a layout of old GGUF conversions that reapkit does not "
                "prune; convert the model again with a current llama.cpp (it stacks the experts: ffn_gate_exps)"
            )
        if stem in EXPERT_TENSORS and suffix in EXPERT_SUFFIXES:
            if not tensor.shape or tensor.shape[0] != moe.num_experts:
                raise CheckpointError(
                    f"{name} (shape {list(tensor.shape)}, {tensor.type.name}) does not have the {moe.num_experts} "
                    f"experts of block {moe.layer} on its first axis, so reapkit cannot tell which bytes belong to "
                    "which expert; this GGUF layout is not supported"
                )
            moe.tensors[name] = EXPERT_TENSORS[stem]
        elif LOOKS_LIKE_EXPERTS.search(stem) and not SHARED.search(stem):
            raise CheckpointError(
                f"reapkit does not recognise the expert tensor {name} of GGUF architecture {model.arch!r} "
                f"(it knows {', '.join(sorted(EXPERT_TENSORS))}), so it cannot prune this file; prune the "
                "transformers checkpoint (reapkit prune MODEL_DIR ...) and convert the result to GGUF"
            )
    for moe in layers.values():
        if "experts" not in moe.tensors.values():
            raise CheckpointError(
                f"block {moe.layer} has a router (blk.{moe.layer}.ffn_gate_inp.weight) but no stacked expert tensors "
                "reapkit recognises (ffn_gate_exps, ffn_up_exps, ffn_down_exps, ffn_gate_up_exps); it cannot prune this file"
            )
    return layers


def check_plan_fits(model, plan, layers: dict[int, MoeLayer] | None = None) -> list[str]:
    """Raise `Mismatch` unless `plan` was made for this file; return notes on what could not be checked.

    Checked: the MoE layers (GGUF block N = decoder layer N), each layer's expert count, and the
    fingerprint the observations carry (model type, layers, hidden size, expert counts and, where
    every router is stored as F32 or BF16, the hash of the router weights).
    """
    layers = moe_layers(model) if layers is None else layers
    mtp = set(mtp_layers(model))
    main = {layer: moe for layer, moe in layers.items() if layer not in mtp}
    counts = {layer: moe.num_experts for layer, moe in main.items()}
    planned = {layer: plan.num_experts[layer] for layer in plan.layers}
    fix = "observe the transformers model this GGUF was converted from (same weights) and plan from those observations"
    if sorted(counts) != sorted(planned):
        raise Mismatch(
            f"the observations cover MoE layers {sorted(planned)}, but {model.parts[0].name} has MoE blocks "
            f"{sorted(counts)}; {fix}"
        )
    differ = {layer: (planned[layer], counts[layer]) for layer in counts if planned[layer] != counts[layer]}
    if differ:
        raise Mismatch(
            f"expert counts differ (layer: observed, in the GGUF): {differ}; these observations are of another model; {fix}"
        )
    expected = (plan.provenance or {}).get("observations")
    if not expected:
        return ["router fingerprint: not checked (the plan carries no observations fingerprint)"]
    found, notes = gguf_fingerprint(model, main), []
    if found["router_sha256"] is None:
        notes.append("router fingerprint: not checked (a router is stored quantised or as F16, not bit-exact)")
    differences = {
        key: (expected.get(key), value)
        for key, value in found.items()
        if value is not None and key in expected and not _same(key, expected[key], value)
    }
    if differences:
        raise Mismatch(
            f"these observations were recorded on a different model (differences, observed vs this GGUF: "
            f"{differences}); {fix}"
        )
    return notes


def _same(key, expected, found) -> bool:
    if key == "model_type":
        return expected in found
    return expected == found


def gguf_fingerprint(model, layers: dict[int, MoeLayer]) -> dict:
    """What `reapkit.observe.observations.fingerprint` records, computed from the GGUF file.

    `model_type` is the tuple of types the architecture comes from (None when unknown), and
    `router_sha256` is None unless every router is stored bit-exact (F32, BF16).
    """
    import numpy as np

    arch = model.arch
    routers = {layer: model.tensors[f"blk.{layer}.ffn_gate_inp.weight"] for layer in sorted(layers)}
    digest = None
    if all(t.type.name in EXACT_ROUTER_TYPES for t in routers.values()):
        digest = hashlib.sha256()
        for layer, tensor in routers.items():  # the same bytes fingerprint() hashes: "index:shape", float32 weights
            digest.update(f"{layer}:{tuple(tensor.shape)}".encode())
            digest.update(np.ascontiguousarray(model.read(tensor.name), dtype=np.float32).tobytes())
        digest = digest.hexdigest()[:20]
    blocks = model.value(f"{arch}.block_count")
    hidden = model.value(f"{arch}.embedding_length")
    return {
        "model_type": MODEL_TYPES.get(arch),
        "num_hidden_layers": None if blocks is None else int(blocks) - len(mtp_layers(model)),
        "hidden_size": None if hidden is None else int(hidden),
        "num_experts": [layers[layer].num_experts for layer in sorted(layers)],
        "router_sha256": digest,
    }
