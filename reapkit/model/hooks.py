"""Context managers that change a model for the length of a `with` block and always change it back.

    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> seen = []
    >>> with eval_mode(layer), forward_hooks({layer: lambda module, args, output: seen.append(output.shape)}):
    ...     _ = layer(torch.zeros(3, 2))
    ...     layer.training
    False
    >>> seen, layer.training, len(layer._forward_hooks)
    ([torch.Size([3, 2])], True, 0)

Both restore what they changed in `finally`, so an exception inside the block leaves no hook
behind and no module in the wrong mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

__all__ = ["eval_mode", "forward_hooks"]


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """Put `models` in eval mode inside the block; give every submodule its own mode back after it.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 2)).train()
    >>> with eval_mode(net):
    ...     [m.training for m in net.modules()]
    [False, False, False]
    >>> [m.training for m in net.modules()]
    [True, True, True]

    The same model may be named twice (e.g. a model compared with itself).
    """
    states = [(module, module.training) for model in models for module in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in reversed(states):
            module.training = training


@contextlib.contextmanager
def forward_hooks(hooks: Mapping[torch.nn.Module, Callable], *, with_kwargs: bool = False) -> Iterator[list]:
    """Register `hooks` ({module: fn}) as forward hooks inside the block; remove them all after it.

    `fn(module, args, output)` is PyTorch's forward hook (its return value, if not None, replaces
    the output); with ``with_kwargs=True`` it is `fn(module, args, kwargs, output)`. Yields the
    handles.

    >>> import torch
    >>> a, b = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)
    >>> shapes = {}
    >>> def record(module, args, output):
    ...     shapes[module] = tuple(output.shape)
    >>> with forward_hooks({a: record, b: record}):
    ...     _ = b(a(torch.zeros(4, 2)))
    >>> shapes[a], shapes[b], len(a._forward_hooks)
    ((4, 3), (4, 1), 0)
    """
    handles = []
    try:
        for module, fn in hooks.items():
            handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs))
        yield handles
    finally:
        for handle in handles:
            handle.remove()
