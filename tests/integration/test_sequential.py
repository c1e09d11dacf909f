"""Layer-by-layer calibration (`observe --sequential`) gives the statistics of in-memory `observe`."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_checkpoint, tiny_model

from reapkit.model.records import _read_cache
from reapkit.observe.observations import Observations
from reapkit.observe.recorder import observe
from reapkit.observe.sequential import observe_sequential
from reapkit.run.cli import main


def assert_same(a: Observations, b: Observations, rtol=1e-6):
    assert a.domains == b.domains and a.meta["fingerprint"] == b.meta["fingerprint"]
    assert a.meta["calibration"]["tokens"] == b.meta["calibration"]["tokens"]
    for domain in a.domains:
        for name, value in a.stats[domain].items():
            other = b.stats[domain][name]
            scale = value.double().abs().max().clamp_min(1e-30)
            assert (value.double() - other.double()).abs().max() <= rtol * scale, (domain, name)


@pytest.mark.parametrize(
    "name, shard_size, group_size, spill",
    [
        ("qwen3_moe", "30KB", 1, True),  # sharded with an index; one batch per group; hidden states on disk
        ("qwen3_next", None, 2, False),  # hybrid: linear-attention and full-attention layers get different masks
        ("deepseek_v3", None, 8, True),  # dense first layer, group-limited sigmoid routing, MLA
        ("gpt_oss", None, 2, False),  # transposed, biased experts; sliding-window layers
    ],
)
def test_sequential_equals_in_memory(tmp_path, batches, name, shard_size, group_size, spill):
    model = tiny_model(name)
    folder = tmp_path / "model"
    model.save_pretrained(folder, **({"max_shard_size": shard_size} if shard_size else {}))
    if shard_size:
        assert (folder / "model.safetensors.index.json").is_file()
    spill_dir = tmp_path / "spill" if spill else None
    expected = observe(model, batches, progress=False)
    _read_cache.clear()  # as in a fresh process: the structure is read from the model built on the meta device
    got = observe_sequential(folder, batches, group_size=group_size, spill_dir=spill_dir, progress=False)
    assert_same(expected, got)
    assert got.layers == expected.layers and got.num_experts == expected.num_experts
    if spill:
        assert spill_dir.is_dir() and not list(spill_dir.iterdir())  # spilled hidden states are removed


def test_cli_sequential_equals_cli_observe(tmp_path):
    folder, spec = tiny_checkpoint(tmp_path)
    common = ["--data", spec, "--batch-size", "3"]
    assert main(["observe", str(folder), *common, "--out", str(tmp_path / "mem")]) == 0
    assert (
        main(
            [
                "observe",
                str(folder),
                *common,
                "--sequential",
                "--group-size",
                "2",
                "--spill-dir",
                str(tmp_path / "spill"),
                "--out",
                str(tmp_path / "seq"),
            ]
        )
        == 0
    )
    assert_same(Observations.load(tmp_path / "mem"), Observations.load(tmp_path / "seq"))


def _bad_checkpoints(tmp_path):
    """(folder, expected message) for each kind of unusable checkpoint."""
    model = tiny_model("qwen3_moe")
    plain = tmp_path / "bin"
    model.save_pretrained(plain)
    for file in plain.glob("*.safetensors"):
        torch.save(load_file(file), plain / "pytorch_model.bin")
        file.unlink()
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="30KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    lost = max(index["weight_map"].values())
    (sharded / lost).unlink()
    moved = tmp_path / "moved"  # the index puts a tensor in a shard that does not hold it
    model.save_pretrained(moved, max_shard_size="30KB")
    index = json.loads((moved / "model.safetensors.index.json").read_text())
    first, last = min(index["weight_map"].values()), max(index["weight_map"].values())
    name = next(k for k, v in index["weight_map"].items() if v == first)
    index["weight_map"][name] = last
    (moved / "model.safetensors.index.json").write_text(json.dumps(index))
    partial, experts = tmp_path / "partial", tmp_path / "experts"
    for folder, lose in ((partial, "layers.1.mlp.gate."), (experts, "layers.1.mlp.experts.7.")):
        model.save_pretrained(folder)
        tensors = load_file(folder / "model.safetensors")
        save_file(
            {k: v for k, v in tensors.items() if lose not in k}, folder / "model.safetensors", metadata={"format": "pt"}
        )
    cases = [
        (plain, "holds no .safetensors weights"),
        (sharded, f"names shard(s) missing from {sharded}: {lost}"),
        (moved, f"puts 1 tensor(s) in shards that do not hold them (first: {name} in {last})"),
        (partial, "has no weights for model.layers.1.mlp.gate.weight"),
        (experts, "stores 7 of the 8 experts' tensors that make model.layers.1.mlp.experts."),
    ]
    for cut in (100, 20):  # inside the tensor data (an interrupted download), inside the header
        folder = tmp_path / f"cut-{cut}"
        model.save_pretrained(folder, max_shard_size="30KB")
        shard = folder / min(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) - cut] if cut == 100 else data[:cut])
        cases.append((folder, f"the shard {shard} is incomplete"))
    return cases


def test_unusable_checkpoints_get_one_clear_message(tmp_path, capsys):
    spec = tmp_path / "ids.jsonl"
    spec.write_text("[5, 6, 7, 8]\n[9, 10, 11]\n")
    cases = _bad_checkpoints(tmp_path)
    capsys.readouterr()
    for folder, message in cases:
        out = tmp_path / f"obs-{folder.name}"
        assert main(["observe", str(folder), "--data", str(spec), "--sequential", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()  # progress bars, then the error on one line
        assert message in err.splitlines()[-1] and "Traceback" not in err, err
        assert not out.exists()


def test_options_that_do_not_go_together(tmp_path, capsys):
    folder, spec = tiny_checkpoint(tmp_path)
    for extra, message in [
        (["--sequential", "--device-map", "auto"], "drop --device-map"),
        (["--spill-dir", str(tmp_path / "s")], "add --sequential"),
    ]:
        assert main(["observe", str(folder), "--data", spec, *extra, "--out", str(tmp_path / "obs")]) == 2
        assert message in capsys.readouterr().err
