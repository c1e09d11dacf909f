"""The bundled demo model: loads with stock transformers, its tokenizer round-trips, it is worth studying,
and scripts/train_demo.py still trains one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reapkit.data import DOMAINS
from reapkit.model import demo
from reapkit.model.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import train_demo  # noqa: E402

bundled = pytest.mark.skipif(
    not (demo.DEMO_PATH / "model.safetensors").is_file(),
    reason=f"bundled demo model missing; build it with `{demo.TRAIN_COMMAND}`",
)


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return load_model("demo", dtype="float32")


@bundled
def test_loads_with_stock_transformers(loaded):
    from transformers import AutoConfig, AutoModelForCausalLM

    model, tok = loaded
    assert not model.training
    cfg = AutoConfig.from_pretrained(demo.DEMO_PATH)
    assert cfg.model_type == "qwen3_moe" and cfg.num_hidden_layers == 4 and cfg.hidden_size == 128
    assert cfg.num_experts_per_tok == 2 and cfg.norm_topk_prob and len(train_demo.moe_gates(model)) == 4
    assert int(train_demo.moe_gates(model)[0].weight.shape[0]) == 16
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 10_000_000
    assert (demo.DEMO_PATH / "model.safetensors").stat().st_size < 21_000_000
    assert type(model) is type(AutoModelForCausalLM.from_config(cfg))
    metrics = json.loads((demo.DEMO_PATH / "training_metrics.json").read_text())
    assert metrics["tokens_seen"] > 0 and "evaluation" in metrics
    assert "Mutual information" in (demo.DEMO_PATH / "MODEL_CARD.md").read_text()


@bundled
def test_tokenizer_round_trip(loaded):
    _, tok = loaded
    for text in [
        "def f(x):\n    return x + 1\n",
        "The answer is 42.",
        '{"name": "math.gcd", "arguments": {"a": 12}}',
        "  unicode: é ü 漢字 \t tabs\n",
    ]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False
    )
    assert chat == "<|bos|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"


@bundled
def test_generates(loaded):
    model, tok = loaded
    ids = tok("def ", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]


@bundled
def test_worth_studying(loaded):
    model, tok = loaded
    report = train_demo.evaluate_demo(model, tok, samples_per_domain=12, max_length=128)
    assert report["dead_experts"] == [] and report["min_expert_share"] >= 0.01
    assert sum(mi >= 0.35 for mi in report["mutual_information_bits"]) >= 2
    for d in DOMAINS:
        assert report["loss"][d] < 0.8 * report["unigram_loss"][d], d
    shares = torch.tensor(report["expert_share"], dtype=torch.float64)
    assert torch.allclose(shares.sum(1), torch.ones(4, dtype=torch.float64))


def test_mutual_information():
    assert train_demo.mutual_information_bits(torch.tensor([[5, 0], [0, 5]])) == pytest.approx(1.0)
    assert train_demo.mutual_information_bits(torch.tensor([[3, 3], [3, 3]])) == pytest.approx(0.0)
    assert train_demo.mutual_information_bits(torch.eye(4) * 7) == pytest.approx(2.0)


@pytest.mark.slow
def test_train_demo_script_trains_a_tiny_model(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/train_demo.py"),
            "train",
            "--out",
            str(out),
            "--tokens",
            "1024",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--vocab-size",
            "300",
            "--tokenizer-chars",
            "20000",
            "--eval-samples",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["tokens_seen"] == 1024
    card = (out / "MODEL_CARD.md").read_text()
    assert "python scripts/train_demo.py train --seed 0 --tokens 1024" in card and "| math |" in card
    model, tokenizer = load_model(str(out))
    assert json.loads((out / "config.json").read_text())["num_experts"] == 16 == model.config.num_experts
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|bos|>")
    assert not list(tmp_path.glob("*.tmp-*"))
