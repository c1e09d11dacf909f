"""Per-sequence losses of a model changed from one decoder layer on: the layers before it replayed, not rerun.

    >>> from reapkit.compress.prune import mask_experts
    >>> from reapkit.measure.evaluate import sequence_metrics
    >>> from reapkit.select.plan import PruningPlan
    >>> only_3 = {x: kept if x == 3 else list(range(16)) for x, kept in plan.kept.items()}
    >>> last = PruningPlan(only_3, plan.num_experts, "reap")          # the plan's cut in layer 3 alone
    >>> inputs = layer_inputs(model, eval_batches, 3)                  # once, unchanged model
    >>> with mask_experts(model, last):
    ...     losses, tokens = sequence_losses(model, eval_batches, replay=inputs)   # layers 0-2 replayed
    ...     full = sequence_metrics(model, eval_batches, progress=False)          # every layer run
    >>> bool(np.allclose(losses, full.loss * full.tokens, rtol=1e-5)), bool((tokens == full.tokens).all())
    (True, True)

A change inside decoder layer L (experts masked there) leaves every layer before L as it was, so
their output need not be computed again for each variant. `layer_inputs` runs the model once per
batch and keeps what decoder layer L - 1 returns (for L = 0, nothing); `sequence_losses` then runs
the model's own forward with every layer before L returning that kept output, so layer L receives
exactly the arguments of a full forward (hidden states, attention mask of its type, position
embeddings) and the model's own final norm and output head follow. Nothing per architecture: the
decoder layers are found through the model's `Architecture` record. `layer_inputs` checks once that
the replayed forward gives the losses of the full one, and falls back to full forwards (`None`) for a
model whose forward does more between its layers than pass each one's output to the next.

The losses are those of `reapkit.measure.evaluate.sequence_metrics` (target positions, padding
never counted), as loss sums (nats) and target tokens per sequence, for sequences with a target.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.nn import functional as F

from reapkit.errors import InvalidInput, Mismatch
from reapkit.measure.evaluate import _check_ids, _device, _target_mask
from reapkit.model.discover import architecture_for
from reapkit.model.hooks import eval_mode
from reapkit.model.records import get_path

__all__ = ["Replay", "layer_inputs", "sequence_losses"]


class Replay:
    """What decoder layer `start - 1` returned on each batch (`outputs[i]`: batch i), for forwards from `start` on."""

    def __init__(self, start: int, outputs: list, batches):
        self.start, self.outputs, self.batches = start, outputs, batches


class _Stop(Exception):
    pass


def _decoder_layers(model) -> list:
    return list(get_path(model, architecture_for(model).layers))


def _logits(model, batch, replayed: dict) -> torch.Tensor:
    """The model's own forward on `batch`, each module in `replayed` returning its given output instead of running."""
    owned = {module: module.__dict__.get("forward") for module in replayed}  # instance forwards (accelerate hooks)
    try:
        for module, output in replayed.items():
            module.forward = lambda *args, _output=output, **kwargs: _output
        device = _device(model)
        out = model(
            input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False
        )
    finally:
        for module, own in owned.items():
            if own is None:
                del module.forward
            else:
                module.forward = own
    return out.logits


def _losses(model, batches, replay: Replay | None) -> tuple[np.ndarray, np.ndarray]:
    layers = _decoder_layers(model) if replay is not None else []
    sums, counts = [], []
    with eval_mode(model), torch.inference_mode():
        for i, batch in enumerate(batches):
            replayed = {layer: replay.outputs[i] for layer in layers[: replay.start]} if replay else {}
            logits = _logits(model, batch, replayed).float()  # [B, T, V]
            mask = _target_mask(batch.attention_mask).to(logits.device)
            targets = torch.full(mask.shape[:1] + logits.shape[1:2], -100, device=logits.device)
            targets[:, :-1] = torch.where(mask, batch.input_ids.to(logits.device)[:, 1:], -100)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # 0 where ignored
            loss = loss.view(targets.shape).double().sum(1)
            tokens = mask.sum(1)
            keep = (tokens > 0).cpu()
            sums.append(loss.cpu()[keep].numpy())
            counts.append(tokens.cpu()[keep].numpy())
    return np.concatenate(sums).astype(np.float64), np.concatenate(counts).astype(np.float64)


def sequence_losses(model, batches, *, replay: Replay | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(loss sums, target tokens)` per sequence with a target, in batch order: the model's full forward,
    or with `replay` (from `layer_inputs` on the same batches) only the layers from `replay.start` on.

    Run it inside the change (e.g. `mask_experts`); the change must leave the layers before
    `replay.start` alone, which is what makes the replayed forward equal the full one.
    """
    if replay is not None and replay.batches is not batches:
        raise Mismatch(
            "the replay was made by layer_inputs on other batches; pass the same batches (the same list) to both"
        )
    _check_ids(model, batches)
    return _losses(model, batches, replay)


def layer_inputs(model, batches, start: int, *, full: tuple | None = None) -> Replay | None:
    """What decoder layer `start` receives on each batch, kept as the output of layer `start - 1`, for
    `sequence_losses(..., replay=)`; None (full forwards) for `start` 0 or a model whose replayed
    forward does not give the full forward's losses (`full`: `sequence_losses(model, batches)` if
    already computed). Run it on the unchanged model: a forward up to layer `start - 1`, one from
    layer `start` on (and one full one without `full`) per batch.
    """
    layers = _decoder_layers(model)
    if not 0 <= start < len(layers):
        raise InvalidInput(
            f"decoder layer {start} does not exist: the model has {len(layers)}; give a layer from 0 to {len(layers) - 1}"
        )
    if start == 0:
        return None
    _check_ids(model, batches)
    outputs = []

    def keep(module, args, output):
        outputs.append(output)
        raise _Stop  # the layers after it are not needed

    handle = layers[start - 1].register_forward_hook(keep)
    try:
        with eval_mode(model), torch.inference_mode():
            for batch in batches:
                try:
                    _logits(model, batch, {})
                except _Stop:
                    pass
    finally:
        handle.remove()
    replay = Replay(start, outputs, batches)
    if len(outputs) == len(batches):  # the forward called that layer once per batch
        full = _losses(model, batches, None) if full is None else full
        if all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(full, _losses(model, batches, replay))):
            return replay
    warnings.warn(
        f"{type(model).__name__}'s forward does more between its decoder layers than pass each one's output on: "
        f"the layers before {start} cannot be replayed, every forward runs them (the same losses, more slowly)",
        stacklevel=2,
    )
    return None
