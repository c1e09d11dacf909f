"""GGUF files of tiny transformers models, written by the `gguf` package with llama.cpp's tensor names.

    >>> paths = write_gguf(tmp / "m.gguf", tiny_model("qwen3_moe"), expert_type="Q8_0")   # [Path(...)]
    >>> paths = write_gguf(tmp / "m.gguf", model, split_tensors=10)       # m-00001-of-0000N.gguf, ...

The experts go in stacked, experts first (numpy order), in `expert_type`; the router, the selection
bias and everything else in F32. Types `gguf.quants.quantize` cannot produce (the K-quants, the
IQ types) are filled with random blocks of the right size (`random_blocks`): byte-exact slicing does
not care what the bytes mean, and `gguf.quants.dequantize` still reads them.
"""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

#: transformers names -> llama.cpp names, for the tensors of the tiny models used here
RENAMES = [
    (r"^model\.embed_tokens\.weight$", "token_embd.weight"),
    (r"^model\.norm\.weight$", "output_norm.weight"),
    (r"^lm_head\.weight$", "output.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"blk.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"blk.\1.ffn_norm.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.weight$", r"blk.\1.attn_\2.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$", r"blk.\1.attn_output.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.(\w+)\.weight$", r"blk.\1.attn_\2.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.gate\.weight$", r"blk.\1.ffn_gate_inp.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.gate\.e_score_correction_bias$", r"blk.\1.exp_probs_b.bias"),
    (r"^model\.layers\.(\d+)\.mlp\.shared_experts?\.(gate|up|down)_proj\.weight$", r"blk.\1.ffn_\2_shexp.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$", r"blk.\1.ffn_\2.weight"),
]
ARCHS = {"qwen3_moe": "qwen3moe", "deepseek_v3": "deepseek2"}


def gguf_name(name: str) -> str:
    for pattern, replacement in RENAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    raise KeyError(f"no GGUF name for {name}")


def random_blocks(shape, qtype, seed=0) -> np.ndarray:
    """Random bytes in the byte shape of a `qtype` tensor of numpy-order `shape` (rows of whole blocks)."""
    byte_shape = gguf.quants.quant_shape_to_byte_shape(tuple(shape), qtype)
    return np.random.default_rng(seed).integers(0, 256, size=byte_shape, dtype=np.uint8)


def encode(values: np.ndarray, qtype, seed=0) -> np.ndarray:
    """`values` stored as `qtype`: quantised by gguf where it can, random blocks of that shape where not."""
    if qtype == T.F32:
        return values.astype(np.float32)
    if qtype == T.F16:
        return values.astype(np.float16)
    try:
        return gguf.quants.quantize(values.astype(np.float32), qtype)
    except NotImplementedError:
        return random_blocks(values.shape, qtype, seed)


def tensors_of(model) -> dict[str, np.ndarray]:
    """`{gguf name: float32 array}` of a tiny transformers model, experts stacked and split gate / up."""
    out = {}
    for name, tensor in model.state_dict().items():
        value = tensor.detach().float().numpy()
        match = re.match(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$", name)
        if match and match[2] == "gate_up_proj":
            half = value.shape[1] // 2
            out[f"blk.{match[1]}.ffn_gate_exps.weight"] = value[:, :half]
            out[f"blk.{match[1]}.ffn_up_exps.weight"] = value[:, half:]
        elif match:
            out[f"blk.{match[1]}.ffn_down_exps.weight"] = value
        else:
            out[gguf_name(name)] = value
    return out


def write_gguf(
    path,
    model,
    *,
    expert_type: str = "F32",
    split_tensors: int = 0,
    extra_tensors: dict | None = None,
    metadata: dict | None = None,
    arrays: dict | None = None,
    nextn: int = 0,
) -> list[Path]:
    """Write `model` as GGUF at `path` (split every `split_tensors` tensors); return the files written.

    `extra_tensors` {name: float32 array} are added as F32; `metadata` {key: uint32 value} overrides;
    `arrays` {key: list} adds array entries;
    `nextn` copies the last block as that many multi-token-prediction blocks (`nextn_predict_layers`).
    """
    config = model.config.get_text_config()
    arch = ARCHS[config.model_type]
    qtype = T[expert_type]
    tensors = tensors_of(model)
    blocks = config.num_hidden_layers
    for extra in range(nextn):  # an MTP block: a copy of the last block under the next index
        last = blocks - 1
        tensors |= {
            n.replace(f"blk.{last}.", f"blk.{blocks + extra}.", 1): v
            for n, v in list(tensors.items())
            if n.startswith(f"blk.{last}.")
        }
    tensors |= extra_tensors or {}
    writer = gguf.GGUFWriter(path, arch, split_max_tensors=split_tensors)
    experts = getattr(config, "num_experts", None) or config.n_routed_experts
    values = {
        "block_count": blocks + nextn,
        "embedding_length": config.hidden_size,
        "context_length": config.max_position_embeddings,
        "expert_count": experts,
        "expert_used_count": config.num_experts_per_tok,
        "nextn_predict_layers": nextn,
    }
    for key, value in values.items():
        if key != "nextn_predict_layers" or nextn:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_array(f"{arch}.per_block_ids", list(range(blocks + nextn)))
    writer.add_string("general.name", "tiny " + config.model_type)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(config.vocab_size)])
    writer.add_array("tokenizer.ggml.scores", [float(-i) for i in range(config.vocab_size)])
    for key, value in (metadata or {}).items():
        writer.add_uint32(key, value)
    for key, value in (arrays or {}).items():
        writer.add_array(key, value)
    for index, (name, value) in enumerate(tensors.items()):
        stacked = re.search(r"\.ffn_(gate|up|down)_exps\.weight$", name)
        data = encode(value, qtype, seed=index) if stacked else value.astype(np.float32)
        writer.add_tensor(name, data, raw_dtype=qtype if stacked and data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    paths = writer.format_shard_names(Path(path))
    writer.close()
    return paths


def read_tensors(paths) -> dict[str, tuple]:
    """`{name: (type, numpy-order shape, raw bytes)}` of every tensor in GGUF files `paths` (read by gguf)."""
    out = {}
    for path in paths:
        reader = gguf.GGUFReader(path)
        for t in reader.tensors:
            out[t.name] = (t.tensor_type, tuple(int(d) for d in reversed(t.shape.tolist())), t.data.tobytes())
    return out


def read_metadata(paths) -> dict:
    """`{key: value}` of every metadata entry of GGUF files `paths`, keyed `(part index, key)`."""
    out = {}
    for index, path in enumerate(paths):
        for key, field in gguf.GGUFReader(path).fields.items():
            if not key.startswith("GGUF."):
                out[index, key] = (tuple(int(t) for t in field.types), field.contents())
    return out


def dequantized(paths, name) -> np.ndarray:
    """Tensor `name` of GGUF files `paths` as float32, dequantised with gguf's own functions."""
    for path in paths:
        for t in gguf.GGUFReader(path).tensors:
            if t.name == name:
                return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    raise KeyError(name)
