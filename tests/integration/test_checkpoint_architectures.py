"""Every verified architecture, saved as `save_pretrained` writes it, read back from disk by reapkit's one checkpoint reader:

- streaming prune writes bitwise the tensors that in-memory `remove_experts` + `save_pruned` write;
- `observe_sequential` (one decoder layer at a time) gives exactly the statistics of in-memory `observe`.
"""

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import ARCHS, tiny_model

from reapkit.compress.prune import remove_experts, save_pruned
from reapkit.compress.stream import stream_prune
from reapkit.model.records import _read_cache
from reapkit.observe.recorder import observe
from reapkit.observe.sequential import observe_sequential
from reapkit.select.plan import PruningPlan


def stored(folder) -> dict[str, torch.Tensor]:
    return {k: v for shard in sorted(folder.glob("*.safetensors")) for k, v in load_file(shard).items()}


@pytest.mark.parametrize("name", ARCHS)
def test_streamed_prune_and_sequential_observe_equal_in_memory(name, batches, tmp_path):
    model = tiny_model(name)
    model.save_pretrained(tmp_path / "source")  # the hub layout: one tensor per expert (fused for a few types)
    expected = observe(model, batches, progress=False)

    _read_cache.clear()  # as in a fresh process: the structure is read from the model built on the meta device
    got = observe_sequential(tmp_path / "source", batches, group_size=2, progress=False)
    assert got.meta["fingerprint"] == expected.meta["fingerprint"] and got.domains == expected.domains
    unequal = [
        (d, k) for d in expected.domains for k, v in expected.stats[d].items() if not torch.equal(v, got.stats[d][k])
    ]
    assert not unequal, unequal

    plan = PruningPlan.from_observations(expected, "reap", keep=4)
    stream_prune(tmp_path / "source", plan, tmp_path / "stream", progress=False)
    remove_experts(model, plan)
    save_pruned(model, plan, tmp_path / "memory")
    streamed, in_memory = stored(tmp_path / "stream"), stored(tmp_path / "memory")
    assert sorted(streamed) == sorted(in_memory)
    differ = [k for k, v in streamed.items() if v.dtype != in_memory[k].dtype or not torch.equal(v, in_memory[k])]
    assert not differ, differ[:5]
