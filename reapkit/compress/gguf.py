"""Prune a GGUF model directly: the stacked expert tensors are cut byte for byte, nothing is re-quantised.

    >>> from reapkit.observe import Observations
    >>> from reapkit.select.plan import PruningPlan
    >>> plan = PruningPlan.from_observations(Observations.load("runs/obs"), "reap", ratio=0.25)
    >>> prune_gguf("model.gguf", plan, "model-REAP.gguf").paths        # e.g. GLM-4.7-Flash-Q4_K_M.gguf
    [PosixPath('model-REAP.gguf')]

On the command line: ``reapkit prune MODEL.gguf --observations OBS --ratio 0.25 --out PRUNED.gguf``.

Every quantisation type stores whole rows in blocks, and the experts are stacked on the slowest
axis, so the bytes of expert e are one contiguous run: the kept experts' runs are copied in order
(`ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`, `ffn_gate_up_exps`, their biases, the router
`ffn_gate_inp` and the selection bias `exp_probs_b`) and every other tensor is copied whole.
`{arch}.expert_count` gets the new count, `reapkit.pruning_plan` the plan as JSON; every other
metadata entry is copied as stored. Multi-token-prediction blocks with experts
(`{arch}.nextn_predict_layers`) have no observations, so they are left out and the block count
lowered, as the safetensors prune leaves them out. A split model (`-00001-of-00003.gguf`) is
written as a split model with the same parts. The plan is checked against the file first
(`gguf_experts.check_plan_fits`); parts are written to temporary siblings and renamed into place
at the end; the source is only read. Memory stays at the size of the headers: tensor bytes are
copied by the kernel (or through a 16 MiB buffer).
"""

from __future__ import annotations

import errno
import json
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from reapkit.atomic import atomic_file
from reapkit.compress.gguf_experts import BLOCK, check_plan_fits, moe_layers, mtp_layers
from reapkit.compress.gguf_file import SPLIT_NAME, GgufModel, open_gguf, split_name
from reapkit.compress.gguf_write import Header, encoded, padded, write_gguf
from reapkit.errors import CheckpointError, InvalidInput, OutputExists

PLAN_KEY = "reapkit.pruning_plan"
_OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass
class Pruned:
    """What `prune_gguf` wrote: the output parts, their size in bytes, notes on checks that could not run."""

    paths: list[Path]
    nbytes: int
    notes: list[str] = field(default_factory=list)


def is_gguf(path) -> bool:
    """True for a path the GGUF prune takes: a `.gguf` file name (one file or a part of a split set)."""
    return str(path).endswith(".gguf")


def output_paths(parts: list[Path], out) -> list[Path]:
    """Where the pruned parts go: `out` itself for one file, `OUT-0000i-of-0000n.gguf` for a split model."""
    out = Path(out)
    if not is_gguf(out):
        raise InvalidInput(f"the output of a GGUF prune is a .gguf file, got {out}; pass e.g. --out pruned.gguf")
    if len(parts) == 1:
        return [out]
    match = SPLIT_NAME.match(out.name)
    prefix = match["prefix"] if match else out.name[: -len(".gguf")]
    return [out.with_name(split_name(prefix, no, len(parts))) for no in range(1, len(parts) + 1)]


def check_outputs(outputs: list[Path], inputs, *, force: bool) -> None:
    """Refuse outputs that are (or lie inside) an input, and existing outputs without `force`."""
    for out in outputs:
        for source in inputs:
            source = Path(source)
            same = out.exists() and source.exists() and out.samefile(source)
            if same or out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
                raise InvalidInput(
                    f"the output {out} {'is' if same or out.resolve() == source.resolve() else 'lies inside'} the "
                    f"input {source}; writing there would destroy it. Choose an output path outside the inputs"
                )
        if out.is_dir():
            raise InvalidInput(f"the output {out} is a folder; give the path of the .gguf file to write")
        if out.exists() and not force:
            raise OutputExists(f"{out} already exists; choose another output or pass --force to replace it")


def prune_gguf(source, plan, out, *, force: bool = False, progress: bool = True) -> Pruned:
    """Write GGUF model `source` (a path, or an opened `GgufModel`) minus the plan's removed experts to `out`."""
    from tqdm.auto import tqdm

    model = source if isinstance(source, GgufModel) else open_gguf(source)
    outputs = output_paths(model.parts, out)
    check_outputs(outputs, model.parts, force=force)
    layers = moe_layers(model)
    notes = check_plan_fits(model, plan, layers)
    if not plan.is_uniform:
        raise InvalidInput(
            f"this plan keeps different numbers of experts per layer ({ {k: len(v) for k, v in plan.kept.items()} }), "
            "but a GGUF file has one expert_count for all layers (llama.cpp builds every MoE layer from it); "
            "use a uniform plan (--ratio or --keep)"
        )
    drop = set(mtp_layers(model)) if set(mtp_layers(model)) & set(layers) else set()
    if drop:
        notes.append(f"multi-token-prediction block(s) {sorted(drop)} left out (no observations of them)")
    headers, sources = _layout(model, plan, layers, drop)
    total = sum(len(h.encode()) + h.alignment + sum(padded(t[3], h.alignment) for t in h.tensors) for h in headers)
    folder = next(p for p in [outputs[0].absolute().parent, *outputs[0].absolute().parents] if p.exists())
    free = shutil.disk_usage(folder).free
    if total > free:
        raise CheckpointError(
            f"not enough disk space for {outputs[0]}: the pruned GGUF needs {total / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB are free; free some space or write elsewhere"
        )
    descriptors = [open(part, "rb") for part in model.parts]  # noqa: SIM115 - closed below
    written = 0
    try:
        data = sum(t[3] for h in headers for t in h.tensors)
        with ExitStack() as stack, tqdm(total=data, unit="B", unit_scale=True, disable=not progress) as bar:
            temporaries = [stack.enter_context(atomic_file(path)) for path in outputs]
            for tmp, header, ranges in zip(temporaries, headers, sources, strict=True):
                fds = [[(descriptors[p].fileno(), offset, n) for p, offset, n in tensor] for tensor in ranges]
                with open(tmp, "wb") as f:
                    written += write_gguf(f, header, fds, progress=bar.update)
    except OSError as error:
        if error.errno in _OUT_OF_SPACE:
            raise CheckpointError(
                f"could not write {outputs[0]}: the disk is full or a file-size limit (ulimit -f) was reached "
                f"({error.strerror}); nothing was written. The pruned GGUF needs {total / 2**30:.2f} GiB: "
                "free space or write elsewhere"
            ) from error
        raise
    finally:
        for f in descriptors:
            f.close()
    return Pruned(outputs, written, notes)


def _layout(model, plan, layers, drop) -> tuple[list[Header], list[list[list[tuple]]]]:
    """One header per part and, per tensor, the `(part, offset, length)` byte ranges that make it up."""
    arch = model.arch
    kept_count = len(next(iter(plan.kept.values())))
    blocks = int(model.value(f"{arch}.block_count", 0))
    patches = {f"{arch}.expert_count": kept_count}
    if drop:
        patches |= {f"{arch}.block_count": blocks - len(drop), f"{arch}.nextn_predict_layers": 0}
    headers, sources = [], []
    for index, part in enumerate(model.headers):
        entries, ranges = [], []
        for tensor in sorted((t for t in model.tensors.values() if t.part == index), key=lambda t: t.offset):
            block = BLOCK.match(tensor.name)
            layer = int(block[1]) if block else None
            if layer in drop:
                continue
            if layer in layers and tensor.name in layers[layer].tensors:
                kept = plan.kept[layer]
                per = tensor.nbytes // tensor.shape[0]
                entries.append((tensor.name, (len(kept), *tensor.shape[1:]), tensor.type, per * len(kept)))
                ranges.append([(index, tensor.offset + a * per, (b - a) * per) for a, b in _runs(kept)])
            else:
                entries.append((tensor.name, tensor.shape, tensor.type, tensor.nbytes))
                ranges.append([(index, tensor.offset, tensor.nbytes)])
        header = Header(part.version, part.alignment, part.endian, [], entries)
        part_patches = dict(patches)
        if drop and "split.tensors.count" in part.entries:
            part_patches["split.tensors.count"] = sum(
                1 for t in model.tensors if not (BLOCK.match(t) and int(BLOCK.match(t)[1]) in drop)
            )
        for key, entry in part.entries.items():
            if key != PLAN_KEY:
                header.keys.append(_entry(part, entry, part_patches, arch, blocks, drop))
        if index == 0:
            header.keys.append(encoded(PLAN_KEY, json.dumps(plan.to_dict()), 8, part.endian))
        headers.append(header)
        sources.append(ranges)
    return headers, sources


def _entry(part, entry, patches, arch, blocks, drop) -> bytes:
    """The bytes of one metadata entry: copied as stored, or encoded again when patched or cut to fewer blocks."""
    if entry.key in patches:
        return encoded(entry.key, patches[entry.key], entry.vtype, part.endian)
    per_block = entry.sub_type is not None and entry.value is not None and entry.count == blocks
    if drop and entry.key.startswith(f"{arch}.") and per_block:
        return encoded(entry.key, entry.value[: blocks - len(drop)], entry.vtype, part.endian, entry.sub_type)
    return part.raw(entry)


def _runs(kept: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted indices as half-open ranges: `_runs([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]`."""
    runs = []
    for e in kept:
        if runs and runs[-1][1] == e:
            runs[-1][1] = e + 1
        else:
            runs.append([e, e + 1])
    return [(a, b) for a, b in runs]


def prune_command(args, make_plan) -> str:
    """`reapkit prune MODEL.gguf --observations OBS ... --out PRUNED.gguf`; returns the line to print.

    `make_plan(observations)` builds the plan from the command's options (criterion, ratio, keep, ...);
    it gets None when the command names no observations (a plan given another way).
    """
    import time

    from reapkit.atomic import check_separate

    start = time.perf_counter()
    for flag, name in (("--in-memory", "in_memory"), ("--device-map", "device_map")):
        if getattr(args, name, None):
            raise InvalidInput(f"{flag} does not apply to a GGUF file, which is pruned byte for byte; drop it")
    if getattr(args, "dtype", "auto") != "auto":
        raise InvalidInput(f"a GGUF prune keeps the stored types, so --dtype {args.dtype} does nothing; drop it")
    observations = getattr(args, "observations", None)
    try:
        check_separate(args.out, observations, what="output")
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    model = open_gguf(args.model)  # a missing or corrupt file is named before the observations load
    check_outputs(output_paths(model.parts, args.out), model.parts, force=args.force)
    if observations:
        from reapkit.observe.observations import Observations

        observations = Observations.load(observations)
    plan = make_plan(observations)
    plan.provenance["source_model"] = str(args.model)
    pruned = prune_gguf(model, plan, args.out, force=args.force)
    counts = {layer: len(kept) for layer, kept in plan.kept.items()}
    where = ", ".join(str(p) for p in pruned.paths)
    notes = "".join(f"\nnote: {note}" for note in pruned.notes)
    return (
        f"pruned with {plan.criterion} (GGUF, byte for byte): experts per layer {plan.num_experts} -> {counts}; "
        f"wrote {pruned.nbytes / 2**20:.1f} MiB to {where} in {time.perf_counter() - start:.1f}s{notes}"
    )
