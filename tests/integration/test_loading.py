"""Models loaded straight onto devices (accelerate device maps, disk offload) observe and evaluate like one device."""

import pytest
from test_sequential import assert_same
from tiny_models import tiny_checkpoint, tiny_model

from reapkit.measure.evaluate import evaluate
from reapkit.model.loading import load_model, parse_max_memory
from reapkit.observe.observations import Observations
from reapkit.observe.recorder import observe
from reapkit.run.cli import main

# embeddings ~24 KB, one MoE layer ~230 KB (float32): 300 KB of CPU holds the embeddings and one layer
PLACEMENTS = {
    "explicit": dict(
        device_map={
            "model.embed_tokens": "cpu",
            "model.rotary_emb": "cpu",
            "model.layers.0": "cpu",
            "model.layers.1": "disk",
            "model.norm": "cpu",
            "lm_head": "disk",
        }
    ),
    "auto": dict(device_map="auto", max_memory={"cpu": "300KB"}),
    "all on disk": dict(device_map="auto", max_memory={"cpu": "1KB"}),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("loading") / "model"
    tiny_model("qwen3_moe").save_pretrained(path)
    return path


@pytest.mark.parametrize("placement", sorted(PLACEMENTS))
def test_device_mapped_model_observes_and_evaluates_like_one_device(folder, tmp_path, batches, placement):
    single, _ = load_model(folder)
    mapped, _ = load_model(folder, offload_folder=tmp_path / "offload", **PLACEMENTS[placement])
    assert "disk" in set(mapped.hf_device_map.values())
    assert_same(observe(single, batches, progress=False), observe(mapped, batches, progress=False), rtol=0)
    expected, got = evaluate(single, batches, progress=False), evaluate(mapped, batches, progress=False)
    assert got.equals(expected)


def test_cli_observe_with_device_map_equals_plain(tmp_path):
    model, spec = tiny_checkpoint(tmp_path)
    assert main(["observe", str(model), "--data", spec, "--out", str(tmp_path / "plain")]) == 0
    assert (
        main(
            [
                "observe",
                str(model),
                "--data",
                spec,
                "--device-map",
                "auto",
                "--max-memory",
                "cpu=300KB",
                "--offload-folder",
                str(tmp_path / "offload"),
                "--out",
                str(tmp_path / "mapped"),
            ]
        )
        == 0
    )
    assert_same(Observations.load(tmp_path / "plain"), Observations.load(tmp_path / "mapped"), rtol=0)
    # prune in memory on a device map; weights offloaded to disk cannot be sliced: one clear line
    common = ["prune", str(model), "--observations", str(tmp_path / "plain"), "--ratio", "0.25"]
    assert main([*common, "--device-map", "cpu", "--out", str(tmp_path / "pruned")]) == 0
    assert (tmp_path / "pruned" / "pruning_plan.json").is_file()
    assert (
        main(
            [
                *common,
                "--device-map",
                "auto",
                "--max-memory",
                "cpu=300KB",
                "--offload-folder",
                str(tmp_path / "o2"),
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "bad").exists()


def test_max_memory_parsing_and_bad_input(tmp_path, capsys):
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    assert parse_max_memory(None) is None
    model, spec = tiny_checkpoint(tmp_path)
    for extra, message in [
        (["--device-map", "auto", "--max-memory", "lots"], "write DEVICE=AMOUNT pairs"),
        (["--max-memory", "cpu=1GiB"], "add device_map='auto'"),
    ]:
        assert main(["observe", str(model), "--data", spec, *extra, "--out", str(tmp_path / "obs")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "obs").exists()
