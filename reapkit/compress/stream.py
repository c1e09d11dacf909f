"""Prune a checkpoint on disk tensor by tensor, without building the model.

    >>> from reapkit.model import DEMO_PATH       # a checkpoint folder, e.g. Qwen3-30B-A3B's
    >>> from reapkit.observe import Observations
    >>> plan = PruningPlan.from_observations(Observations.load("runs/obs"), "reap", ratio=0.5)
    >>> stream_prune(DEMO_PATH, plan, "demo-REAP-50")
    PosixPath('demo-REAP-50')

A checkpoint is a set of named tensors; pruning drops, slices and renumbers some of them. Each
tensor is read from the source shards (safetensors, through `reapkit.model.checkpoint`, which
names a missing, truncated or inconsistent shard first), changed if it belongs to an expert, a router
or a correction bias, and written to a shard of the same name, one tensor in memory at a time.
Which tensors those are comes from the model's module tree built on the meta device (no weights)
and transformers' own checkpoint renamings:

- per-expert tensors (`...experts.{e}.<anything>`, the hub layout, quantised or not: `weight`,
  `qweight`, `qzeros`, `scales`, `g_idx`, `weight_packed`, `weight_scale`, `weight_scale_inv`, ...)
  go with their expert: dropped or renumbered;
- fused expert tensors (`...experts.gate_up_proj`, `down_proj`, biases, packed blocks and scales)
  and router rows are sliced on their first dimension, which must be the expert count;
- the selection-only correction bias is sliced on its last dimension.

Anything else under an expert or router that does not have the expert count where it should is
refused with its name: reapkit never prunes a layout it does not understand.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from reapkit.atomic import atomic_directory, check_separate
from reapkit.errors import CheckpointError, InvalidInput, Mismatch
from reapkit.model.checkpoint import INDEX_FILE, Checkpoint, Renamer, StoredTensor, set_tensor, tensor_name
from reapkit.model.discover import architecture_for
from reapkit.model.records import EXPERT_COUNT_NAMES
from reapkit.select.plan import PruningPlan

#: Weight files of other formats: not pruned here, so never copied beside the pruned shards.
OTHER_WEIGHTS = re.compile(
    r"(pytorch_model.*\.bin|.*\.bin\.index\.json|.*\.pt|.*\.pth|.*\.gguf|tf_model\.h5|flax_model\.msgpack)$"
)
_OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


# ---------------------------------------------------------------------------------------------
# Which tensors belong to experts, routers and correction biases


@dataclass(frozen=True)
class _MoeLayer:
    layer: int
    experts: str  # module path of the fused experts in the model ("model.layers.1.mlp.experts")
    router: str
    correction_bias: str | None  # full name of the selection-only bias, if any
    known: dict  # {model tensor name: shape} of the router's and experts' own tensors

    def owns(self, key: str) -> bool:
        return key == self.correction_bias or key.startswith((self.experts + ".", self.router + "."))


@dataclass
class _Action:
    """What happens to one stored tensor: kept as is, dropped, renamed or sliced along `dim`."""

    name: str  # name in the output
    index: list[int] | None = None  # expert rows to keep along `dim`
    dim: int = 0


def _moe_layers(model, arch) -> dict[int, _MoeLayer]:
    names = {id(module): name for name, module in model.named_modules()}
    layers = {}
    for index, block in arch.moe_blocks(model):
        experts, router = arch.experts_of(block), arch.router_of(block)
        bias = arch.correction_bias_of(block)
        known = {f"{names[id(experts)]}.{n}": tuple(t.shape) for n, t in experts.state_dict().items()}
        known |= {f"{names[id(router)]}.{n}": tuple(t.shape) for n, t in router.state_dict().items()}
        layers[index] = _MoeLayer(
            index, names[id(experts)], names[id(router)], None if bias is None else tensor_name(model, bias), known
        )
    return layers


def _plan_actions(tensors, model, arch, plan: PruningPlan, renamer: Renamer) -> tuple[dict[str, _Action], list[str]]:
    """`({stored name: action}, names of tensors transformers never loads)`; removed experts get no action."""
    layers = _moe_layers(model, arch)
    ignored = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    actions, unloaded = {}, []
    for name, stored in tensors.items():
        key = renamer.model_name(name)
        if renamer.target(name)[0] is None and any(p.search(key) for p in ignored):
            unloaded.append(
                name
            )  # e.g. multi-token-prediction layers: no statistics, so their experts cannot be pruned
            continue
        moe = next((m for m in layers.values() if m.owns(key)), None)
        action = (
            _Action(name)
            if moe is None
            else _layer_action(name, key, stored, moe, plan.num_experts[moe.layer], plan.kept[moe.layer])
        )
        if action is not None:
            actions[name] = action
    return actions, unloaded


def _layer_action(name, key, stored: StoredTensor, moe: _MoeLayer, total: int, kept: list[int]):
    """The action for one stored tensor in one MoE layer (`_Action(name)` when it is not the layer's)."""
    shape = stored.shape
    if key == moe.correction_bias:
        if not shape or shape[-1] != total:
            raise CheckpointError(
                f"the correction bias {name} has shape {list(shape)}, not [..., {total}] experts; reapkit cannot slice it"
            )
        return _Action(name, kept, len(shape) - 1)
    if key.startswith(moe.experts + "."):
        rest = key[len(moe.experts) + 1 :]
        head, _, tail = rest.partition(".")
        if head.isdigit() and tail:  # per-expert layout: everything under the expert's name goes with it
            expert = int(head)
            if expert >= total:
                raise CheckpointError(
                    f"{name} belongs to expert {expert}, but layer {moe.layer} has {total} experts (config); "
                    "the checkpoint and its config.json disagree"
                )
            if expert not in kept:
                return None
            suffix = f".{expert}.{tail}"
            if not name.endswith(suffix):
                raise CheckpointError(
                    f"cannot locate the expert index in the stored name {name}; reapkit cannot renumber it"
                )
            return _Action(f"{name[: -len(suffix)]}.{kept.index(expert)}.{tail}")
        return _fused_action(name, key, stored, moe, total, kept, "fused expert tensor")
    if key.startswith(moe.router + "."):
        if moe.known.get(key) == shape and (not shape or shape[0] != total):
            return _Action(name)  # the router's own tensor without an expert dimension
        return _fused_action(name, key, stored, moe, total, kept, "router tensor")
    return _Action(name)


def _fused_action(name, key, stored, moe, total, kept, what):
    if stored.shape and stored.shape[0] == total:
        return _Action(name, kept, 0)
    raise CheckpointError(
        f"the {what} {name} (shape {list(stored.shape)}, {stored.dtype}) does not have the {total} experts of "
        f"layer {moe.layer} on its first dimension, so reapkit does not know which part belongs to which expert "
        "(an unrecognised quantised layout?). Dequantise the checkpoint or store its experts per expert "
        "(...experts.{e}.<name>), prune, and quantise afterwards"
    )


# ---------------------------------------------------------------------------------------------
# Checks: the plan against the checkpoint


def check_plan_against(model, plan: PruningPlan, read) -> None:
    """Raise unless `plan` was made for this checkpoint: MoE layers, expert counts, router fingerprint.

    `read(model tensor name)` returns that tensor from the checkpoint, or None when it has none.
    """
    from reapkit.compress.prune import check_plan
    from reapkit.observe.observations import fingerprint_differences

    try:
        check_plan(model, plan)
    except ValueError as error:
        raise Mismatch(f"the plan does not fit this checkpoint: {error}") from error
    arch = architecture_for(model)
    blocks = list(arch.moe_blocks(model))
    unplanned = sorted({layer for layer, _ in blocks} - set(plan.layers))
    if unplanned:
        raise Mismatch(
            f"the plan says nothing about MoE layer(s) {unplanned} of this checkpoint; "
            "a stock config.json needs one expert count for every MoE layer, so plan every layer"
        )
    expected = plan.provenance.get("observations")
    if not expected:
        return
    routers = [tensor_name(model, arch.router_weight_of(block)) for _, block in blocks]  # from the structure
    for name in routers:
        weight = read(name)
        if weight is None:
            raise CheckpointError(
                f"the checkpoint has no router weight {name}, so reapkit cannot check that the plan was made for it"
            )
        set_tensor(model, name, weight)
    diff = fingerprint_differences(expected, model)
    dtype = model.config.get_text_config().dtype
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if diff and isinstance(dtype, torch.dtype):  # observed as loaded with dtype="auto"
        for name in routers:
            set_tensor(model, name, model.get_parameter(name).to(dtype))
        diff = fingerprint_differences(expected, model)
    if diff:
        raise Mismatch(
            f"these observations were recorded on a different model (differences, observed vs this checkpoint: {diff}); "
            "observe this model again with `reapkit observe` and plan again"
        )


# ---------------------------------------------------------------------------------------------
# Writing


class _ShardWriter:
    """Writes one safetensors file tensor by tensor: the header first (from shapes), then each tensor's bytes."""

    def __init__(self, path, entries: list[tuple[str, str, tuple, int]], metadata: dict):
        header, offset = {}, 0
        if metadata:
            header["__metadata__"] = metadata
        for name, dtype, shape, nbytes in entries:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.expected = [(name, nbytes) for name, _, _, nbytes in entries]
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close(), after the tensors of the shard
        self.file.write(len(text).to_bytes(8, "little") + text)

    def write(self, name: str, parts) -> None:
        """Write tensor `name` from `parts`, tensors whose bytes follow each other (rows of it, in order)."""
        want_name, want = self.expected.pop(0)
        written = 0
        for part in parts:
            data = part.contiguous().reshape(-1).view(torch.uint8)
            self.file.write(memoryview(data.numpy()))
            written += data.numel()
            del part, data
        if want_name != name or written != want:
            raise RuntimeError(
                f"internal error: wrote {name} ({written} bytes) where {want_name} ({want} bytes) belongs"
            )

    def close(self):
        self.file.close()


#: Rows read at once are at most this many bytes (bigger single rows are read whole).
CHUNK_BYTES = 64 * 2**20


def _pieces(f, stored: StoredTensor, action: _Action):
    """The output tensor as consecutive pieces: runs of kept rows, read straight from the shard in chunks."""
    if not stored.shape or action.dim != 0:  # scalars and correction biases (small): read whole, select
        tensor = f.get_tensor(stored.name)
        yield tensor if action.index is None else tensor.index_select(action.dim, torch.tensor(action.index))
        return
    rows = list(range(stored.shape[0])) if action.index is None else action.index
    step = max(1, CHUNK_BYTES // max(1, stored.nbytes // stored.shape[0]))
    start = 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and stop - start < step and rows[stop] == rows[stop - 1] + 1:
            stop += 1
        yield f.get_slice(stored.name)[rows[start] : rows[stop - 1] + 1]
        start = stop


def _sliced(stored: StoredTensor, action: _Action) -> tuple[tuple, int]:
    if action.index is None:
        return stored.shape, stored.nbytes
    shape = list(stored.shape)
    nbytes = stored.nbytes // shape[action.dim] * len(action.index)
    shape[action.dim] = len(action.index)
    return tuple(shape), nbytes


def _new_config(source, arch, plan: PruningPlan, per_layer: dict | None) -> dict:
    """The source's config.json with the new expert count under every count key it uses (and the published one).

    A non-uniform plan writes the most common count globally and the others as `per_layer_config`.
    """
    config = json.loads((Path(source) / "config.json").read_text())
    nested = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    target = nested if nested is not None and config.get("model_type") != arch.model_type else config
    old = next(iter(plan.num_experts.values()))
    new = _most_common_count(plan)
    target[arch.num_experts_key] = new
    for part in (config, nested):
        for key in EXPERT_COUNT_NAMES:
            if part is not None and part.get(key) == old:
                part[key] = new
    if per_layer:
        target["per_layer_config"] = {str(layer): values for layer, values in sorted(per_layer.items())}
    return config


def _most_common_count(plan: PruningPlan) -> int:
    counts = [len(plan.kept[layer]) for layer in plan.layers]
    return max(counts, key=lambda n: (counts.count(n), n))


def per_layer_counts(model, arch, plan: PruningPlan) -> dict | None:
    """`{layer: {count key: n}}` for the layers of a non-uniform plan that differ from the most common count,
    when transformers builds each MoE layer from it (`per_layer_config`); None for model types that ignore it.

    Checked by building the model on the meta device with those counts, not by a list of model types.
    """
    import copy

    common = _most_common_count(plan)
    overrides = {layer: {arch.num_experts_key: len(kept)} for layer, kept in plan.kept.items() if len(kept) != common}
    config = copy.deepcopy(model.config)
    try:
        setattr(config.get_text_config(), arch.num_experts_key, common)
        config.get_text_config().per_layer_config = overrides
        with torch.device("meta"):
            probe = type(model)(config)
        built = {layer: arch.experts_of(block).num_experts for layer, block in arch.moe_blocks(probe)}
    except Exception:  # noqa: BLE001 - any failure to build means this model type cannot read per-layer counts
        return None
    return overrides if built == {layer: len(kept) for layer, kept in plan.kept.items()} else None


def _refuse_non_uniform(model, plan: PruningPlan):
    import transformers

    raise InvalidInput(
        f"this plan keeps different numbers of experts per layer ({ {k: len(v) for k, v in plan.kept.items()} }), and "
        f"transformers {transformers.__version__} builds every MoE layer of {model.config.model_type} with one expert "
        "count (its modeling code does not read per_layer_config for experts), so no stock config.json can describe "
        "the result. Prune in memory and save with reapkit.compress.prune.save_non_uniform(...), load it with "
        "reapkit.compress.prune.load_pruned(...); or use a uniform plan (ratio= or keep=) for a stock checkpoint"
    )


def stream_prune(source, plan: PruningPlan, out, *, force: bool = False, progress: bool = True) -> Path:
    """Write `source` minus the plan's removed experts to `out`, reading one tensor at a time.

    The output is sharded like the source (same shard names, same index), every other file of the
    folder is copied, config.json carries the new expert count, `pruning_plan.json` is added. The
    write is atomic; the source is never modified. Peak memory is about twice the largest tensor.
    """
    from tqdm.auto import tqdm

    source, out = Path(source), Path(out)
    check_separate(out, source)
    checkpoint = Checkpoint.open(source)
    tensors = checkpoint.tensors
    model = checkpoint.meta_model()
    arch = architecture_for(model)
    per_layer = None if plan.is_uniform else per_layer_counts(model, arch, plan)
    if not plan.is_uniform and per_layer is None:
        _refuse_non_uniform(model, plan)
    renamer = Renamer(model)
    by_model_name = {renamer.model_name(name): name for name in tensors}

    def read(model_name):  # opens the shard for one tensor and closes it: no pages stay resident
        if model_name not in by_model_name:
            return None
        with checkpoint.reading() as read_stored:
            return read_stored(by_model_name[model_name])

    check_plan_against(model, plan, read)
    actions, unloaded = _plan_actions(tensors, model, arch, plan, renamer)

    shards = {}
    for name, action in actions.items():
        stored = tensors[name]
        shape, nbytes = _sliced(stored, action)
        shards.setdefault(stored.shard, []).append((stored.offset, name, action.name, stored.dtype, shape, nbytes))
    total = sum(e[-1] for entries in shards.values() for e in entries)
    existing = next(p for p in [out.absolute(), *out.absolute().parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if total > free:
        raise CheckpointError(
            f"not enough disk space for {out}: the pruned checkpoint needs {total / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free; free some space or write elsewhere"
        )
    try:
        with atomic_directory(out, force=force) as tmp:
            weight_map = {}
            total_tensors = sum(len(v) for v in shards.values())
            with tqdm(total=total_tensors, desc="pruning tensors", unit="tensor", disable=not progress) as bar:
                for shard, entries in sorted(shards.items()):
                    entries.sort()  # source order: sequential reads
                    writer = _ShardWriter(tmp / shard, [e[2:] for e in entries], checkpoint.metadata[shard])
                    try:
                        for _, name, new_name, *_ in entries:
                            with checkpoint.opened(shard) as f:
                                writer.write(new_name, _pieces(f, tensors[name], actions[name]))
                            weight_map[new_name] = shard
                            bar.update()
                    finally:
                        writer.close()
            _copy_other_files(
                source, tmp, exclude=set(checkpoint.metadata) | {INDEX_FILE, "config.json", "pruning_plan.json"}
            )
            if checkpoint.index:
                new_index = {**checkpoint.index, "weight_map": dict(sorted(weight_map.items()))}
                metadata = dict(checkpoint.index.get("metadata") or {})
                if "total_size" in metadata:
                    metadata["total_size"] = total
                if "total_parameters" in metadata:
                    metadata.pop(
                        "total_parameters"
                    )  # not computable from bytes for packed dtypes; loaders do not need it
                new_index["metadata"] = metadata
                (tmp / INDEX_FILE).write_text(json.dumps(new_index, indent=2) + "\n")
            (tmp / "config.json").write_text(json.dumps(_new_config(source, arch, plan, per_layer), indent=2) + "\n")
            provenance = {"source_model": str(source), **plan.provenance, "streamed": True}
            if unloaded:  # tensors transformers does not load (multi-token prediction), left out
                provenance["dropped_unloaded_tensors"] = len(unloaded)
            replace(plan, provenance=provenance).save(tmp / "pruning_plan.json")
    except OSError as error:
        if error.errno in _OUT_OF_SPACE:
            raise CheckpointError(
                f"could not write {out}: the disk is full or a file-size limit (ulimit -f) was reached "
                f"({error.strerror}); nothing was written. "
                f"The pruned checkpoint needs {total / 2**30:.2f} GiB: free space or write elsewhere"
            ) from error
        raise
    return out


def _copy_other_files(source: Path, dest: Path, *, exclude: set[str]) -> None:
    """Copy tokenizer, generation config, chat template, ... (not weights of other formats, not stray shards)."""
    for path in sorted(source.iterdir()):
        if (
            path.name in exclude
            or path.name.startswith(".")
            or OTHER_WEIGHTS.match(path.name)
            or path.suffix == ".safetensors"
        ):
            continue
        if path.is_dir():
            shutil.copytree(path, dest / path.name)
        else:
            shutil.copy2(path, dest / path.name)


__all__ = ["check_plan_against", "per_layer_counts", "stream_prune"]
