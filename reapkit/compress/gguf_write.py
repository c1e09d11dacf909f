"""Writing one GGUF file from parts of others: the header, then each tensor's bytes copied by byte range.

How `reapkit.compress.gguf` uses it (`part`: a part of an open source file, `src_fd` its file
descriptor, `tmp` the output's temporary name)::

    header = Header(version=3, alignment=32, endian="<")
    header.keys.append(part.raw(part.entries["general.name"]))             # metadata as stored, byte for byte
    header.keys.append(encoded("qwen3moe.expert_count", 12, GGUFValueType.UINT32, "<"))
    header.tensors.append(("blk.1.ffn_up_exps.weight", (12, 32, 64), GGMLQuantizationType.Q8_0, nbytes))
    with open(tmp, "wb") as f:
        write_gguf(f, header, [[(src_fd, offset, length), ...], ...])     # one list of ranges per tensor

Metadata that is not changed is copied as the source stores it (so every key, type and string
survives exactly); changed keys are encoded again with their original type. Tensor data never
passes through Python objects larger than a chunk: `os.copy_file_range` copies inside the kernel,
and where the file system cannot, `pread` / `write` in chunks of `CHUNK_BYTES`.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field

#: Bytes read at once when the kernel cannot copy between the two files itself.
CHUNK_BYTES = 16 * 2**20
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
_SCALARS = {  # GGUFValueType value -> struct format
    0: "B",  # UINT8
    1: "b",  # INT8
    2: "H",  # UINT16
    3: "h",  # INT16
    4: "I",  # UINT32
    5: "i",  # INT32
    6: "f",  # FLOAT32
    7: "?",  # BOOL
    10: "Q",  # UINT64
    11: "q",  # INT64
    12: "d",  # FLOAT64
}
_STRING, _ARRAY = 8, 9


@dataclass
class Header:
    """What goes before the tensor data: metadata entries (encoded bytes) and tensor infos."""

    version: int
    alignment: int
    endian: str  # "<" or ">" (struct byte order)
    keys: list[bytes] = field(default_factory=list)
    tensors: list[tuple] = field(default_factory=list)  # (name, numpy-order shape, GGMLQuantizationType, nbytes)

    def encode(self) -> bytes:
        e = self.endian
        out = bytearray(b"GGUF" + struct.pack(f"{e}IQQ", self.version, len(self.tensors), len(self.keys)))
        for key in self.keys:
            out += key
        offset = 0
        for name, shape, qtype, nbytes in self.tensors:
            out += _string(name.encode(), e) + struct.pack(f"{e}I", len(shape))
            out += b"".join(struct.pack(f"{e}Q", d) for d in reversed(shape))  # GGUF stores ne: fastest axis first
            out += struct.pack(f"{e}IQ", int(qtype), offset)
            offset += padded(nbytes, self.alignment)
        return bytes(out)


def padded(n: int, alignment: int) -> int:
    """`n` rounded up to a multiple of `alignment`: `padded(33, 32) == 64`."""
    return (n + alignment - 1) // alignment * alignment


def _string(data: bytes, e: str) -> bytes:
    return struct.pack(f"{e}Q", len(data)) + data


def encoded(key: str, value, vtype: int, e: str, sub_type: int | None = None) -> bytes:
    """A metadata entry of type `vtype` (a `gguf.GGUFValueType`); arrays of scalars or strings take `sub_type`."""
    return _string(key.encode(), e) + struct.pack(f"{e}I", int(vtype)) + _value(value, int(vtype), e, sub_type)


def _value(value, vtype: int, e: str, sub_type) -> bytes:
    if vtype in _SCALARS:
        return struct.pack(e + _SCALARS[vtype], value)
    if vtype == _STRING:
        return _string(value.encode() if isinstance(value, str) else bytes(value), e)
    if vtype == _ARRAY and sub_type is not None and int(sub_type) != _ARRAY:
        head = struct.pack(f"{e}IQ", int(sub_type), len(value))
        return head + b"".join(_value(v, int(sub_type), e, None) for v in value)
    raise ValueError(f"cannot encode a GGUF value of type {vtype} (sub-type {sub_type})")


def write_gguf(f, header: Header, sources, progress=None) -> int:
    """Write `header` and the tensors' bytes to the open binary file `f`; return the bytes written.

    `sources[i]` lists the `(fd, offset, length)` byte ranges whose concatenation is tensor i.
    """
    f.write(header.encode())
    f.flush()
    fd = f.fileno()
    position = f.tell()
    position += _pad(fd, position, header.alignment)
    for (name, _, _, nbytes), ranges in zip(header.tensors, sources, strict=True):
        written = 0
        for src, offset, length in ranges:
            copy_range(src, fd, offset, length)
            written += length
            if progress is not None:
                progress(length)
        if written != nbytes:
            raise RuntimeError(f"internal error: wrote {written} bytes of {name}, which has {nbytes}")
        position += written
        position += _pad(fd, position, header.alignment)
    return position


def _pad(fd: int, position: int, alignment: int) -> int:
    gap = padded(position, alignment) - position
    if gap:
        _write_all(fd, b"\0" * gap)
    return gap


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Append bytes `offset .. offset + length` of file descriptor `src` to `dst` (at its current position)."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src, dst, length - done, offset + done)
            if n == 0:
                raise OSError(errno.EIO, f"the source ended {length - done} bytes early (was it truncated?)")
            done += n
        return
    except OSError as error:
        if error.errno not in _NO_KERNEL_COPY:
            raise
    while done < length:  # the kernel cannot copy between these two files: through a bounded buffer
        chunk = os.pread(src, min(CHUNK_BYTES, length - done), offset + done)
        if not chunk:
            raise OSError(errno.EIO, f"the source ended {length - done} bytes early (was it truncated?)")
        _write_all(dst, chunk)
        done += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
