"""Read an MoE model's structure from its modules and config, so that few records are hand-written.

    >>> read_architecture(model, Architecture("qwen3_moe"))
    Architecture(model_type='qwen3_moe', num_experts_key='num_local_experts', ..., layers='model.layers', block='mlp', router='gate', ..., experts='experts', ...)

- experts: a module transformers decorated with `@use_experts_implementation` that holds its own
  fused 3-D weights with a leading dimension E (its `num_experts`);
- block and layers: the experts module's parent, inside the text decoder's `ModuleList` of layers;
- router: the block's module of the class transformers records `router_logits` from
  (`_can_record_outputs`), else the block's module whose weight has E rows;
- router weight: the router's own 2-D `weight`, else its [E, hidden] parameter (`gate.weight`,
  `wg.weight`); the router's expert tensors: the weight, its module's bias and any other router tensor
  with a leading axis E (per-expert scales); when E equals the hidden size, only those named `*expert*`;
- correction bias: a tensor of the block, outside the experts, named `*correction_bias` or
  `*expert_bias`, last dim E;
- scoring: the config's scoring key, else the ratio of two top-k weights of the router's own output
  (softmax: exp of the logit difference; sigmoid: ratio of sigmoids);
- config keys: the text config's expert-count, top-k and group keys.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from reapkit.errors import UnknownArchitectureError
from reapkit.model.records import (
    ARCHITECTURES,
    EXPERT_COUNT_NAMES,
    SCORING,
    VERIFIED,
    Architecture,
    _read_cache,
    get_path,
)

TOP_K_NAMES = ("num_experts_per_tok", "num_experts_per_token", "moe_k", "moe_topk", "top_k_experts")
N_GROUP_NAMES = ("n_group", "num_expert_group")
TOPK_GROUP_NAMES = ("topk_group",)
SCORING_NAMES = ("scoring_func", "expert_selection_fn", "router_score_function", "score_function")
CORRECTION_BIAS_NAMES = ("correction_bias", "expert_bias")  # selection-only biases: last dimension E
SHARED_NAMES = (
    "n_shared_experts",
    "num_shared_experts",
    "moe_num_shared_experts",
    "shared_expert_intermediate_size",
    "shared_experts_intermediate_size",
)


def text_model_type(config) -> str:
    return config.get_text_config().model_type if hasattr(config, "get_text_config") else config.model_type


def _first_key(config, names, value=None):
    keys = config.to_dict()
    for name in names:
        if name in keys and (value is None or keys[name] == value):
            return name
    return None


def read_config_keys(config, record: Architecture, num_experts: int | None = None) -> Architecture:
    """`record` with its unset config keys read from the text config of `config`."""
    text = config.get_text_config()
    scoring = record.scoring or next(
        (str(text.to_dict()[k]) for k in SCORING_NAMES if text.to_dict().get(k) in SCORING), None
    )
    return replace(
        record,
        num_experts_key=record.num_experts_key
        or _first_key(text, EXPERT_COUNT_NAMES, num_experts)
        or _first_key(text, EXPERT_COUNT_NAMES),
        top_k_key=record.top_k_key or _first_key(text, TOP_K_NAMES),
        n_group_key=record.n_group_key or _first_key(text, N_GROUP_NAMES),
        topk_group_key=record.topk_group_key or _first_key(text, TOPK_GROUP_NAMES),
        scoring=scoring,
    )


def is_fused_experts(module: torch.nn.Module) -> bool:
    """A module decorated by `use_experts_implementation` holding its own [E, ...] 3-D weights."""
    count = getattr(module, "num_experts", None)
    return (
        hasattr(module, "has_gate")
        and hasattr(module, "is_transposed")
        and isinstance(count, int)
        and any(p.dim() == 3 and p.shape[0] == count for p in module.parameters(recurse=False))
    )


def _text_decoder_name(model, names: dict[int, str]) -> str:
    try:
        decoder = model.get_decoder()
    except Exception:  # noqa: BLE001 - models without a decoder accessor: the whole model
        return ""
    return names.get(id(decoder), "")


def _split(name: str) -> tuple[str, str, str]:
    """'model.layers.3.mlp.experts' -> ('model.layers', 'mlp', 'experts')."""
    parts = name.split(".")
    i = max(k for k, part in enumerate(parts) if part.isdigit())
    return ".".join(parts[:i]), ".".join(parts[i + 1 : -1]), parts[-1]


def _router_recorders(model):
    for module in model.modules():
        recorders = (getattr(module, "_can_record_outputs", None) or {}).get("router_logits")
        for recorder in recorders if isinstance(recorders, (list, tuple)) else [recorders]:
            if recorder is not None:
                yield recorder


def _find_router(model, block, experts_name: str, num_experts: int, hidden: int) -> tuple[str, int]:
    """(path in block, index of the logits in its output)."""
    candidates = [(n, m) for n, m in block.named_modules() if n and not n.startswith(experts_name)]
    for recorder in _router_recorders(model):
        target = getattr(recorder, "target_class", None)
        for name, module in candidates:
            if (target is not None and isinstance(module, target)) or (
                recorder.class_name and type(module).__name__.endswith(recorder.class_name)
            ):
                return name, int(recorder.index or 0)
    for name, module in candidates:
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and tuple(weight.shape) == (num_experts, hidden):
            return name, 0
    raise LookupError(f"no router with {num_experts} outputs beside the experts of {type(block).__name__}")


def _find_router_weight(router, num_experts: int, hidden: int) -> str:
    weight = getattr(router, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return "weight"
    for name, tensor in router.named_parameters():
        if tuple(tensor.shape) == (num_experts, hidden):
            return name
    raise LookupError(f"no [{num_experts}, {hidden}] weight in the router {type(router).__name__}")


def _router_expert_tensors(router, weight: str, num_experts: int, hidden: int, skip) -> tuple[str, ...]:
    """Paths in `router` of its tensors with a leading expert axis: the weight, then the rest in module order.

    A tensor of leading size E is taken for a per-expert one unless E equals the hidden size, where
    only the weight's bias and tensors named `*expert*` are (a [hidden] scale would look the same).
    """
    owner = weight.rpartition(".")[0]
    bias = f"{owner}.bias" if owner else "bias"
    tensors = [*router.named_parameters(), *router.named_buffers()]
    found = [
        name
        for name, tensor in tensors
        if name != weight
        and tensor.dim()
        and tensor.shape[0] == num_experts
        and not any(tensor is other for other in skip)
        and (num_experts != hidden or name == bias or "expert" in name.rpartition(".")[2])
    ]
    return (weight, *found)


def _find_correction_bias(block, experts_name: str, num_experts: int) -> str | None:
    tensors = list(block.named_buffers()) + list(block.named_parameters())
    for name, tensor in tensors:
        if (
            not name.startswith(experts_name + ".")
            and name.endswith(CORRECTION_BIAS_NAMES)
            and tensor.shape[-1] == num_experts
        ):
            return name
    return None


def _probe_scoring(router, logits_index: int, hidden: int, bias=None) -> str | None:
    """softmax or sigmoid, from the ratio of the router's own top-k weights (None if it cannot tell).

    A router that takes the block's correction bias as a second argument (minimax_m2) gets it.
    """
    weight = next(router.parameters())
    if weight.is_meta:  # built without weights (observe --sequential): probe a copy with random ones
        router, g = copy.deepcopy(router).to_empty(device="cpu"), torch.Generator().manual_seed(1)
        with torch.no_grad():
            for tensor in [*router.parameters(), *router.buffers()]:
                tensor.copy_(torch.randn(tensor.shape, generator=g) if tensor.is_floating_point() else 0)
        bias = None if bias is None else torch.zeros(bias.shape, dtype=bias.dtype)
        weight = next(router.parameters())
    x = torch.randn(1, 6, hidden, generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype)
    try:
        with torch.no_grad():
            try:
                out = router(x)
            except TypeError:
                out = router(x.reshape(-1, hidden), bias)
        logits, weights, index = out[logits_index].float(), out[1].float(), out[2]
        logits = logits.reshape(-1, logits.shape[-1])
        weights, index = weights.reshape(len(logits), -1), index.reshape(len(logits), -1)
    except Exception:  # noqa: BLE001 - a router with another calling convention: leave scoring unread
        return None
    if weights.shape[1] < 2 or weights.shape[1] != index.shape[1]:
        return None
    chosen = logits.gather(1, index[:, :2].long())
    ratio = (weights[:, 0] / weights[:, 1]).log()
    for name in ("softmax", "sigmoid", "sqrtsoftplus"):
        expected = (
            (chosen[:, 0] - chosen[:, 1])
            if name == "softmax"
            else (SCORING[name](chosen[:, 0]) / SCORING[name](chosen[:, 1])).log()
        )
        if torch.allclose(ratio, expected, atol=1e-4, rtol=1e-4):
            return name
    return None


def read_architecture(model: torch.nn.Module, record: Architecture) -> Architecture:
    """`record` completed from the structure of `model` (raises LookupError when it has no routed experts)."""
    names = {id(m): n for n, m in model.named_modules()}
    decoder = _text_decoder_name(model, names)
    found = [
        (n, m)
        for n, m in model.named_modules()
        if is_fused_experts(m) and n.startswith(decoder + "." if decoder else "")
    ]
    found = [(n, m) for n, m in found if any(part.isdigit() for part in n.split("."))]
    if record.layers is not None and record.block is not None:
        return read_config_keys(model.config, _complete_from_block(model, record))
    if not found:
        raise LookupError(
            f"{type(model).__name__} has no fused experts module (transformers' "
            "@use_experts_implementation) inside numbered decoder layers"
        )
    name, experts = found[0]
    layers, block_path, experts_name = _split(name)
    record = replace(
        record, layers=record.layers or layers, block=record.block or block_path, experts=record.experts or experts_name
    )
    return read_config_keys(model.config, _complete_from_block(model, record), experts.num_experts)


def _complete_from_block(model, record: Architecture) -> Architecture:
    experts_name = record.experts or "experts"
    record = replace(record, experts=experts_name)
    _, block = next(record.moe_blocks(model))
    experts = get_path(block, experts_name)
    hidden = model.config.get_text_config().hidden_size
    num_experts = experts.num_experts
    router, logits_index = (
        (record.router, record.logits_index or 0)
        if record.router
        else _find_router(model, block, experts_name, num_experts, hidden)
    )
    if record.logits_index is not None:
        logits_index = record.logits_index
    shared = record.shared_experts or next(
        (n for n, _ in block.named_children() if "shared" in n and isinstance(getattr(block, n), torch.nn.Module)), None
    )
    correction_bias = record.correction_bias or _find_correction_bias(block, experts_name, num_experts)
    router_module = get_path(block, router)
    router_weight = record.router_weight or _find_router_weight(router_module, num_experts, hidden)
    selection_bias = [get_path(block, correction_bias)] if correction_bias else []
    record = replace(
        record,
        router=router,
        router_weight=router_weight,
        router_expert_tensors=record.router_expert_tensors
        or _router_expert_tensors(router_module, router_weight, num_experts, hidden, selection_bias),
        logits_index=logits_index,
        shared_experts=shared,
        correction_bias=correction_bias,
    )
    if record.scoring is None:
        scoring = read_config_keys(model.config, record).scoring or _probe_scoring(
            get_path(block, router), logits_index, hidden, record.correction_bias_of(block)
        )
        record = replace(record, scoring=scoring or "softmax")
    return record


def moe_model_types() -> list[str]:
    """Model types of the installed transformers whose experts go through the experts interface."""
    import re
    from pathlib import Path

    import transformers

    pattern = re.compile(r"use_experts_implementation|ExpertsInterface")
    files = Path(transformers.__file__).parent.glob("models/*/modeling_*.py")
    return sorted({f.parent.name for f in files if pattern.search(f.read_text(encoding="utf-8"))})


def _scoring_in_source(model_type: str) -> str | None:
    """The scoring function named in the forward of the class transformers records `router_logits` from."""
    import importlib
    import inspect

    try:
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        classes = [getattr(module, name) for name in dir(module)]
        recorders = [
            r for c in classes for r in _as_list((getattr(c, "_can_record_outputs", None) or {}).get("router_logits"))
        ]
        source = inspect.getsource(recorders[0].target_class.forward)
    except Exception:  # noqa: BLE001 - no recorded router class: scoring is read from the router when loaded
        return None
    found = [name for name in ("sqrtsoftplus", "sigmoid", "softmax") if name in source]
    return found[0] if len(found) == 1 else None


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [] if value is None else [value]


def architecture_rows() -> list[dict]:
    """One row per MoE model type: what reapkit reads from its config class and the table, and its status."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    rows = []
    for model_type in sorted(set(moe_model_types()) | set(ARCHITECTURES)):
        record = ARCHITECTURES.get(model_type, Architecture(model_type))
        row = dict(
            model_type=model_type,
            experts_key="",
            scoring="",
            groups="",
            shared="",
            verified="yes" if model_type in VERIFIED else "no",
            why_not=record.unsupported,
        )
        try:
            config = CONFIG_MAPPING[model_type]()
        except Exception as error:  # noqa: BLE001 - a type whose config class does not build: say so
            row["why_not"] = row["why_not"] or f"its config class does not build: {type(error).__name__}"
            rows.append(row)
            continue
        arch, text = read_config_keys(config, record), config.get_text_config().to_dict()
        row["experts_key"] = arch.num_experts_key or ""
        row["scoring"] = arch.scoring or _scoring_in_source(model_type) or "read from router"
        row["groups"] = arch.n_group_key or "-"
        row["shared"] = "yes" if any(text.get(k) for k in SHARED_NAMES) else "no"
        if not row["why_not"] and row["verified"] == "no":
            row["why_not"] = record.notes or "not verified by the test suite yet"
        rows.append(row)
    return rows


def architectures_markdown(rows: list[dict] | None = None) -> str:
    """The README's table of architectures (what `reapkit architectures --markdown` prints)."""
    rows = architecture_rows() if rows is None else rows
    lines = [
        "| model type | expert-count key | router scoring | groups | shared experts | verified |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model_type']} | {r['experts_key'] and '`' + r['experts_key'] + '`'} | {r['scoring']} | "
        f"{r['groups']} | {r['shared']} | {r['verified']} |"
        for r in rows
        if not r["why_not"]
    ]
    missing = [r for r in rows if r["why_not"]]
    if missing:
        lines += ["", "Not supported:", ""] + [f"- {r['model_type']}: {r['why_not']}" for r in missing]
    verified = sum(r["verified"] == "yes" for r in rows)
    lines += ["", f"{verified} of {len(rows)} model types verified by the test suite."]
    return "\n".join(lines) + "\n"


def architecture_for(model_or_config) -> Architecture:
    """The `Architecture` of a model (read from its modules) or of a config (its record and config keys)."""
    is_model = isinstance(model_or_config, torch.nn.Module)
    config = getattr(model_or_config, "config", model_or_config)
    model_type = text_model_type(config)
    record = ARCHITECTURES.get(model_type) or ARCHITECTURES.get(config.model_type)
    if record is not None and record.unsupported:
        raise UnknownArchitectureError(f"reapkit cannot prune {model_type!r}: {record.unsupported}")
    if not is_model:
        if record is None:
            raise UnknownArchitectureError(
                _unknown(model_type, "give the model, not its config, to read its structure")
            )
        return read_config_keys(config, record)
    key = (type(model_or_config), record)
    if key not in _read_cache:
        try:
            _read_cache[key] = read_architecture(model_or_config, record or Architecture(model_type))
        except LookupError as error:
            raise UnknownArchitectureError(_unknown(model_type, str(error))) from None
    return _read_cache[key]


def _unknown(model_type: str, why: str) -> str:
    return (
        f"reapkit does not know the MoE architecture {model_type!r} ({why}). Verified: {', '.join(sorted(VERIFIED))}. "
        f"To add it, describe what "
        f"cannot be read: reapkit.register_architecture(reapkit.Architecture({model_type!r}, "
        f"num_experts_key=..., router=..., experts=...))"
    )
