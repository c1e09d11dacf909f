"""One MoE layer of a model, bound to its modules: router, experts, expert count, top-k, selection bias.

    >>> layer = moe_layers(model)[0]
    >>> layer.index, layer.top_k                           # decoder-layer index, experts per token
    (0, 2)
    >>> layer.router_weight.shape == (layer.num_experts, model.config.hidden_size)   # wherever the router keeps it
    True
    >>> sorted(layer.expert_tensors())                     # every tensor with a leading expert axis
    ['experts.down_proj', 'experts.gate_up_proj', 'gate.weight']

Everything is found through the model's `Architecture` record (`reapkit.model.records`), never by
guessing from shapes: the experts module's own fused tensors, the router tensors the record names
(its weight, a bias, per-expert scales) and the selection-only bias, whose *last* axis is the
expert axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reapkit.model.discover import architecture_for
from reapkit.model.records import Architecture, get_path

__all__ = ["MoELayer", "moe_layers"]


@dataclass(frozen=True, eq=False)
class MoELayer:
    """The MoE block of decoder layer `index`, read through `arch`."""

    index: int
    block: torch.nn.Module
    arch: Architecture
    top_k: int

    @property
    def router(self) -> torch.nn.Module:
        return self.arch.router_of(self.block)

    @property
    def router_weight(self) -> torch.Tensor:
        """The router's [E, hidden] weight."""
        return self.arch.router_weight_of(self.block)

    @property
    def router_weight_path(self) -> str:
        """Dotted path of the router weight from the block, e.g. ``gate.weight`` or ``router.gate.weight``."""
        return f"{self.arch.router}.{self.arch.router_weight}"

    @property
    def experts(self) -> torch.nn.Module:
        return self.arch.experts_of(self.block)

    @property
    def num_experts(self) -> int:
        return int(self.experts.num_experts)

    @property
    def selection_bias(self) -> torch.Tensor | None:
        """The bias added to router scores for selection only (last axis: experts), or None."""
        return self.arch.correction_bias_of(self.block)

    def expert_tensors(self, *, router: bool = True) -> dict[str, torch.Tensor]:
        """`{path from the block: tensor}` of every parameter and buffer whose first axis is the expert axis.

        The experts module's own tensors, then (unless ``router=False``) the router's per-expert ones.
        The selection bias is not among them (its expert axis is the last one).
        """
        experts = self.experts
        found = {
            f"{self.arch.experts}.{name}": tensor
            for name, tensor in [*experts.named_parameters(recurse=False), *experts.named_buffers(recurse=False)]
        }
        if router:
            found |= {f"{self.arch.router}.{p}": get_path(self.router, p) for p in self.arch.router_expert_tensors}
        for name, tensor in found.items():
            if tensor.dim() == 0 or tensor.shape[0] != self.num_experts:
                raise RuntimeError(
                    f"{name} of layer {self.index} has shape {tuple(tensor.shape)}, not a leading axis of its "
                    f"{self.num_experts} experts; the architecture record {self.arch.model_type!r} does not describe it"
                )
        return found


def moe_layers(model: torch.nn.Module, arch: Architecture | None = None) -> list[MoELayer]:
    """The `MoELayer` of every decoder layer of `model` that routes to experts, in order (dense layers skipped)."""
    arch = architecture_for(model) if arch is None else arch
    top_k = arch.top_k(model.config.get_text_config())
    return [MoELayer(index, block, arch, top_k) for index, block in arch.moe_blocks(model)]
