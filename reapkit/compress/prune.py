"""Apply a `PruningPlan` to a model: mask experts (what-if) or remove them (smaller model), and save.

    >>> ids = batches[0].input_ids
    >>> with mask_experts(model, plan):           # the router can no longer pick removed experts
    ...     masked_logits = model(ids).logits
    >>> remove_experts(model, plan).config.num_experts   # slices router rows, biases and fused expert tensors
    8
    >>> torch.allclose(model(ids).logits, masked_logits, atol=1e-5)   # removing is masking
    True
    >>> save_pruned(model, plan, "out/pruned", tokenizer=tokenizer)   # stock from_pretrained loads it
    PosixPath('out/pruned')

Masking adds -inf to the removed experts' router logits (and to their selection-only correction
bias), so removing experts gives the same logits as masking them.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from reapkit.atomic import atomic_directory
from reapkit.compress import nonuniform
from reapkit.errors import InvalidInput, Mismatch
from reapkit.model.discover import architecture_for
from reapkit.model.hooks import forward_hooks
from reapkit.model.layer import MoELayer, moe_layers
from reapkit.model.records import EXPERT_COUNT_NAMES
from reapkit.select.plan import PruningPlan


class _AddToRouterLogits(TorchFunctionMode):
    """While active, adds `offset` [E] to the output of any linear map onto E outputs; counts how often."""

    def __init__(self, offset: torch.Tensor):
        super().__init__()
        self.offset = offset
        self.applied = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear and out.shape[-1] == self.offset.numel():
            out = out + self.offset.to(out.device, out.dtype)
            self.applied += 1
        return out


def check_plan(model, plan: PruningPlan) -> dict[int, MoELayer]:
    """`{decoder layer: MoELayer}` of `model`, after checking `plan` was made for it."""
    layers = {layer.index: layer for layer in moe_layers(model)}
    for index in plan.layers:
        if index not in layers:
            raise Mismatch(
                f"the plan prunes layer {index}, which is not an MoE layer of this model (MoE layers: {sorted(layers)}); "
                "apply plans to the model they were made for"
            )
        have = layers[index].num_experts
        if have != plan.num_experts[index]:
            raise Mismatch(
                f"the plan was made for {plan.num_experts[index]} experts in layer {index} but the model has {have}; "
                "apply plans to the model they were made for (the unpruned model)"
            )
    return layers


@contextlib.contextmanager
def mask_experts(model, plan: PruningPlan):
    """Context manager: inside it, the router of each layer cannot select the plan's removed experts.

    Each time a masked layer's block runs, its router must have added the mask (a linear map onto E
    outputs); a router that computes its logits another way raises instead of silently masking nothing.
    """
    layers = check_plan(model, plan)
    saved_bias, routers, hooks = [], [], {}
    try:
        for index in plan.layers:
            layer, removed = layers[index], plan.removed(index)
            if not removed:
                continue
            router = layer.router
            offset = torch.zeros(plan.num_experts[index])
            offset[removed] = float("-inf")
            mode = _AddToRouterLogits(offset)
            routers.append(
                (router, router.__dict__.get("forward"))
            )  # an instance forward (accelerate hooks, an outer mask)
            router.forward = _masked_forward(router.forward, mode)
            hooks[layer.block] = _check_masked(index, mode)
            bias = layer.selection_bias
            if bias is not None:
                saved_bias.append((bias, bias.detach().clone()))
                with torch.no_grad():
                    bias[..., removed] = float("-inf")
        with forward_hooks(hooks):
            yield model
    finally:
        for router, own_forward in reversed(routers):
            if own_forward is None:
                del router.forward
            else:
                router.forward = own_forward
        with torch.no_grad():
            for bias, original in reversed(saved_bias):
                bias.copy_(original)


def _masked_forward(forward, mode):
    def masked(*args, **kwargs):
        with mode:
            return forward(*args, **kwargs)

    return masked


def _check_masked(index: int, mode: _AddToRouterLogits):
    """A forward hook for a masked block: its router must have applied the mask during this call."""
    seen = [0]

    def hook(module, args, output):
        if mode.applied == seen[0]:
            raise RuntimeError(
                f"mask_experts masked nothing in layer {index}: its block ran, but no linear map onto "
                f"{mode.offset.numel()} router logits did (the router was bypassed or computes its logits "
                "another way), so the removed experts could still be chosen"
            )
        seen[0] = mode.applied

    return hook


@torch.no_grad()
def remove_experts(model, plan: PruningPlan):
    """Remove the plan's pruned experts from `model` in place and update every cached expert count."""
    layers = check_plan(model, plan)
    for index in plan.layers:
        layer, total = layers[index], plan.num_experts[index]
        kept = torch.tensor(plan.kept[index], dtype=torch.long)
        bias = layer.selection_bias
        for tensor in layer.expert_tensors().values():
            tensor.data = tensor.data.index_select(0, kept.to(tensor.device)).contiguous()
        if bias is not None and bias.shape[-1] == total:
            bias.data = bias.data.index_select(-1, kept.to(bias.device)).contiguous()
        for module in layer.router.modules():
            if isinstance(module, torch.nn.Linear):
                module.out_features = module.weight.shape[0]
        for module in layer.block.modules():
            _set_counts(module, total, len(kept))
    if plan.is_uniform:
        arch = next(iter(layers.values())).arch
        total, new = next(iter(plan.num_experts.values())), len(next(iter(plan.kept.values())))
        for obj in (model, getattr(model, "model", None), _decoder(model), model.config.get_text_config()):
            _set_counts(obj, total, new)
        if hasattr(model.config.get_text_config(), arch.num_experts_key):
            setattr(model.config.get_text_config(), arch.num_experts_key, new)
    return model


def _decoder(model):
    try:
        return model.get_decoder()
    except Exception:  # noqa: BLE001 - no decoder accessor
        return None


def _set_counts(obj, old: int, new: int):
    for name in EXPERT_COUNT_NAMES:
        if obj is not None and getattr(obj, name, None) == old and isinstance(getattr(obj, name), int):
            setattr(obj, name, new)


def save_pruned(model, plan: PruningPlan, out, *, tokenizer=None, force: bool = False) -> Path:
    """Save a model whose experts were removed as a stock checkpoint plus `pruning_plan.json`.

    `config.json` carries the new expert count under the architecture's published key and under
    any count key the source checkpoint's config used (read from `model.name_or_path`), so older
    loaders (transformers 4.x, vLLM) read the right number.
    """
    if not plan.is_uniform:
        raise InvalidInput(
            "this plan keeps different numbers of experts per layer, which a stock config.json cannot express; "
            "evaluate the pruned model in memory, save it with reapkit.compress.prune.save_non_uniform(...) and load it "
            "back with reapkit.compress.prune.load_pruned(...), or use a uniform plan (ratio= or keep=) for a stock checkpoint"
        )
    layers = {layer.index: layer for layer in moe_layers(model)}
    arch, new = next(iter(layers.values())).arch, len(next(iter(plan.kept.values())))
    for index in plan.layers:
        have = layers[index].num_experts if index in layers else None
        if have != new:
            raise InvalidInput(
                f"layer {index} has {have} experts, the plan keeps {new}; "
                "call remove_experts(model, plan) before save_pruned"
            )
    with atomic_directory(out, force=force) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        source = Path(model.name_or_path) / "config.json" if getattr(model, "name_or_path", "") else None
        source_config = json.loads(source.read_text()) if source is not None and source.is_file() else {}
        path = _text_config_path(model.config)
        text, source_text = _at(config, path), _at(source_config, path)
        keys = {arch.num_experts_key} | {k for k in EXPERT_COUNT_NAMES if k in text or k in source_text}
        text.update({key: new for key in keys})
        mtp = {k: v for k, v in text.items() if k in MTP_KEYS and v}
        if mtp:  # transformers never builds MTP layers, so the saved checkpoint has none: say so, stay loadable
            text.update({k: 0 for k in mtp})
            plan.provenance["mtp_layers"] = f"left out: transformers does not load them; {mtp} set to 0 in config.json"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        plan.save(tmp / "pruning_plan.json")
    return Path(out)


#: config keys counting multi-token-prediction layers (their weights are dropped by transformers on load)
MTP_KEYS = ("num_nextn_predict_layers", "num_mtp_layers", "mtp_num_layers")


def _text_config_path(config, path=()) -> tuple[str, ...]:
    """Keys leading from `config` to its text config (`()` when it is the text config itself)."""
    target = config.get_text_config()
    if config is target:
        return path
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is target or (sub is not None and hasattr(sub, "get_text_config") and sub.get_text_config() is target):
            return _text_config_path(sub, path + (key,)) if sub is not target else path + (key,)
    return path


def _at(config: dict, path) -> dict:
    for key in path:
        config = config.get(key) or {}
    return config


def prune_checkpoint(model_path, plan: PruningPlan, out, *, force: bool = False, dtype="auto") -> Path:
    """Load `model_path`, remove the plan's experts and save to `out`; the source is never written."""
    from reapkit.model.loading import load_model

    model, tokenizer = load_model(model_path, dtype=dtype)
    remove_experts(model, plan)
    return save_pruned(model, plan, out, tokenizer=tokenizer, force=force)


NON_UNIFORM_WEIGHTS = nonuniform.WEIGHTS


def save_non_uniform(model, plan: PruningPlan, out, *, tokenizer=None, force: bool = False) -> Path:
    """Save a model pruned with a non-uniform plan in reapkit's format (`reapkit.compress.nonuniform`).

    Stock `from_pretrained` cannot read it (its config names one expert count for all layers);
    `load_pruned(out)` rebuilds the per-layer counts and loads the weights, and vLLM reads it through
    reapkit's plugin. A uniform plan is saved as a stock checkpoint instead.
    """
    from safetensors.torch import save_model

    if plan.is_uniform:
        return save_pruned(model, plan, out, tokenizer=tokenizer, force=force)
    with atomic_directory(out, force=force) as tmp:
        model.config.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())  # marked as the format (reapkit.compress.nonuniform)
        config = nonuniform.describe(
            config, plan, architecture=type(model).__name__, num_experts_key=architecture_for(model).num_experts_key
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / NON_UNIFORM_WEIGHTS))
        plan.save(tmp / "pruning_plan.json")
    return Path(out)


def load_pruned(path, *, dtype=None):
    """Load a checkpoint written by `save_pruned` (stock) or `save_non_uniform` (per-layer counts)."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / NON_UNIFORM_WEIGHTS).is_file():
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto").eval()
    model = AutoModelForCausalLM.from_config(nonuniform.original_config(AutoConfig.from_pretrained(path)))
    remove_experts(model, PruningPlan.load(path / "pruning_plan.json"))
    load_model(model, str(path / NON_UNIFORM_WEIGHTS))
    return (model.to(dtype) if dtype else model).eval()
