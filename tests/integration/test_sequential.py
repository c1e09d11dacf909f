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
    partial = tmp_path / "partial"
    model.save_pretrained(partial)
    tensors = load_file(partial / "model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if "layers.1.mlp.gate." not in k},
        partial / "model.safetensors",
        metadata={"format": "pt"},
    )
    return [
        (plain, "holds no .safetensors weights"),
        (sharded, f"names shard(s) {lost}"),
        (partial, "has no weights for model.layers.1.mlp.gate.weight"),
    ]


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
