"""Observe a model larger than memory, one decoder layer at a time.

    >>> obs = observe_sequential("path/to/GLM-4.7", batches, dtype="bfloat16", device="cuda",
    ...                          group_size=8, spill_dir="/scratch/hidden")
    >>> obs.save("runs/obs")                      # the same Observations as `observe`

The model is built on the meta device. Its own forward runs up to the decoder layers, where each
layer's call is caught: the hidden states entering layer 0 and the exact arguments the model gives
every layer (position embeddings, the mask of that layer's type, ...) are kept. Then one layer
at a time is read from the checkpoint's safetensors shards through transformers' own loading
(renaming and fusing per-expert tensors like `from_pretrained`), the cached hidden states of each
group of batches go through transformers' own decoder-layer module while reapkit's recorder is
active, and the layer is freed. Peak memory is about the embeddings, one layer and the hidden
states of one batch group (all batches' hidden states without `spill_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from reapkit.model.discover import architecture_for
from reapkit.model.loading import torch_dtype
from reapkit.model.records import get_path
from reapkit.observe.observations import Observations

INDEX_FILE = "model.safetensors.index.json"
SYNC_LOAD = "HF_DEACTIVATE_ASYNC_LOAD"


def checkpoint_shards(folder) -> dict[str, Path]:
    """`{tensor name: shard file}` of a safetensors checkpoint folder (sharded with an index, or one file)."""
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a local folder; --sequential reads safetensors shards from disk: "
            f"download the checkpoint first (hf download {folder} --local-dir DIR)"
        )
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise FileNotFoundError(
                f"{index} names shard(s) {', '.join(missing)} that are not in {folder}; "
                "download the complete checkpoint"
            )
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{folder} holds no .safetensors weights; --sequential reads one layer at a time from "
            "safetensors shards (convert the checkpoint with save_pretrained, or observe without --sequential)"
        )
    shards = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            shards.update({name: file for name in f.keys()})
    return shards


def empty_model(folder, dtype="auto"):
    """The causal LM of `folder` with every parameter on the meta device (buffers real, on the CPU)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    dtype = torch_dtype(dtype)
    if dtype == "auto":
        dtype = getattr(config.get_text_config(), "dtype", None) or getattr(config, "dtype", None) or torch.float32
        dtype = torch_dtype(dtype)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class _Loader:
    """Loads chosen checkpoint tensors into a meta model through transformers' own conversion."""

    def __init__(self, model, shards: dict[str, Path], device, dtype):
        from transformers.conversion_mapping import get_model_conversion_mapping

        self.model, self.shards, self.device, self.dtype = model, shards, device, dtype
        self.mapping = get_model_conversion_mapping(model)
        self.dtype_plan = model._get_dtype_plan(dtype)
        self.meta_state = dict.fromkeys(model.state_dict(), True)  # names only (no tensors held), for the renaming

    def load(self, names):
        """Load checkpoint tensors `names`, one target parameter at a time (a fused expert tensor with its sources)."""
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        renamings = [m for m in self.mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in self.mapping if isinstance(m, WeightConverter)]
        targets = defaultdict(list)
        for name in names:
            target, _ = rename_source_key(name, renamings, converters, self.model.base_model_prefix, self.meta_state)
            targets[target].append(name)
        for sources in targets.values():
            self._load(sources)

    def _load(self, names):
        from safetensors import safe_open
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig
        from transformers.utils import logging

        by_file = defaultdict(list)
        for name in names:
            by_file[self.shards[name]].append(name)
        config = LoadStateDictConfig(
            device_map={"": self.device}, dtype=self.dtype, dtype_plan=self.dtype_plan, weight_mapping=self.mapping
        )
        bars = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()
        # transformers' own switch for loading under memory constraints: one tensor at a time, no thread pool
        threads = os.environ.get(SYNC_LOAD)
        os.environ[SYNC_LOAD] = "1"
        try:
            with contextlib.ExitStack() as files:
                state = {}
                for file, keys in by_file.items():
                    # read (pread), not mapped: mapped pages would stay resident while any weight of the layer lives
                    f = files.enter_context(safe_open(str(file), framework="pt", device="cpu", backend="pread"))
                    state.update({key: f.get_slice(key) for key in keys})
                convert_and_load_state_dict_in_model(self.model, state, config)
        finally:
            if threads is None:
                os.environ.pop(SYNC_LOAD)
            else:
                os.environ[SYNC_LOAD] = threads
            if bars:
                logging.enable_progress_bar()


class _Stop(Exception):
    pass


def _capture(model, layers, batch, device) -> tuple[torch.Tensor, list]:
    """Run the model's own forward until its last decoder layer; return layer 0's hidden states and every layer's call."""
    calls: list = [None] * len(layers)
    first: list = []

    def catcher(index):
        def forward(*args, **kwargs):
            if args:
                hidden, args = args[0], args[1:]
            else:
                hidden = kwargs.pop("hidden_states")
            calls[index] = (args, kwargs)
            if index == 0:
                first.append(hidden)
            if index == len(layers) - 1:
                raise _Stop
            return hidden

        return forward

    for index, layer in enumerate(layers):
        layer.forward = catcher(index)
    try:
        model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
    except _Stop:
        pass
    finally:
        for layer in layers:
            del layer.forward
    if not first or any(call is None for call in calls):
        raise ValueError(
            f"{type(model).__name__}'s forward did not call every decoder layer once; "
            "--sequential cannot observe it, observe it in memory or with --device-map"
        )
    return first[0], calls


class _HiddenStates:
    """Per batch group: the hidden states entering the next layer and every layer's call arguments.

    In memory, or in `spill_dir` (one file per group, replaced after each layer).
    """

    def __init__(self, spill_dir=None, device="cpu"):
        self.spill = Path(spill_dir) if spill_dir is not None else None
        self.device = device
        self.memory: dict[int, tuple[list, list]] = {}
        if self.spill is not None:
            self.spill.mkdir(parents=True, exist_ok=True)

    def put(self, group: int, hidden: list, calls: list | None = None):
        if self.spill is None:
            self.memory[group] = (hidden, calls if calls is not None else self.memory[group][1])
            return
        if calls is not None:
            self._save(f"calls-{group}.pt", calls)
        self._save(f"hidden-{group}.pt", hidden)

    def get(self, group: int) -> tuple[list, list]:
        if self.spill is None:
            return self.memory[group]
        load = lambda name: torch.load(self.spill / name, map_location=self.device, weights_only=False)  # noqa: E731
        return load(f"hidden-{group}.pt"), load(f"calls-{group}.pt")

    def _save(self, name: str, value):
        tmp = self.spill / f".{name}.tmp"
        torch.save(value, tmp)
        tmp.replace(self.spill / name)

    def clear(self):
        self.memory.clear()
        if self.spill is not None:
            for file in [*self.spill.glob("hidden-*.pt"), *self.spill.glob("calls-*.pt")]:
                file.unlink()


def _release(module: torch.nn.Module, keep=()):
    """Free `module`'s weights (back to the meta device), except the parameters in `keep`."""
    kept = [(owner, name, getattr(owner, name).detach().to("cpu", copy=True)) for owner, name in keep]
    module.to("meta")
    for owner, name, value in kept:
        setattr(owner, name, torch.nn.Parameter(value, requires_grad=False))


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
        raise ValueError(f"group_size must be a positive number of batches, got {group_size}")
    batches = list(batches)
    if not batches:
        raise ValueError("no calibration batches were given; pass at least one batch of token ids")
    shards = checkpoint_shards(folder)
    device = torch.device(device)
    model = empty_model(folder, dtype)
    arch = architecture_for(model)
    for module in model.modules():  # buffers (rotary frequencies, ...) go to the compute device
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.to(device)
    layers = get_path(model, arch.layers)
    layer_prefix = arch.layers.rsplit(".", 1)[-1]
    layer_of = re.compile(rf"(?:^|\.){re.escape(layer_prefix)}\.(\d+)\.")
    layer_keys = defaultdict(list)
    outer_keys = []
    output_embeddings = _output_embeddings_name(model)
    for name in shards:
        match = layer_of.search(name)
        if match:
            layer_keys[int(match.group(1))].append(name)
        elif output_embeddings is None or not name.startswith(output_embeddings + "."):
            outer_keys.append(name)
    loader = _Loader(model, shards, device, next(model.parameters()).dtype)

    groups = [batches[start : start + group_size] for start in range(0, len(batches), group_size)]
    store = _HiddenStates(spill_dir, device)
    try:
        loader.load(outer_keys)
        for g, group in enumerate(tqdm(groups, desc="first-layer inputs", unit="group", disable=not progress)):
            captured = [_capture(model, layers, batch, device) for batch in group]
            store.put(g, [hidden for hidden, _ in captured], [calls for _, calls in captured])
            del captured
        _release_outside(model, layers)  # embeddings, final norm, head: not needed any more

        moe = {index: block for index, block in arch.moe_blocks(model)}
        with recording(model, device=device) as recorder:
            for index, layer in enumerate(tqdm(layers, desc="layers", unit="layer", disable=not progress)):
                loader.load(layer_keys.get(index, []))
                missing = [n for n, p in layer.named_parameters() if p.device.type == "meta"]
                if missing:
                    raise ValueError(
                        f"the checkpoint in {folder} has no weights for {arch.layers}.{index}.{missing[0]} "
                        f"({len(missing)} missing in that layer); it does not match its config.json"
                    )
                layer.to(device)
                for g, group in enumerate(groups):
                    hidden, calls = store.get(g)
                    out = []
                    for batch, h, call in zip(group, hidden, calls):
                        recorder.start_batch(batch.domain, batch.attention_mask)
                        args, kwargs = call[index]
                        y = layer(h, *args, **kwargs)
                        out.append(y[0] if isinstance(y, tuple) else y)
                    store.put(g, out)
                    del hidden, calls, out
                router = [(arch.router_of(moe[index]), "weight")] if index in moe else []
                _release(layer, keep=router)
        return observations_from(model, recorder, batches, calibration)
    finally:
        store.clear()


def _output_embeddings_name(model) -> str | None:
    """Dotted name of the output embeddings (lm_head), unless they share the input embeddings' weight."""
    output = model.get_output_embeddings()
    if output is None or output.weight is model.get_input_embeddings().weight:
        return None
    return next((name for name, module in model.named_modules() if module is output), None)


def _release_outside(module: torch.nn.Module, layers: torch.nn.Module):
    """Free every weight of `module` that is not inside `layers` (embeddings, final norm, head)."""
    if module is layers:
        return
    children = list(module.named_children())
    if not any(layers is m for m in module.modules()):
        module.to("meta")
        return
    for name, param in list(module.named_parameters(recurse=False)):
        setattr(module, name, torch.nn.Parameter(param.to("meta"), requires_grad=False))
    for _, child in children:
        _release_outside(child, layers)
