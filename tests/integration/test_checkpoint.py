"""Streaming prune of checkpoints on disk == in-memory remove_experts + save_pruned, bitwise; bad input refused."""

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model
from transformers import AutoModelForCausalLM

from reapkit.compress.prune import remove_experts, save_pruned
from reapkit.compress.stream import stream_prune
from reapkit.data import pad_batches
from reapkit.errors import CheckpointError, InvalidInput, Mismatch
from reapkit.model.discover import architecture_for
from reapkit.observe.recorder import observe
from reapkit.select.plan import PruningPlan


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(0)
    return pad_batches([torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 10)], "code", 3)


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def tensors(folder):
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def assert_bitwise(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    unequal = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not unequal, unequal[:5]


def save_fused(model, folder):
    """The fused layout: the model's own state dict in one file (as transformers 5 holds it in memory)."""
    model.config.save_pretrained(folder)
    save_file(
        {
            k: v.contiguous()
            for k, v in model.state_dict().items()
            if k != "lm_head.weight" or not model.config.tie_word_embeddings
        },
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )


def source_with_extras(model, folder, layout):
    """A checkpoint folder as published: shards + index (or one fused file), generation config, chat template."""
    if layout == "hub":
        model.save_pretrained(folder, max_shard_size="40KB")  # per-expert (fused for gpt_oss), several shards, an index
    else:
        save_fused(model, folder)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    return folder


CASES = [
    ("qwen3_moe", "hub"),
    ("deepseek_v3", "hub"),
    ("mixtral", "hub"),
    ("ernie4_5_moe", "hub"),
    ("gpt_oss", "hub"),
    ("qwen3_moe", "fused"),
]


@pytest.mark.parametrize("name, layout", CASES)
def test_streamed_equals_in_memory(name, layout, batches, tmp_path):
    model = tiny_model(name)
    source = source_with_extras(model, tmp_path / "source", layout)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    plan = PruningPlan.from_observations(observe(model, batches, progress=False), "reap", keep=4)
    stream_prune(source, plan, tmp_path / "stream", progress=False)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before, "the source is never modified"

    remove_experts(model, plan)
    streamed = tensors(tmp_path / "stream")
    if layout == "hub":  # same files as the in-memory path writes
        save_pruned(model, plan, tmp_path / "memory")
        assert_bitwise(streamed, tensors(tmp_path / "memory"))
        index = json.loads((tmp_path / "stream" / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(streamed)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in streamed.values())
        assert sorted(p.name for p in (tmp_path / "stream").glob("*.safetensors")) == sorted(
            set(index["weight_map"].values())
        )
    else:
        assert_bitwise(streamed, {k: v for k, v in model.state_dict().items() if k in streamed})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "stream").eval()
    torch.testing.assert_close(logits(reloaded, batches[0]), logits(model, batches[0]), rtol=0, atol=0)
    config = json.loads((tmp_path / "stream" / "config.json").read_text())
    assert config[architecture_for(model).num_experts_key] == 4
    for extra in ("chat_template.jinja", "tokenizer_config.json"):
        assert (tmp_path / "stream" / extra).read_bytes() == (source / extra).read_bytes()
    assert PruningPlan.load(tmp_path / "stream" / "pruning_plan.json").kept == plan.kept


@pytest.fixture(scope="module")
def qwen(tmp_path_factory, batches):
    """A tiny qwen3_moe in the hub layout, its observations and a plan keeping 4 of 8 experts."""
    root = tmp_path_factory.mktemp("qwen")
    model = tiny_model("qwen3_moe")
    model.save_pretrained(root / "model", max_shard_size="40KB")
    obs = observe(model, batches, progress=False)
    obs.save(root / "obs")
    return root, model, PruningPlan.from_observations(obs, "reap", keep=4)


QUANTISED = {  # how GPTQ/AutoRound, compressed-tensors and block-FP8 checkpoints store one expert projection
    "gptq": {"qweight": torch.int32, "qzeros": torch.int32, "scales": torch.float16, "g_idx": torch.int32},
    "compressed-tensors": {"weight_packed": torch.int32, "weight_scale": torch.bfloat16, "weight_shape": torch.int64},
    "fp8": {"weight": torch.float8_e4m3fn, "weight_scale_inv": torch.float32},
}


@pytest.mark.parametrize("scheme", sorted(QUANTISED))
def test_quantised_expert_tensors_go_with_their_expert(qwen, scheme, tmp_path):
    """Every tensor stored under an expert's name is kept or dropped with it; values tell which expert they came from."""
    root, _, plan = qwen
    source = tmp_path / "quantised"
    source.mkdir()
    config = json.loads((root / "model" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": scheme, "bits": 4}
    (source / "config.json").write_text(json.dumps(config))
    stored = {}
    for name, tensor in tensors(root / "model").items():
        parts = name.split(".")
        if ".experts." not in name:
            stored[name] = tensor
            continue
        expert = int(parts[parts.index("experts") + 1])
        for suffix, dtype in QUANTISED[scheme].items():
            stored[name.removesuffix("weight") + suffix] = torch.full((4, 2), expert).to(dtype)
    half = len(stored) // 2
    names = sorted(stored)
    save_file({k: stored[k] for k in names[:half]}, str(source / "model-00001-of-00002.safetensors"))
    save_file({k: stored[k] for k in names[half:]}, str(source / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, k in enumerate(names)}
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    stream_prune(source, plan, tmp_path / "out", progress=False)
    out = tensors(tmp_path / "out")
    for layer, kept in plan.kept.items():
        for new, old in enumerate(kept):
            for suffix in QUANTISED[scheme]:
                value = out[f"model.layers.{layer}.mlp.experts.{new}.gate_proj.{suffix}"]
                assert value.float().eq(old).all(), (
                    f"expert {new} of layer {layer} must hold old expert {old}'s {suffix}"
                )
        assert f"model.layers.{layer}.mlp.experts.4.up_proj.{suffix}" not in out
        assert out[f"model.layers.{layer}.mlp.gate.weight"].shape[0] == 4
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["quantization_config"] == config["quantization_config"] and written["num_experts"] == 4


def test_fused_packed_tensors_with_the_expert_count_first_are_sliced(tmp_path):
    """gpt-oss ships MXFP4 experts as `gate_up_proj_blocks` [E, 2I, n, 16] and `_scales` [E, 2I, n]: sliced like the rest."""
    model = tiny_model("gpt_oss")
    save_fused(model, tmp_path / "source")
    weights = load_file(tmp_path / "source" / "model.safetensors")
    for layer in (0, 1):
        p = f"model.layers.{layer}.mlp.experts."
        for name in ("gate_up_proj", "down_proj"):
            rows = weights.pop(p + name).shape[1]
            weights[p + name + "_blocks"] = (
                torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, rows, 2, 16).contiguous()
            )
            weights[p + name + "_scales"] = (
                torch.arange(8, dtype=torch.uint8).view(8, 1, 1).expand(8, rows, 2).contiguous()
            )
    save_file(weights, str(tmp_path / "source" / "model.safetensors"))
    plan = PruningPlan({0: [1, 2, 5, 7], 1: [0, 3, 4, 6]}, {0: 8, 1: 8}, "custom")
    stream_prune(tmp_path / "source", plan, tmp_path / "out", progress=False)
    out = tensors(tmp_path / "out")
    for layer, kept in plan.kept.items():
        p = f"model.layers.{layer}.mlp."
        assert out[p + "experts.gate_up_proj_blocks"][:, 0, 0, 0].tolist() == kept
        assert out[p + "experts.down_proj_scales"][:, 0, 0].tolist() == kept
        assert torch.equal(out[p + "router.weight"], weights[p + "router.weight"][kept])
        assert torch.equal(out[p + "router.bias"], weights[p + "router.bias"][kept])


def test_layers_transformers_does_not_load_are_left_out(tmp_path):
    """DeepSeek-V3's multi-token-prediction layer (model.layers.61) has no statistics: dropped, and counted."""
    model = tiny_model("deepseek_v3")
    save_fused(model, tmp_path / "source")
    weights = load_file(tmp_path / "source" / "model.safetensors")
    mtp = {f"model.layers.61.mlp.experts.{e}.gate_proj.weight": torch.zeros(2, 2) for e in range(8)}
    save_file(weights | mtp, str(tmp_path / "source" / "model.safetensors"))
    plan = PruningPlan({1: [0, 1, 4, 5], 2: [2, 3, 6, 7]}, {1: 8, 2: 8}, "custom")
    stream_prune(tmp_path / "source", plan, tmp_path / "out", progress=False)
    assert not any(k.startswith("model.layers.61.") for k in tensors(tmp_path / "out"))
    assert PruningPlan.load(tmp_path / "out" / "pruning_plan.json").provenance["dropped_unloaded_tensors"] == 8


def nothing_written(tmp_path):
    return not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize(
    "name, shape",
    [
        ("model.layers.0.mlp.experts.gate_up_proj", (8 * 64 // 8, 64)),  # packed across experts: leading dim is not E
        ("model.layers.1.mlp.gate.qweight", (64 // 16, 8)),  # a quantised router
    ],
)
def test_unrecognised_quantised_layout_is_refused_by_name(name, shape, batches, tmp_path):
    model = tiny_model("qwen3_moe")
    save_fused(model, tmp_path / "source")
    weights = load_file(tmp_path / "source" / "model.safetensors")
    weights.pop(name, None)
    weights[name] = torch.zeros(shape, dtype=torch.int32)
    save_file(weights, str(tmp_path / "source" / "model.safetensors"))
    plan = PruningPlan({0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}, {0: 8, 1: 8}, "custom")
    with pytest.raises(
        CheckpointError, match=re.escape(f"{name} (shape {list(shape)}") + ".*does not have the 8 experts"
    ):
        stream_prune(tmp_path / "source", plan, tmp_path / "out", progress=False)
    assert nothing_written(tmp_path)


def test_missing_shard_is_named(qwen, tmp_path):
    root, _, plan = qwen
    source = tmp_path / "source"
    source.mkdir()
    for path in (root / "model").iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    shard = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"][
        "model.layers.1.mlp.gate.weight"
    ]
    (source / shard).unlink()
    with pytest.raises(CheckpointError, match=f"names shard.* missing .*{shard}"):
        stream_prune(source, plan, tmp_path / "out", progress=False)
    assert nothing_written(tmp_path)


def test_truncated_shard_is_named_on_one_line(qwen, tmp_path, capsys):
    """A shard cut short (an interrupted download) is named as incomplete before anything is written."""
    from reapkit.run.cli import main

    root, _, _ = qwen
    source = tmp_path / "source"
    source.mkdir()
    for path in (root / "model").iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    shard = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"][
        "model.layers.1.mlp.gate.weight"
    ]
    data = (source / shard).read_bytes()
    (source / shard).write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    command = ["prune", str(source), "--observations", str(root / "obs"), "--keep", "4", "--out", str(out)]
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert f"the shard {source / shard} is incomplete (cut short)" in err.splitlines()[-1], err
    assert "Traceback" not in err and "SafetensorError" not in err
    assert nothing_written(tmp_path)


def test_output_over_the_source_is_refused(qwen):
    root, _, plan = qwen
    for out in (root / "model", root / "model" / "pruned", root):  # the source, inside it, around it
        with pytest.raises(ValueError, match="the input .*writing there could destroy the input"):
            stream_prune(root / "model", plan, out, force=True, progress=False)
    assert (root / "model" / "config.json").is_file() and not (root / "model" / "pruned").exists()


def test_plan_for_a_different_model_is_refused(qwen, tmp_path):
    plan = qwen[2]
    tiny_model("qwen3_moe", seed=5).save_pretrained(tmp_path / "other")
    with pytest.raises(Mismatch, match="recorded on a different model"):
        stream_prune(tmp_path / "other", plan, tmp_path / "out", progress=False)
    wider = tiny_model("qwen3_moe", num_experts=6, num_local_experts=6)
    wider.save_pretrained(tmp_path / "six")
    with pytest.raises(Mismatch, match="made for 8 experts in layer 0 but the model has 6"):
        stream_prune(tmp_path / "six", plan, tmp_path / "out", progress=False)
    assert nothing_written(tmp_path)


def test_non_uniform_plan_writes_per_layer_config_where_transformers_reads_it(batches, tmp_path):
    """A model type whose layers are built from `config.per_layer_config[i]` reloads per-layer counts with stock loading."""
    from tiny_models import TEXT
    from transformers import AutoConfig, Qwen3MoeConfig, Qwen3MoeForCausalLM
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    from reapkit.model.records import Architecture, register_architecture

    class HeteroConfig(Qwen3MoeConfig):
        model_type = "reapkit_test_hetero_moe"

    class HeteroForCausalLM(Qwen3MoeForCausalLM):
        config_class = HeteroConfig

        def __init__(self, config):
            config.allow_global_per_layer_attribute_access = True
            super().__init__(config)
            for i, layer in enumerate(self.model.layers):
                layer.mlp = Qwen3MoeSparseMoeBlock(config.per_layer_config[i])
            self.post_init()

    AutoConfig.register(HeteroConfig.model_type, HeteroConfig, exist_ok=True)
    AutoModelForCausalLM.register(HeteroConfig, HeteroForCausalLM, exist_ok=True)
    register_architecture(Architecture(HeteroConfig.model_type, num_experts_key="num_experts"), overwrite=True)
    torch.manual_seed(0)
    model = HeteroForCausalLM(
        HeteroConfig(
            **{
                k: TEXT[k]
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "max_position_embeddings",
                    "num_experts_per_tok",
                )
            },
            num_experts=8,
            moe_intermediate_size=32,
            head_dim=16,
        )
    ).eval()
    model.save_pretrained(tmp_path / "source")
    plan = PruningPlan.from_observations(observe(model, batches, progress=False), "reap", counts={0: 4, 1: 6})
    stream_prune(tmp_path / "source", plan, tmp_path / "out", progress=False)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_experts"] == 6 and config["per_layer_config"] == {"0": {"num_experts": 4}}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert [layer.mlp.experts.num_experts for layer in reloaded.model.layers] == [4, 6]
    remove_experts(model, plan)
    torch.testing.assert_close(logits(reloaded, batches[0]), logits(model, batches[0]), rtol=0, atol=0)


def test_non_uniform_plan_points_to_load_pruned(qwen, tmp_path):
    root, _, plan = qwen
    uneven = PruningPlan({0: plan.kept[0], 1: list(range(6))}, plan.num_experts, "custom")
    with pytest.raises(InvalidInput, match=r"does not read per_layer_config.*save_non_uniform.*load_pruned"):
        stream_prune(root / "model", uneven, tmp_path / "out", progress=False)
    assert nothing_written(tmp_path)


def test_cli_out_of_disk_leaves_nothing(qwen, tmp_path):
    """`ulimit -f` makes every write past 16 KB fail (EFBIG), as a full disk does: one line, exit 2, no output."""
    root, _, _ = qwen
    command = (
        f"ulimit -f 16; exec {sys.executable} -m reapkit prune {root / 'model'} --observations {root / 'obs'} "
        f"--keep 4 --out {tmp_path / 'out'}"
    )
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
    assert run.returncode == 2, run.stderr
    assert "the disk is full" in run.stderr and "Traceback" not in run.stderr
    assert nothing_written(tmp_path)
