"""A GGUF model on disk, one file or split in parts: its metadata and where each tensor's bytes lie.

    >>> gguf_model = open_gguf("split-00001-of-00002.gguf")      # any part names them all
    >>> gguf_model.arch, len(gguf_model.parts), gguf_model.value("qwen3moe.expert_count")
    ('qwen3moe', 2, 16)
    >>> gguf_model.tensors["blk.1.ffn_gate_inp.weight"].shape   # numpy order: experts first
    (16, 128)

Only the headers are read, in one pass, keeping for each metadata entry its type, its place in
the file and (for scalars, strings and short arrays) its value; a vocabulary of 150,000 strings is
skipped over, not turned into 150,000 objects. (`gguf.GGUFReader` builds one numpy view per array
item: 3.3 s and 60 MB for a 32,000-token vocabulary here, which this reader does not pay.) Tensor
bytes are read on request with plain file reads. A part that is missing, truncated or not GGUF at
all is refused with one line naming it.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reapkit.errors import CheckpointError, MissingInput

#: llama.cpp's name for part `no` of `count`: `PREFIX-00001-of-00003.gguf`
SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
#: Arrays up to this length are decoded (per-block settings); longer ones (vocabularies) are only skipped.
DECODED_ARRAY = 65536
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


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
class Entry:
    """One metadata entry: value type (and item type of an array), bytes `start .. end` in its part, value."""

    key: str
    vtype: int
    sub_type: int | None
    start: int
    end: int
    value: object  # None for arrays longer than DECODED_ARRAY
    count: int = 1  # items of an array


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
class Part:
    """The header of one file: GGUF version, byte order, alignment, metadata entries in file order."""

    path: Path
    version: int
    endian: str  # struct prefix, "<" or ">"
    alignment: int
    entries: dict[str, Entry] = field(default_factory=dict)

    def raw(self, entry: Entry) -> bytes:
        """An entry's bytes exactly as stored (key, type and value)."""
        with open(self.path, "rb") as f:
            f.seek(entry.start)
            return f.read(entry.end - entry.start)


@dataclass
class GgufModel:
    """The parts of a GGUF model, their headers, and every tensor by name."""

    parts: list[Path]
    headers: list[Part] = field(default_factory=list)
    tensors: dict[str, GgufTensor] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.value("general.architecture")

    def value(self, key: str, default=None):
        """A metadata value (from whichever part holds it; llama.cpp keeps them in the first)."""
        for header in self.headers:
            if key in header.entries:
                return header.entries[key].value
        return default

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` as float32 (dequantised with gguf's functions where quantised); small tensors only."""
        from gguf import GGMLQuantizationType as T
        from gguf.quants import dequantize, quant_shape_to_byte_shape

        tensor = self.tensors[name]
        raw = np.fromfile(self.parts[tensor.part], dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset)
        if self.headers[tensor.part].endian == ">" and tensor.type in (T.F32, T.F16):
            raw = raw.view(">f4" if tensor.type == T.F32 else ">f2").astype(np.float32).view(np.uint8)
            return raw.view(np.float32).reshape(tensor.shape)
        if tensor.type == T.F32:
            return raw.view(np.float32).reshape(tensor.shape)
        return dequantize(raw.reshape(quant_shape_to_byte_shape(tensor.shape, tensor.type)), tensor.type)


def open_gguf(path) -> GgufModel:
    """Read the headers of GGUF model `path` (one file, or any part of a split set) and check its parts."""
    paths = part_paths(path)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        what = "GGUF file" if len(paths) == 1 else f"part(s) of the split GGUF {Path(path).name}"
        raise MissingInput(
            f"{what} missing: {', '.join(missing)}; give an existing .gguf file (for a split model, "
            "keep every -0000N-of-0000M.gguf part in one folder)"
        )
    model = GgufModel(paths)
    for index, path in enumerate(paths):
        header, tensors = _read_part(path, index)
        model.headers.append(header)
        if len(paths) > 1:
            number, count = (header.entries.get(k) for k in ("split.no", "split.count"))
            if number is None or count is None or (number.value, count.value) != (index, len(paths)):
                raise CheckpointError(
                    f"{path} does not say it is part {index + 1} of {len(paths)} (split.no / split.count); "
                    "keep the parts of one split model together, as llama.cpp's gguf-split wrote them"
                )
        for tensor in tensors:
            if tensor.name in model.tensors:
                raise CheckpointError(f"tensor {tensor.name} is stored twice (in {path}); the GGUF set is corrupt")
            model.tensors[tensor.name] = tensor
    if not isinstance(model.arch, str):
        raise CheckpointError(f"{paths[0]} has no general.architecture; it is not a GGUF model file")
    return model


class _Truncated(Exception):
    pass


def _read_part(path: Path, index: int) -> tuple[Part, list[GgufTensor]]:
    """Parse one file's header: metadata entries, tensor infos; check every tensor lies inside the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise CheckpointError(f"{path} is not a GGUF file (it does not start with the bytes GGUF); check the path")
        reader = _Reader(f, size)
        try:
            version = reader.unpack("<I")
            endian = ">" if version & 0xFFFF == 0 else "<"  # a file of the other byte order
            version = struct.unpack(endian + "I", struct.pack("<I", version))[0]
            reader.endian = endian
            tensor_count, key_count = reader.unpack("Q"), reader.unpack("Q")
            if tensor_count * 24 + key_count * 12 > size:  # a tensor info and an entry take at least that
                raise CheckpointError(
                    f"{path} is truncated or corrupt (its header announces {tensor_count} tensors and {key_count} "
                    f"metadata keys, more than {size:,} bytes hold); download it again"
                )
            part = Part(path, version, endian, 32)
            for _ in range(key_count):
                entry = reader.entry()
                part.entries[entry.key] = entry
            alignment = part.entries.get("general.alignment")
            part.alignment = alignment.value if alignment is not None else 32
            if not isinstance(part.alignment, int) or part.alignment <= 0 or part.alignment & (part.alignment - 1):
                raise CheckpointError(
                    f"{path} has general.alignment {part.alignment}, not a power of two; it is corrupt"
                )
            infos = []
            for _ in range(tensor_count):
                name = reader.string().decode("utf-8", "replace")
                dims = [reader.unpack("Q") for _ in range(reader.unpack("I"))]
                infos.append((name, dims, reader.unpack("I"), reader.unpack("Q")))
            start = -(-reader.position // part.alignment) * part.alignment
        except _Truncated:
            raise CheckpointError(
                f"{path} is truncated or corrupt (its header ends before the byte {reader.position:,} it needs; "
                f"the file has {size:,}); download it again"
            ) from None
    tensors = []
    for name, dims, type_id, offset in infos:
        try:
            qtype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise CheckpointError(
                f"tensor {name} of {path} has GGML type {type_id}, which gguf {_gguf_version()} does not know; "
                "the file is corrupt or newer than reapkit's gguf package"
            ) from None
        elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
        nbytes = elements // block * type_size
        if start + offset + nbytes > size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name} ends at byte {start + offset + nbytes:,} but the file has "
                f"{size:,} bytes; download it again"
            )
        tensors.append(GgufTensor(name, qtype, tuple(reversed(dims)), index, start + offset, nbytes))
    return part, tensors


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


class _Reader:
    """Sequential reads of a GGUF header in a given byte order; raises _Truncated at the end of the file."""

    def __init__(self, f, size: int):
        self.f, self.size, self.position, self.endian = f, size, 4, "<"

    def read(self, n: int) -> bytes:
        if self.position + n > self.size:
            raise _Truncated
        data = self.f.read(n)
        self.position += n
        return data

    def unpack(self, fmt: str):
        fmt = fmt if fmt[0] in "<>" else self.endian + fmt
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.read(self.unpack("Q"))

    def skip(self, n: int) -> None:
        if self.position + n > self.size:
            raise _Truncated
        self.f.seek(n, 1)
        self.position += n

    def value(self, vtype: int, keep: bool):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            if not keep:
                return self.skip(self.unpack("Q"))
            return self.string().decode("utf-8", "replace")
        raise CheckpointError(f"metadata value type {vtype} at byte {self.position:,} is not GGUF; the file is corrupt")

    def entry(self) -> Entry:
        start = self.position
        key = self.string().decode("utf-8", "replace")
        vtype = self.unpack("I")
        if vtype != _ARRAY:
            value = self.value(vtype, True)
            return Entry(key, vtype, None, start, self.position, value)
        sub_type, count = self.unpack("I"), self.unpack("Q")
        if sub_type == _ARRAY:
            raise CheckpointError(f"metadata key {key} is an array of arrays, which reapkit does not copy")
        keep = count <= DECODED_ARRAY
        values = None
        if keep or sub_type == _STRING:
            values = [self.value(sub_type, keep) for _ in range(count)]
        elif sub_type in _SCALARS:
            self.skip(count * struct.calcsize("<" + _SCALARS[sub_type]))
        else:
            self._bad(sub_type)
        return Entry(key, vtype, sub_type, start, self.position, values if keep else None, count)

    def _bad(self, vtype):
        raise CheckpointError(f"metadata value type {vtype} at byte {self.position:,} is not GGUF; the file is corrupt")
