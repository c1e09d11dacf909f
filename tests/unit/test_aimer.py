"""AIMER, the calibration-free criterion: read from a checkpoint's shards, equal to the reference formula on the model."""

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from reapkit.errors import InvalidInput, MissingStatistic
from reapkit.model.discover import architecture_for
from reapkit.observe.recorder import observe
from reapkit.observe.weights import weight_statistics
from reapkit.run import cli
from reapkit.select.criteria import score
from reapkit.select.plan import PruningPlan


def reference_aimer(model) -> np.ndarray:
    """ZongfangLiu/AIMER @fcf8e28 `_aimer_scores_and_rank` on the model's weights: per expert, over its gate, up
    and down weights, (sum |w| / n) / sqrt(sum w^2 / n); higher is pruned first."""
    arch = architecture_for(model)
    rows = []
    for _, block in arch.moe_blocks(model):
        experts = arch.experts_of(block)
        weights = [p for n, p in experts.named_parameters(recurse=False) if not n.endswith("bias")]
        row = []
        for e in range(experts.num_experts):
            parts = [w[e].detach().float() for w in weights]
            abs_sum = sum(p.abs().sum() for p in parts)
            numel = sum(p.numel() for p in parts)
            l2_sq = sum(p.square().sum() for p in parts)
            row.append(float((abs_sum / numel) / torch.sqrt(l2_sq / numel)))
        rows.append(row)
    return np.array(rows)


# per-expert tensors on disk (qwen3_moe, deepseek_v3 with dense first layer and shared experts, mixtral's w1/w2/w3)
# and fused [E, ...] tensors on disk (gpt_oss: transposed, interleaved gate_up with biases; llama4_text: shared expert)
@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3", "mixtral", "gpt_oss", "llama4_text"])
def test_aimer_from_the_shards_equals_the_formula_on_the_model(name, tmp_path):
    model = tiny_model(name)
    model.save_pretrained(tmp_path)
    weights = weight_statistics(tmp_path)
    expected = reference_aimer(model)
    got = score(weights, "aimer")
    np.testing.assert_allclose(1 / got, expected, rtol=1e-5)
    assert weights.layers == [i for i, _ in architecture_for(model).moe_blocks(model)]
    assert got.std() > 0
    # the same order as the reference: it prunes its highest scores first, a plan here its lowest
    assert (np.argsort(got, axis=1) == np.argsort(-expected, axis=1)).all()


def test_aimer_of_the_demo_checkpoint_equals_the_loaded_model():
    from reapkit.model import DEMO_PATH
    from reapkit.model.loading import load_model
    from reapkit.observe.observations import fingerprint

    loaded = load_model("demo")
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    weights = weight_statistics(DEMO_PATH)
    np.testing.assert_allclose(1 / score(weights, "aimer"), reference_aimer(model), rtol=1e-5)
    assert weights.meta["fingerprint"] == fingerprint(model)  # plans from it are checked like any other


def test_scores_and_prune_with_aimer_from_a_model_folder(tmp_path, capsys):
    model = tiny_model("qwen3_moe")
    model.save_pretrained(tmp_path / "model")
    cli.main(["scores", str(tmp_path / "model"), "--criterion", "aimer", "--csv", str(tmp_path / "s.csv")])
    assert "aimer scores" in capsys.readouterr().out
    cli.main(["prune", str(tmp_path / "model"), "--criterion", "aimer", "--ratio", "0.5", "--out", str(tmp_path / "p")])
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["num_experts"] == 4
    plan = PruningPlan.load(tmp_path / "p" / "pruning_plan.json")
    expected = reference_aimer(model)
    for pos, layer in enumerate(plan.layers):
        assert plan.kept[layer] == sorted(np.argsort(expected[pos], kind="stable")[:4].tolist())
    assert plan.criterion == "aimer"
    cli.main(
        ["plan", str(tmp_path / "model"), "--criterion", "aimer", "--ratio", "0.5", "--out", str(tmp_path / "a.json")]
    )
    assert PruningPlan.load(tmp_path / "a.json").kept == plan.kept


def test_aimer_refuses_quantised_expert_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_model("qwen3_moe").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    tensors[name] = tensors[name].to(torch.int8)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidInput, match=f"{name} is stored as I8, a quantised layout"):
        weight_statistics(tmp_path)


def test_aimer_refuses_what_is_not_a_checkpoint(tmp_path, batches, capsys):
    with pytest.raises(InvalidInput, match="not a checkpoint folder"):
        weight_statistics(tmp_path)
    obs = observe(tiny_model("qwen3_moe"), batches, progress=False)
    with pytest.raises(MissingStatistic, match="give the model folder instead of observations"):
        score(obs, "aimer")
    obs.save(tmp_path / "obs")
    assert cli.main(["scores", str(tmp_path / "obs"), "--criterion", "aimer"]) == 2
    (message,) = capsys.readouterr().err.strip().splitlines()
    assert "is not a checkpoint folder" in message and "give the model folder" in message
