"""The bundled demo model: loads with stock transformers, its tokenizer round-trips, and it is worth studying."""
from __future__ import annotations

import json

import pytest
import torch

from reapkit import demo

pytestmark = pytest.mark.skipif(not (demo.DEMO_PATH / "model.safetensors").is_file(),
                                reason="bundled demo model missing; build it with `python -m reapkit.demo train`")


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return demo.load()


def test_loads_with_stock_transformers(loaded):
    from transformers import AutoConfig, AutoModelForCausalLM

    model, tok = loaded
    assert not model.training
    cfg = AutoConfig.from_pretrained(demo.DEMO_PATH)
    assert cfg.model_type == "qwen3_moe" and cfg.num_hidden_layers == 4 and cfg.hidden_size == 128
    assert cfg.num_experts_per_tok == 2 and cfg.norm_topk_prob and len(demo._moe_gates(model)) == 4
    assert int(demo._moe_gates(model)[0].weight.shape[0]) == 16
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 10_000_000
    assert (demo.DEMO_PATH / "model.safetensors").stat().st_size < 21_000_000
    assert type(model) is type(AutoModelForCausalLM.from_config(cfg))
    metrics = json.loads((demo.DEMO_PATH / "training_metrics.json").read_text())
    assert metrics["tokens_seen"] > 0 and "evaluation" in metrics
    assert "Mutual information" in (demo.DEMO_PATH / "MODEL_CARD.md").read_text()


def test_tokenizer_round_trip(loaded):
    _, tok = loaded
    for text in ["def f(x):\n    return x + 1\n", "The answer is 42.", '{"name": "math.gcd", "arguments": {"a": 12}}',
                 "  unicode: é ü 漢字 \t tabs\n"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False)
    assert chat == "<|bos|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"


def test_generates(loaded):
    model, tok = loaded
    ids = tok("def ", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_worth_studying(loaded):
    model, tok = loaded
    report = demo.evaluate_demo(model, tok, samples_per_domain=12, max_length=128)
    assert report["dead_experts"] == [] and report["min_expert_share"] >= 0.01
    assert sum(mi >= 0.35 for mi in report["mutual_information_bits"]) >= 2
    for d in demo.DOMAINS:
        assert report["loss"][d] < 0.8 * report["unigram_loss"][d], d
    shares = torch.tensor(report["expert_share"], dtype=torch.float64)
    assert torch.allclose(shares.sum(1), torch.ones(4, dtype=torch.float64))


def test_mutual_information():
    assert demo.mutual_information_bits(torch.tensor([[5, 0], [0, 5]])) == pytest.approx(1.0)
    assert demo.mutual_information_bits(torch.tensor([[3, 3], [3, 3]])) == pytest.approx(0.0)
    assert demo.mutual_information_bits(torch.eye(4) * 7) == pytest.approx(2.0)
