"""eval_mode and forward_hooks put everything back, also when the block raises."""

import pytest
import torch

from reapkit.model.hooks import eval_mode, forward_hooks


def _net():
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 1))


def test_eval_mode_restores_each_submodule_even_after_an_error():
    net, other = _net().train(), _net().eval()
    net[1].eval()  # a mixed state comes back as it was, not as net.training
    before = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError, match="boom"), eval_mode(net, other, net):
        assert not any(m.training for m in net.modules()) and not other.training
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == before == [True, True, False, True]
    assert not any(m.training for m in other.modules())


def test_forward_hooks_see_outputs_and_are_removed_even_after_an_error():
    net = _net()
    seen = []
    hooks = {
        net[0]: lambda m, args, out: seen.append(("first", out.shape[-1])),
        net[2]: lambda m, args, out: seen.append(("last", out.shape[-1])),
    }
    with pytest.raises(ValueError), forward_hooks(hooks) as handles:
        assert len(handles) == 2
        net(torch.zeros(1, 2))
        raise ValueError
    assert seen == [("first", 3), ("last", 1)]
    assert all(len(m._forward_hooks) == 0 for m in net.modules())
    net(torch.zeros(1, 2))
    assert len(seen) == 2


def test_forward_hooks_with_kwargs_and_replaced_output():
    layer = torch.nn.Linear(2, 2)
    captured = {}

    def hook(module, args, kwargs, output):
        captured["args"] = args
        return output * 0

    with forward_hooks({layer: hook}, with_kwargs=True):
        assert torch.equal(layer(torch.ones(1, 2)), torch.zeros(1, 2))
    assert captured["args"][0].shape == (1, 2)
    assert layer(torch.ones(1, 2)).abs().sum() > 0
