"""Observe a model larger than memory, one decoder layer at a time.

    >>> obs = observe_sequential("path/to/GLM-4.7", batches, dtype="bfloat16", device="cuda",
    ...                          group_size=8, spill_dir="/scratch/hidden")
    >>> obs.save("runs/obs")                      # the same Observations as `observe`

The model is built on the meta device from the checkpoint's config (`reapkit.model.checkpoint`)
and the weights outside its decoder layers are loaded (not the output head). The output of the
input embeddings is kept for every batch and their weights are freed. Then one decoder layer at a
time is loaded from the safetensors shards, each fused expert parameter filled expert by expert
in place, and every batch goes through the model's own forward once more: the embeddings replay
their output, the layers before this one return the previous layer's stored output, this layer
runs while reapkit's recorder is active, and the forward stops when it returns. So transformers
calls each layer with exactly the arguments of a full forward (position embeddings, the mask of
its type, what the previous layer returned beside its hidden states). The layer is freed after
the last batch; its router weight stays for the fingerprint. Peak memory is about one layer and
two hidden states per batch of a group (of every batch without `spill_dir`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reapkit.errors import CheckpointError, InvalidInput
from reapkit.model.checkpoint import Checkpoint, Renamer, load_tensors, set_tensor, tensor_name
from reapkit.model.discover import architecture_for
from reapkit.model.records import get_path
from reapkit.observe.observations import Observations


class _Stop(Exception):
    pass


def _stop(*args, **kwargs):
    raise _Stop


def _replay(outputs: list):
    """A forward that returns `outputs`, one per call."""
    calls = iter(outputs)
    return lambda *args, **kwargs: next(calls)


def _run(model, batch, device, forwards: dict) -> None:
    """The model's own forward on `batch`, with the forwards of some modules replaced, until one raises `_Stop`."""
    for module, forward in forwards.items():
        module.forward = forward
    try:
        model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
    except _Stop:
        pass
    finally:
        for module in forwards:
            del module.forward


def _cannot(model, what: str) -> InvalidInput:
    return InvalidInput(
        f"{type(model).__name__}'s forward did not call {what} once; --sequential cannot observe it: "
        "observe it in memory or with --device-map"
    )


def _embedded(model, layers, batch, device) -> list:
    """What the input embeddings return for `batch` in the model's forward (each call, in order)."""
    embeddings = model.get_input_embeddings()
    run, seen = embeddings.forward, []

    def record(*args, **kwargs):
        seen.append(run(*args, **kwargs))
        return seen[-1]

    _run(model, batch, device, {embeddings: record, layers[0]: _stop})
    if not seen:
        raise _cannot(model, "its input embeddings")
    return seen


def _free_embeddings(model, layers, batch, embedded: list, device) -> bool:
    """Free the input embeddings' weights, and say whether the forward still reaches the first layer without them.

    Their output is replayed from here on, but a model may also read their weights directly (gemma4 takes
    its padding row): then the forward fails on the meta device and the weights must be loaded again.
    """
    embeddings = model.get_input_embeddings()
    _release(model, embeddings)
    try:
        _run(model, batch, device, {embeddings: _replay(embedded), layers[0]: _stop})
    except (RuntimeError, NotImplementedError):  # an operation on a freed (meta) weight
        return False
    return True


def _layer_output(model, layers, index: int, batch, embedded: list, previous, device):
    """Layer `index`'s output for `batch` from the model's own forward.

    The input embeddings replay `embedded` and the layers before `index` return `previous`.
    """
    outputs, run = [], layers[index].forward

    def through(*args, **kwargs):
        outputs.append(run(*args, **kwargs))
        raise _Stop

    forwards = {model.get_input_embeddings(): _replay(embedded)}
    forwards |= {layer: (lambda *args, **kwargs: previous) for layer in layers[:index]}
    forwards[layers[index]] = through
    _run(model, batch, device, forwards)
    if len(outputs) != 1:
        raise _cannot(model, f"its decoder layer {index}")
    return outputs[0]


class _Outputs:
    """Per batch group, a list with an entry per batch, in memory or in `spill_dir` (a file per group)."""

    def __init__(self, spill_dir=None, device="cpu"):
        self.spill = Path(spill_dir) if spill_dir is not None else None
        self.device = device
        self.memory: dict[int, list] = {}
        if self.spill is not None:
            self.spill.mkdir(parents=True, exist_ok=True)

    def put(self, group: int, outputs: list):
        if self.spill is None:
            self.memory[group] = outputs
            return
        tmp = self.spill / f".outputs-{group}.pt.tmp"
        torch.save(outputs, tmp)
        tmp.replace(self.spill / f"outputs-{group}.pt")

    def get(self, group: int) -> list:
        if self.spill is None:
            return self.memory[group]
        return torch.load(self.spill / f"outputs-{group}.pt", map_location=self.device, weights_only=False)

    def clear(self):
        self.memory.clear()
        if self.spill is not None:
            for file in self.spill.glob("outputs-*.pt"):
                file.unlink()


def _head(model) -> str | None:
    """The name prefix of the output head's tensors (`lm_head.`): the forward stops before it, so it is not loaded."""
    head = model.get_output_embeddings()
    names = {id(module): name for name, module in model.named_modules()}
    return None if head is None else names[id(head)] + "."


def _stored_by_layer(checkpoint, renamer, model, arch, count: int) -> tuple[list[list[str]], list[str]]:
    """`([stored names of each decoder layer], stored names outside the layers)`, by the model tensor each loads into.

    Tensors of the output head (not needed) and tensors the model has no place for are left out.
    """
    head = _head(model)
    by_layer, outer = [[] for _ in range(count)], []
    for name in checkpoint.tensors:
        target = renamer.target(name)[0]
        if target is None or (head and target.startswith(head)):
            continue
        number, _, rest = target.removeprefix(arch.layers + ".").partition(".")
        inside = target.startswith(arch.layers + ".") and number.isdigit() and rest
        (by_layer[int(number)] if inside else outer).append(name)
    return by_layer, outer


def _check_loaded(folder, names: list[str]) -> None:
    """Raise if a model tensor in `names` (parameters still on the meta device) was not in the checkpoint."""
    if names:
        raise CheckpointError(
            f"the checkpoint in {folder} has no weights for {names[0]} ({len(names)} missing there); "
            "it is incomplete or does not match its config.json"
        )


@torch.no_grad()
def observe_sequential(
    folder,
    batches,
    *,
    dtype="auto",
    device="cpu",
    group_size: int = 8,
    spill_dir=None,
    progress: bool = True,
    calibration: dict | None = None,
) -> Observations:
    """`observe` of the checkpoint in `folder`, loading one decoder layer at a time; see the module docstring."""
    from reapkit.observe.recorder import observations_from, recording

    if group_size < 1:
        raise InvalidInput(f"group_size must be a positive number of batches, got {group_size}; pass e.g. 8")
    batches = list(batches)
    if not batches:
        raise InvalidInput("no calibration batches were given; pass at least one batch of token ids")
    checkpoint = Checkpoint.open(folder)
    device = torch.device(device)
    model = checkpoint.meta_model(dtype)
    arch = architecture_for(model)
    for module in model.modules():  # buffers (rotary frequencies, ...) go to the compute device
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.to(device)
    layers = get_path(model, arch.layers)
    renamer = Renamer(model)
    by_layer, outer = _stored_by_layer(checkpoint, renamer, model, arch, len(layers))
    routers = {index: tensor_name(model, arch.router_weight_of(block)) for index, block in arch.moe_blocks(model)}

    groups = [batches[start : start + group_size] for start in range(0, len(batches), group_size)]
    store = _Outputs(spill_dir, device)  # per batch: (what the input embeddings returned, the last layer's output)
    try:
        with checkpoint.reading() as read:
            load_tensors(model, renamer, read, outer, device=device)
        layer_names, head = arch.layers + ".", _head(model)
        _check_loaded(
            folder,
            [
                n
                for n, p in model.named_parameters()
                if p.is_meta and not n.startswith(layer_names) and not (head and n.startswith(head))
            ],
        )
        for g, group in enumerate(groups):
            store.put(g, [(_embedded(model, layers, batch, device), None) for batch in group])
        if not _free_embeddings(model, layers, batches[0], store.get(0)[0][0], device):
            with checkpoint.reading() as read:
                load_tensors(model, renamer, read, outer, device=device)
        with recording(model, device=device) as recorder:
            for index, layer in enumerate(tqdm(layers, desc="layers", unit="layer", disable=not progress)):
                with checkpoint.reading() as read:
                    load_tensors(model, renamer, read, by_layer[index], device=device)
                _check_loaded(folder, [f"{layer_names}{index}.{n}" for n, p in layer.named_parameters() if p.is_meta])
                layer.to(device)
                for g, group in enumerate(groups):
                    stored = store.get(g)
                    outputs = []
                    for batch, (embedded, previous) in zip(group, stored):
                        recorder.start_batch(batch.domain, batch.attention_mask)
                        outputs.append(
                            (embedded, _layer_output(model, layers, index, batch, embedded, previous, device))
                        )
                    store.put(g, outputs)
                    del stored, outputs
                _release(model, layer, keep=[routers[index]] if index in routers else [])
        return observations_from(model, recorder, batches, calibration)
    finally:
        store.clear()


def _release(model, module: torch.nn.Module, keep=()):
    """Free `module`'s weights (back to the meta device), except the tensors of `model` named in `keep`.

    The C heap's free pages go back to the operating system at once: without that, the fragments
    each layer leaves (its per-expert reads) keep growing the resident memory from layer to layer.
    """
    kept = [(name, model.get_parameter(name).detach().to("cpu", copy=True)) for name in keep]
    module.to("meta")
    for name, value in kept:
        set_tensor(model, name, value)
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
    import ctypes

    return getattr(ctypes.CDLL(None), "malloc_trim", None)
