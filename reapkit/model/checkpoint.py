"""The model on disk: a local checkpoint folder of safetensors shards, read tensor by tensor.

    >>> checkpoint = Checkpoint.open("models/Qwen3-30B-A3B")      # headers only: names, shapes, shards
    >>> checkpoint.tensors["model.layers.0.mlp.gate.weight"].shape
    (128, 2048)
    >>> model = checkpoint.meta_model()           # the module tree from config.json, no weights
    >>> names = Renamer(model)                    # stored names -> the model's, as transformers loads them
    >>> with checkpoint.reading() as read:
    ...     load_tensors(model, names, read, ["model.layers.0.mlp.gate.weight"], device="cpu")

A checkpoint is what `save_pretrained` writes: `config.json` and either `model.safetensors` or
shards listed by `model.safetensors.index.json`. Opening it reads every shard's header and checks
that the index and the shards agree and that no shard was cut short, so a damaged download is named
(`CheckpointError`) before any work. Stored names become the model's through transformers' own
conversion mapping (renamings, and the converters that fuse per-expert tensors into `[E, ...]`
parameters); `load_tensors` fills a fused parameter expert by expert, in place, so loading one layer
costs that layer's weights and one expert's temporaries.
"""

from __future__ import annotations

import contextlib
import json
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch

from reapkit.errors import CheckpointError, MissingInput

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
#: Auto classes a checkpoint's model is built with, first match wins (text models first, then the
#: multimodal models whose text decoder holds the experts, then bare models such as encoders).
AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM", "AutoModel")
_HEADER_LIMIT = 100_000_000  # bytes; safetensors refuses larger headers too


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors shard, as its header describes it."""

    name: str
    shard: str
    dtype: str  # safetensors dtype string ("BF16", "F8_E4M3", "I32", ...)
    shape: tuple[int, ...]
    offset: int  # start of its bytes in the shard's data section
    nbytes: int


def read_header(path) -> tuple[dict, dict[str, dict]]:
    """`(metadata, {name: {"dtype", "shape", "data_offsets"}})` of a safetensors file, checked against its size."""
    path = Path(path)
    fix = "download it again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            text = f.read(length) if 0 < length < _HEADER_LIMIT else b""
    except OSError as error:
        raise CheckpointError(f"cannot read the shard {path} ({error}); {fix}") from error
    if size < 8 or len(text) < length < _HEADER_LIMIT:
        raise CheckpointError(f"the shard {path} is incomplete (cut short inside its header, {size:,} bytes); {fix}")
    try:
        header = json.loads(text)
        ends = [info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise CheckpointError(f"{path} is not a safetensors file (its header does not read: {error}); {fix}") from error
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        what = "incomplete (cut short)" if size < expected else "longer than its header describes"
        raise CheckpointError(
            f"the shard {path} is {what}: {size:,} bytes on disk, its header describes {expected:,}; {fix}"
        )
    return header.pop("__metadata__", None) or {}, header


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder: every stored tensor, each shard's metadata, and the index (`{}` for one file)."""

    folder: Path
    tensors: dict[str, StoredTensor]
    metadata: dict[str, dict]
    index: dict

    @classmethod
    def open(cls, folder) -> Checkpoint:
        """Read the headers of every shard of `folder`; raise `CheckpointError` naming what is missing or damaged."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingInput(
                f"{folder} is not a local folder; reapkit reads a checkpoint's safetensors shards from disk: "
                f"download it first (hf download {folder} --local-dir DIR)"
            )
        index_path = folder / INDEX_FILE
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
                weight_map = index["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise CheckpointError(
                    f"{index_path} is not a safetensors index (no weight_map: {error}); download it again"
                ) from error
            if not shards:
                raise CheckpointError(f"{index_path} lists no tensors (an empty weight_map); download it again")
        elif (folder / SINGLE_FILE).is_file():
            index, weight_map, shards = {}, None, [SINGLE_FILE]
        else:
            found = sorted(p.name for p in folder.glob("*.safetensors"))
            raise CheckpointError(
                f"{folder} holds no .safetensors weights as save_pretrained writes them (neither {INDEX_FILE} "
                f"nor {SINGLE_FILE}; safetensors files found: {', '.join(found) or 'none'}); convert it with "
                "save_pretrained, or load the whole model (prune --in-memory, observe without --sequential)"
            )
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(
                f"the index {index_path} names shard(s) missing from {folder}: {', '.join(missing)}; "
                "download the complete checkpoint (every file the index lists)"
            )
        tensors, metadata = {}, {}
        for shard in shards:
            metadata[shard], header = read_header(folder / shard)
            for name, info in header.items():
                if weight_map is not None and weight_map.get(name) != shard:
                    continue  # the index decides which copy counts, as transformers does
                begin, end = info["data_offsets"]
                tensors[name] = StoredTensor(name, shard, info["dtype"], tuple(info["shape"]), begin, end - begin)
        absent = sorted(set(weight_map or ()) - set(tensors))
        if absent:
            raise CheckpointError(
                f"the index {index_path} puts {len(absent)} tensor(s) in shards that do not hold them "
                f"(first: {absent[0]} in {weight_map[absent[0]]}); download the checkpoint again"
            )
        return cls(folder, tensors, metadata, index)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data: `checkpoint.nbytes / 2**30` GiB."""
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def largest(self) -> int:
        """Bytes of the largest stored tensor."""
        return max(t.nbytes for t in self.tensors.values())

    def config(self):
        """The transformers config of `config.json`."""
        from transformers import AutoConfig

        if not (self.folder / "config.json").is_file():
            raise CheckpointError(f"{self.folder} has no config.json; give the folder of a transformers checkpoint")
        try:
            return AutoConfig.from_pretrained(self.folder)
        except (ValueError, KeyError, OSError) as error:
            raise CheckpointError(
                f"cannot read {self.folder / 'config.json'}: {' '.join(str(error).split())}"
            ) from error

    def meta_model(self, dtype="auto"):
        """The model of `config.json` in eval mode, parameters on the meta device, buffers real on the CPU.

        `dtype="auto"` takes the config's dtype (float32 when it names none).
        """
        from accelerate import init_empty_weights

        from reapkit.model.loading import torch_dtype

        config = self.config()
        dtype = torch_dtype(dtype)
        if dtype == "auto":
            dtype = torch_dtype(getattr(config.get_text_config(), "dtype", None) or config.dtype or torch.float32)
        with init_empty_weights(include_buffers=False):
            return auto_class(config).from_config(config, dtype=dtype).eval()

    @contextlib.contextmanager
    def opened(self, shard: str):
        """The open shard (`safetensors.safe_open`, read with pread, not mapped); a failed read names the shard."""
        from safetensors import safe_open

        path = self.folder / shard
        with _read_errors(path):
            handle = safe_open(str(path), framework="pt", device="cpu", backend="pread")
        with handle as f, _read_errors(path):
            yield f

    @contextlib.contextmanager
    def reading(self):
        """`read(stored name) -> tensor` on the CPU; each shard is opened once and closed when the block ends."""
        with contextlib.ExitStack() as stack:
            files = {}

            def read(name: str) -> torch.Tensor:
                shard = self.tensors[name].shard
                if shard not in files:
                    files[shard] = stack.enter_context(self.opened(shard))
                with _read_errors(self.folder / shard):
                    return files[shard].get_tensor(name)

            yield read


@contextlib.contextmanager
def _read_errors(path: Path):
    """A safetensors error inside the block becomes a `CheckpointError` naming the shard `path`."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        raise CheckpointError(f"cannot read the shard {path} ({error}); download it again") from error


def auto_class(config):
    """The first of `AUTO_CLASSES` that builds a model of `config`'s class."""
    import transformers

    for name in AUTO_CLASSES:
        auto = getattr(transformers, name)
        if type(config) in auto._model_mapping:
            return auto
    raise CheckpointError(
        f"transformers {transformers.__version__} has no model class for config {type(config).__name__} "
        f"({', '.join(AUTO_CLASSES)}); upgrade transformers or register the model"
    )


class Renamer:
    """Stored tensor names -> the model's, with the conversion mapping transformers applies when it loads.

    `model_name` applies the renamings only (a per-expert name keeps its expert number); `target`
    also applies the converters and the base-model prefix, giving the parameter a tensor loads into.
    """

    def __init__(self, model):
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        mapping = get_model_conversion_mapping(model)
        self.renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        self.converters = [m for m in mapping if isinstance(m, WeightConverter)]
        self.prefix = model.base_model_prefix
        self.expected = dict.fromkeys(model.state_dict(), True)  # names only: no tensors held
        self.by_pattern = {p: c for c in self.converters for p in c.source_patterns}

    def model_name(self, stored: str) -> str:
        from transformers.core_model_loading import rename_source_key

        return rename_source_key(stored, self.renamings, [])[0]

    def target(self, stored: str) -> tuple[str | None, str | None]:
        """`(model tensor it loads into or None when the model has no such tensor, converter source pattern or None)`."""
        from transformers.core_model_loading import rename_source_key

        target, pattern = rename_source_key(stored, self.renamings, self.converters, self.prefix, self.expected)
        if target not in self.expected and stored in self.expected:
            target, pattern = stored, None
        return (target, pattern) if target in self.expected else (None, None)


def tensor_name(model, tensor) -> str:
    """The dotted name of a parameter or buffer of `model` (`model.layers.0.mlp.gate.weight`)."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t is tensor:
            return name
    raise LookupError(f"the tensor {tuple(tensor.shape)} is not a parameter or buffer of {type(model).__name__}")


def set_tensor(model, name: str, value: torch.Tensor) -> None:
    """Put `value` in the place of `model`'s parameter or buffer `name` (a parameter without gradient)."""
    path, _, attr = name.rpartition(".")
    owner = model.get_submodule(path)
    if attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


def load_tensors(model, renamer: Renamer, read, names, *, device) -> None:
    """Load the stored tensors `names` into `model` on `device`, converted as `from_pretrained` would.

    A parameter that transformers fuses from per-expert tensors is allocated once and each expert's
    slice is filled in place; other converted parameters go through transformers' own converter.
    Tensors the model has no place for are skipped, as transformers skips them.
    """
    groups: dict[str, tuple[str | None, list[str]]] = {}
    for name in names:
        target, pattern = renamer.target(name)
        if target is not None:
            groups.setdefault(target, (pattern and renamer.by_pattern[pattern], []))[1].append((pattern, name))
    for target, (converter, sources) in groups.items():
        if converter is None:
            (_, name), *_ = sources
            _put(model, target, read(name), device)
        elif _per_expert(converter):
            _load_fused(model, target, converter, sources, read, device)
        else:
            _load_converted(model, target, converter, sources, read, device)


def _put(model, name: str, value: torch.Tensor, device) -> None:
    """Set `name` to `value` in the dtype the model holds it in, after checking the shape."""
    path, _, attr = name.rpartition(".")
    owner = model.get_submodule(path)
    meta = owner._parameters[attr] if attr in owner._parameters else owner._buffers[attr]
    if tuple(value.shape) != tuple(meta.shape):
        raise CheckpointError(
            f"the checkpoint stores {name} with shape {list(value.shape)}, its config.json builds "
            f"{list(meta.shape)}; the checkpoint and its config disagree"
        )
    set_tensor(model, name, value.to(device=device, dtype=meta.dtype))


def _per_expert(converter) -> bool:
    """Whether `converter` stacks per-expert tensors on dim 0 and then only acts within one expert."""
    from transformers.core_model_loading import Concatenate, Interleave, MergeModulelist, Transpose

    first, *rest = converter.operations
    within = all(
        (type(op) in (Concatenate, Interleave) and op.dim >= 1)
        or (type(op) is Transpose and min(op.dim0, op.dim1) >= 1 and not op.check_dims)
        for op in rest
    )
    return type(first) is MergeModulelist and first.dim == 0 and within and len(converter.target_patterns) == 1


def _by_pattern(sources) -> dict[str, list[str]]:
    from transformers.core_model_loading import dot_natural_key

    lists: dict[str, list[str]] = {}
    for pattern, name in sources:
        lists.setdefault(pattern, []).append(name)
    return {p: sorted(names, key=dot_natural_key) for p, names in lists.items()}  # transformers' stacking order


def _load_fused(model, target: str, converter, sources, read, device) -> None:
    """Fill the fused `[E, ...]` parameter `target` expert by expert, each slice converted by the converter's ops."""
    meta = model.get_parameter(target)
    lists = _by_pattern(sources)
    counts = sorted({len(lists.get(pattern, [])) for pattern in converter.source_patterns})
    if counts != [meta.shape[0]]:
        raise CheckpointError(
            f"the checkpoint stores {' or '.join(map(str, counts))} of the {meta.shape[0]} experts' tensors that "
            f"make {target} ({', '.join(converter.source_patterns)}); it is incomplete or does not match its config.json"
        )
    value = torch.empty(meta.shape, dtype=meta.dtype, device=device)
    for expert in range(meta.shape[0]):
        pieces = {p: [read(names[expert])] for p, names in lists.items()}
        for op in converter.operations:
            pieces = op.convert(
                pieces,
                source_patterns=converter.source_patterns,
                target_patterns=converter.target_patterns,
                full_layer_name=target,
                model=model,
                config=model.config,
                missing_keys=None,
            )
        (piece,) = pieces.values()
        if tuple(piece.shape) != (1, *meta.shape[1:]):
            raise CheckpointError(
                f"expert {expert} of {target} converts to shape {list(piece.shape[1:])}, its config.json builds "
                f"{list(meta.shape[1:])}; the checkpoint and its config disagree"
            )
        value[expert].copy_(piece[0])
        del pieces, piece
    set_tensor(model, target, value)


def _load_converted(model, target: str, converter, sources, read, device) -> None:
    """Any other conversion (split, permute, fused on disk): transformers' converter on the whole group."""
    converter = deepcopy(converter)
    for pattern, names in _by_pattern(sources).items():
        for name in names:
            converter.add_tensor(target, name, pattern, lambda name=name: read(name))
    for name, value in converter.convert(target, model=model, config=model.config).items():
        _put(model, name, value[0] if isinstance(value, list) else value, device)


__all__ = [
    "AUTO_CLASSES",
    "INDEX_FILE",
    "SINGLE_FILE",
    "Checkpoint",
    "Renamer",
    "StoredTensor",
    "auto_class",
    "load_tensors",
    "read_header",
    "set_tensor",
    "tensor_name",
]
