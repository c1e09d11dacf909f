"""Per-expert statistics of a checkpoint's expert weights, read shard by shard without building the model.

    >>> from reapkit.model import DEMO_PATH               # any local checkpoint folder
    >>> from reapkit.select.criteria import score
    >>> weights = weight_statistics(DEMO_PATH)           # Observations with one domain, "weights"
    >>> weights.domains, sorted(weights.stats["weights"])
    (['weights'], ['weight_abs_sum', 'weight_numel', 'weight_sq_sum'])
    >>> score(weights, "aimer").shape                    # the calibration-free AIMER criterion
    (4, 16)

Calibration-free criteria (`aimer`) need no calibration data, only each expert's weight matrices:
for every MoE layer and expert *j*, the sums Σ|w|, Σw² and the number of elements over *j*'s
weight matrices (``gate_up_proj`` and ``down_proj`` as the model holds them, or the per-expert
``gate_proj``, ``up_proj``, ``down_proj`` the hub stores; biases are not weight matrices and are
left out, as AIMER's code, ZongfangLiu/AIMER @fcf8e28 ``src/calib_free_prune.py``, leaves them out). Sums over elements do not depend on how a layout
orders, transposes or interleaves them, so each stored tensor is read as it is: a per-expert
tensor whole, a fused ``[E, ...]`` tensor one expert slice at a time. The model is built on the
meta device only to learn which stored tensor belongs to which expert (transformers' own
renamings) and to fingerprint its routers, so memory peaks at about one expert's tensor whatever
the model's size.

The result is an ordinary `Observations` (fingerprinted like observations of the model, so plans
made from it are checked against the model and the checkpoint as any other), holding the three
``weight_*`` statistics of `reapkit.observe.statistics` in one domain, ``weights``.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

from reapkit import __version__
from reapkit.errors import CheckpointError, InvalidInput, Mismatch
from reapkit.model.checkpoint import Checkpoint, Renamer, load_tensors
from reapkit.model.discover import architecture_for
from reapkit.model.layer import moe_layers
from reapkit.observe.observations import Observations, model_shape

__all__ = ["DOMAIN", "FLOAT_DTYPES", "weight_statistics", "with_weight_statistics"]

#: The one domain of weight statistics.
DOMAIN = "weights"
#: Stored dtypes read as weights (safetensors names); anything else is a quantised layout.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def weight_statistics(path) -> Observations:
    """`Observations` holding ``weight_abs_sum``, ``weight_sq_sum`` and ``weight_numel`` [layers, experts]
    of the checkpoint folder `path`, read tensor by tensor (see the module docstring)."""
    path = Path(path)
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise InvalidInput(
            f"{path} is not a checkpoint folder (config.json and safetensors shards); weight-only criteria such "
            "as aimer read a model's expert weights: give the model folder (hf download MODEL --local-dir DIR)"
        )
    checkpoint = Checkpoint.open(path)
    model = checkpoint.meta_model()
    arch = architecture_for(model)
    layers = moe_layers(model, arch)
    if not layers:
        raise InvalidInput(f"{path} holds no MoE layer ({arch.model_type}); weight statistics are per expert")
    names = {id(module): name for name, module in model.named_modules()}
    renamer = Renamer(model)
    width = max(layer.num_experts for layer in layers)
    owner, routers, expected = {}, [], torch.zeros(len(layers), width, dtype=torch.float64)
    for pos, layer in enumerate(layers):
        prefix = names[id(layer.experts)]
        for name, param in layer.experts.named_parameters(recurse=False):
            if not name.endswith("bias"):
                owner[f"{prefix}.{name}"] = (pos, prefix)
                expected[pos, : layer.num_experts] += param[0].numel()
    for name in checkpoint.tensors:
        target = renamer.target(name)[0]
        if target is not None and any(target.startswith(names[id(layer.router)] + ".") for layer in layers):
            routers.append(name)
    stats = {n: torch.zeros(len(layers), width, dtype=torch.float64) for n in _NAMES}
    with checkpoint.reading() as read:
        load_tensors(model, renamer, read, routers, device="cpu")  # the routers only: for the fingerprint
    with contextlib.ExitStack() as stack:
        shards = {}  # each shard opened once, closed when all is read
        for name, stored in checkpoint.tensors.items():
            target = renamer.target(name)[0]
            if target not in owner:
                continue
            pos, prefix = owner[target]
            if stored.dtype not in FLOAT_DTYPES:
                raise InvalidInput(
                    f"{name} is stored as {stored.dtype}, a quantised layout; weight statistics need the float "
                    "weights: use the unquantised checkpoint"
                )
            if stored.shard not in shards:
                shards[stored.shard] = stack.enter_context(checkpoint.opened(stored.shard))
            for expert, value in _expert_pieces(
                shards[stored.shard], stored, renamer.model_name(name), prefix, layers[pos]
            ):
                value = value.float()  # as AIMER's code computes; the sums are kept in float64
                stats["weight_abs_sum"][pos, expert] += value.abs().sum(dtype=torch.float64)
                stats["weight_sq_sum"][pos, expert] += value.square().sum(dtype=torch.float64)
                stats["weight_numel"][pos, expert] += value.numel()
    short = (stats["weight_numel"] != expected).nonzero().tolist()
    if short:
        pos, expert = short[0]
        raise CheckpointError(
            f"{path} stores {int(stats['weight_numel'][pos, expert])} weight elements of expert {expert} of layer "
            f"{layers[pos].index}, its config.json builds {int(expected[pos, expert])}; the checkpoint is incomplete "
            "or quantised (weight statistics need the float weights)"
        )
    meta = {
        "reapkit_version": __version__,
        **model_shape(model),
        "calibration": {"source": "expert weights (no calibration data)", "checkpoint": str(path), "tokens": {}},
        "missing": {},
    }
    return Observations({DOMAIN: stats}, meta)


_NAMES = ("weight_abs_sum", "weight_sq_sum", "weight_numel")


def with_weight_statistics(obs: Observations, path) -> Observations:
    """`obs` with the weight statistics of checkpoint folder `path` added to every calibration domain, so
    one set of observations scores both kinds of criteria (the calibration ones and `aimer`).

        >>> from reapkit.model import DEMO_PATH
        >>> from reapkit.select.criteria import score
        >>> obs = with_weight_statistics(obs, DEMO_PATH)     # observations of the demo model
        >>> score(obs, "aimer").shape
        (4, 16)

    The sums are the same in every domain; `aimer` is a ratio of means, so pooling domains leaves it
    unchanged. Observations of another model are refused.
    """
    weights = weight_statistics(path)
    if weights.meta["fingerprint"] != obs.meta["fingerprint"]:
        raise Mismatch(
            f"the observations are of another model than {path} (router fingerprints differ); "
            "give the folder of the model they observed"
        )
    stats = {domain: {**held, **weights.stats[DOMAIN]} for domain, held in obs.stats.items()}
    missing = {n: why for n, why in (obs.meta.get("missing") or {}).items() if n not in _NAMES}
    return Observations(stats, {**obs.meta, "missing": missing})


def _expert_pieces(f, stored, key: str, prefix: str, layer):
    """`(expert, tensor)` for the stored tensor `stored` (model name `key`) of the open shard `f`: the whole of a
    per-expert tensor, or each expert's slice of a fused one, read one at a time."""
    found = re.match(re.escape(prefix) + r"\.(\d+)\.", key)
    if found:
        yield int(found.group(1)), f.get_tensor(stored.name)
        return
    if not stored.shape or stored.shape[0] != layer.num_experts:
        raise CheckpointError(
            f"{stored.name} (shape {list(stored.shape)}) does not have the {layer.num_experts} experts of layer "
            f"{layer.index} on its first dimension, so reapkit cannot tell which part belongs to which expert"
        )
    rows = f.get_slice(stored.name)
    for expert in range(layer.num_experts):
        yield expert, rows[expert : expert + 1]
