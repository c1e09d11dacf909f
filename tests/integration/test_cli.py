"""The command line end to end, as a researcher runs it (real subprocesses, real files)."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from tiny_models import tiny_model
from transformers import AutoModelForCausalLM


def reapkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "reapkit", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_model("qwen3_moe").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    (root / "code.jsonl").write_text(
        "\n".join(json.dumps(torch.randint(3, 96, (n,), generator=g).tolist()) for n in (9, 14, 5, 11))
    )
    return root


def test_observe_scores_prune(checkpoint):
    root = checkpoint
    run = reapkit("observe", root / "model", "--data", root / "code.jsonl", "--out", root / "obs", "--batch-size", 2)
    assert run.returncode == 0, run.stderr
    assert "observed 39 tokens" in run.stdout
    run = reapkit("scores", root / "obs", "--criterion", "reap", "--csv", root / "scores.csv")
    assert run.returncode == 0, run.stderr
    frame = pd.read_csv(root / "scores.csv")
    assert list(frame.columns) == ["layer", "expert", "domain", "value"]
    assert set(frame.domain) == {"all", "code"} and len(frame) == 2 * 2 * 8
    run = reapkit(
        "prune",
        root / "model",
        "--observations",
        root / "obs",
        "--criterion",
        "reap",
        "--ratio",
        0.25,
        "--out",
        root / "pruned",
    )
    assert run.returncode == 0, run.stderr
    pruned = AutoModelForCausalLM.from_pretrained(root / "pruned")
    assert pruned.model.layers[0].mlp.experts.num_experts == 6
    assert json.loads((root / "pruned" / "pruning_plan.json").read_text())["criterion"] == "reap"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ratio", "1.5"], "ratio must be in [0, 1)"),
        (["--ratio", "0.9"], "needs at least top-k"),
        (["--criterion", "nope"], "unknown criterion 'nope'"),
    ],
)
def test_prune_bad_input_gets_one_clear_line(checkpoint, args, message):
    root = checkpoint
    if not (root / "obs").exists():
        reapkit("observe", root / "model", "--data", root / "code.jsonl", "--out", root / "obs")
    run = reapkit("prune", root / "model", "--observations", root / "obs", *args, "--out", root / "bad")
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (root / "bad").exists()


def test_mismatched_observations_and_existing_output(checkpoint, tmp_path):
    root = checkpoint
    tiny_model("qwen3_moe", seed=5).save_pretrained(tmp_path / "other")
    if not (root / "obs").exists():
        reapkit("observe", root / "model", "--data", root / "code.jsonl", "--out", root / "obs")
    run = reapkit("prune", tmp_path / "other", "--observations", root / "obs", "--out", tmp_path / "out")
    assert run.returncode == 2 and "different model" in run.stderr
    (tmp_path / "exists").mkdir()
    run = reapkit("prune", root / "model", "--observations", root / "obs", "--out", tmp_path / "exists")
    assert run.returncode == 2 and "--force" in run.stderr


def test_unknown_architecture_is_explained(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(tmp_path / "llama")
    (tmp_path / "t.jsonl").write_text("[1, 2, 3]\n")
    run = reapkit("observe", tmp_path / "llama", "--data", tmp_path / "t.jsonl", "--out", tmp_path / "obs")
    assert run.returncode == 2
    assert "does not know the MoE architecture 'llama'" in run.stderr and "register_architecture" in run.stderr
    assert "qwen3_moe" in run.stderr


def test_combine_shards_equals_one_pass(tmp_path, capsys):
    from reapkit.data import pad_batches
    from reapkit.observe.observations import Observations
    from reapkit.observe.recorder import observe
    from reapkit.run.cli import main

    model = tiny_model("olmoe")
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (6, 9, 4, 8)]
    shards = [pad_batches(seqs[:2], "code", 2), pad_batches(seqs[2:], "code", 2) + pad_batches(seqs[:1], "math", 1)]
    for i, shard in enumerate(shards):
        observe(model, shard, progress=False).save(tmp_path / f"shard{i}")
    assert main(["combine", str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--out", str(tmp_path / "all")]) == 0
    combined, whole = (
        Observations.load(tmp_path / "all", model=model),
        observe(model, shards[0] + shards[1], progress=False),
    )
    for d in whole.domains:
        for k in whole.stats[d]:
            torch.testing.assert_close(combined.stats[d][k], whole.stats[d][k])
    assert main(["combine", str(tmp_path / "shard0"), "--out", str(tmp_path / "all")]) == 2
    assert "--force" in capsys.readouterr().err
