"""A GGUF model on disk, one file or split in parts: its metadata and where each tensor's bytes lie.

    >>> model = open_gguf("GLM-4.7-Flash-Q4_K_M-00001-of-00002.gguf")   # any part names them all
    >>> model.arch, len(model.parts), model.value("glm4moe.expert_count")     # doctest: +SKIP
    ('deepseek2', 2, 64)
    >>> model.tensors["blk.1.ffn_gate_inp.weight"].shape                     # numpy order: experts first
    (64, 2048)

Only the headers are parsed (with the `gguf` package's `GGUFReader`); tensor bytes are read on
request with plain file reads, so opening a file of any size costs a few megabytes. A part that
is missing, truncated or not GGUF at all is refused with a `CheckpointError` naming it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reapkit.errors import CheckpointError, MissingInput

#: llama.cpp's name for part `no` of `count`: `PREFIX-00001-of-00003.gguf`
SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def split_name(prefix: str, no: int, count: int) -> str:
    """`split_name("model", 1, 3) == "model-00001-of-00003.gguf"` (llama.cpp's naming of split files)."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def part_paths(path) -> list[Path]:
    """Every part of the GGUF model `path` names: itself, or all parts of its split set."""
    path = Path(path)
    match = SPLIT_NAME.match(path.name)
    if match is None:
        return [path]
    count = int(match["count"])
    return [path.with_name(split_name(match["prefix"], no, count)) for no in range(1, count + 1)]


@dataclass(frozen=True)
class GgufTensor:
    """One stored tensor: its GGML type, numpy-order shape, part, absolute byte offset and size."""

    name: str
    type: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    part: int
    offset: int
    nbytes: int


@dataclass
class GgufModel:
    """The parts of a GGUF model and their parsed headers (`readers`, one `gguf.GGUFReader` per part)."""

    parts: list[Path]
    readers: list
    tensors: dict[str, GgufTensor] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.value("general.architecture")

    def value(self, key: str, default=None):
        """A metadata value (from whichever part holds it; llama.cpp keeps them in the first)."""
        for reader in self.readers:
            found = reader.get_field(key)
            if found is not None:
                return found.contents()
        return default

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` as a numpy array: float types as floats, quantised types dequantised (small tensors only)."""
        from gguf import GGMLQuantizationType as T
        from gguf.quants import dequantize

        tensor = self.tensors[name]
        raw = np.fromfile(self.parts[tensor.part], dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset)
        if tensor.type == T.F32:
            return raw.view(np.float32).reshape(tensor.shape)
        if tensor.type == T.F16:
            return raw.view(np.float16).reshape(tensor.shape)
        from gguf.quants import quant_shape_to_byte_shape

        return dequantize(raw.reshape(quant_shape_to_byte_shape(tensor.shape, tensor.type)), tensor.type)


def open_gguf(path) -> GgufModel:
    """Parse the headers of GGUF model `path` (one file, or any part of a split set) and check its parts."""
    paths = part_paths(path)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        what = "GGUF file" if len(paths) == 1 else f"part(s) of the split GGUF {Path(path).name}"
        raise MissingInput(
            f"{what} missing: {', '.join(missing)}; give an existing .gguf file (for a split model, "
            "keep every -0000N-of-0000M.gguf part in one folder)"
        )
    model = GgufModel(paths, [])
    for index, part in enumerate(paths):
        reader = _reader(part)
        model.readers.append(reader)
        if len(paths) > 1:
            number, count = (reader.get_field(k) for k in SPLIT_KEYS[:2])
            if number is None or count is None or (number.contents(), count.contents()) != (index, len(paths)):
                raise CheckpointError(
                    f"{part} does not say it is part {index + 1} of {len(paths)} (split.no / split.count); "
                    "keep the parts of one split model together, as llama.cpp's gguf-split wrote them"
                )
        size = part.stat().st_size
        for tensor in reader.tensors:
            if tensor.name in model.tensors:
                raise CheckpointError(f"tensor {tensor.name} is stored twice (in {part}); the GGUF set is corrupt")
            if tensor.data_offset + tensor.n_bytes > size:
                raise CheckpointError(
                    f"{part} is truncated: tensor {tensor.name} ends at byte {tensor.data_offset + tensor.n_bytes:,} "
                    f"but the file has {size:,} bytes; download it again"
                )
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            model.tensors[tensor.name] = GgufTensor(
                tensor.name, tensor.tensor_type, shape, index, int(tensor.data_offset), int(tensor.n_bytes)
            )
    if model.value("general.architecture") is None:
        raise CheckpointError(f"{paths[0]} has no general.architecture; it is not a GGUF model file")
    return model


def _reader(path: Path):
    """`gguf.GGUFReader(path)`, with a corrupt or truncated header reported as one line."""
    from gguf import GGUFReader

    with open(path, "rb") as f:
        head = f.read(24)
    if head[:4] != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with the bytes GGUF); check the path")
    size = os.path.getsize(path)
    tensor_count, kv_count = (int.from_bytes(head[8:16], "little"), int.from_bytes(head[16:24], "little"))
    if len(head) < 24 or tensor_count * 24 + kv_count * 12 > size:  # a tensor info and a key-value take at least that
        raise CheckpointError(
            f"{path} is truncated or corrupt (its header announces {tensor_count} tensors and {kv_count} metadata "
            f"keys, more than {size:,} bytes can hold); download it again"
        )
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, TypeError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt (reading its header stopped at {type(error).__name__}: {error}); "
            "download it again"
        ) from None
