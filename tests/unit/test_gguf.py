"""Pruning GGUF files directly: byte-exact slices for every quantisation type, split files, metadata, checks.

Every GGUF here is written by the `gguf` package from a tiny transformers model (tests/gguf_models.py),
pruned by `reapkit.compress.gguf.prune_gguf`, and read back with `gguf.GGUFReader`.
"""

from __future__ import annotations

import copy
import hashlib
import json

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf_models import dequantized, read_metadata, read_tensors, tensors_of, write_gguf
from tiny_models import tiny_model

from reapkit.compress.gguf import PLAN_KEY, prune_gguf
from reapkit.compress.gguf_experts import gguf_fingerprint, moe_layers
from reapkit.compress.gguf_file import open_gguf
from reapkit.compress.prune import remove_experts
from reapkit.errors import CheckpointError, InvalidInput, Mismatch, MissingInput, OutputExists
from reapkit.observe.recorder import observe
from reapkit.select.plan import PruningPlan

WIDE = dict(hidden_size=256, moe_intermediate_size=256)  # rows of 256: every block size divides them


def digest(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def qwen(batches_module):
    model = tiny_model("qwen3_moe", **WIDE)
    return model, observe(model, batches_module, progress=False)


@pytest.fixture(scope="module")
def batches_module():
    from reapkit.data import pad_batches

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 10, 5, 9, 12)]
    return pad_batches(seqs[:3], "code", 3) + pad_batches(seqs[3:], "prose", 2)


def check_pruned(source, out, plan, *, expert_type):
    """The pruned files hold exactly the kept experts' bytes, everything else as in the source."""
    before, after = read_tensors(source), read_tensors(out)
    assert set(after) == set(before)
    stems = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_inp")
    sliced = [n for n in before if n.startswith("blk.") and n.split(".")[2] in stems]
    assert len(sliced) == 4 * len(plan.layers)
    for name, (qtype, shape, data) in before.items():
        new_type, new_shape, new_data = after[name]
        assert new_type == qtype
        if name not in sliced:
            assert (new_shape, new_data) == (shape, data), f"{name} changed"
            continue
        kept = plan.kept[int(name.split(".")[1])]
        per = len(data) // shape[0]
        assert new_shape == (len(kept), *shape[1:])
        assert new_data == b"".join(data[e * per : (e + 1) * per] for e in kept)
        try:
            with np.errstate(all="ignore"):  # random blocks hold NaN and inf scales too
                whole, part = dequantized(source, name), dequantized(out, name)
        except NotImplementedError:  # gguf has no dequantiser for this type: the bytes above are the check
            continue
        np.testing.assert_array_equal(part, whole[kept])  # NaN equals NaN here


QUANTISABLE = ["F32", "F16", "BF16", "Q8_0", "Q4_K"]


@pytest.mark.parametrize("expert_type", QUANTISABLE)
def test_prune_slices_experts_byte_for_byte(qwen, tmp_path, expert_type):
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model, expert_type=expert_type)
    fingerprint = digest(source)
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.25)
    pruned = prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False)
    assert pruned.paths == [tmp_path / "pruned.gguf"] and pruned.notes == []
    check_pruned(source, pruned.paths, plan, expert_type=expert_type)
    assert digest(source) == fingerprint  # the source is only read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "pruned.gguf"]  # no temporary left


# Every other type: random blocks (bytes need not mean anything to be sliced), dequantised where gguf can.
OTHER_TYPES = [
    t.name
    for t in T
    if t.name not in QUANTISABLE and t in gguf.GGML_QUANT_SIZES and 256 % gguf.GGML_QUANT_SIZES[t][0] == 0
]


@pytest.mark.parametrize("expert_type", OTHER_TYPES)
def test_every_quantisation_type_is_sliced_exactly(qwen, tmp_path, expert_type):
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model, expert_type=expert_type)
    plan = PruningPlan.from_observations(obs, "reap", keep=5)
    out = prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False).paths
    check_pruned(source, out, plan, expert_type=expert_type)


def test_metadata_is_patched_and_otherwise_copied(qwen, tmp_path):
    model, obs = qwen
    long = {"test.long_strings": [f"piece {i} ä" for i in range(70_000)], "test.long_ints": list(range(70_000))}
    source = write_gguf(tmp_path / "model.gguf", model, expert_type="Q8_0", arrays=long)  # long: skipped, copied
    plan = PruningPlan.from_observations(obs, "reap", keep=6)
    out = prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False).paths
    before, after = read_metadata(source), read_metadata(out)
    assert after.pop((0, "qwen3moe.expert_count")) == (before.pop((0, "qwen3moe.expert_count"))[0], 6)
    saved = after.pop((0, PLAN_KEY))
    assert PruningPlan(**_plan_fields(saved[1])).kept == plan.kept
    assert after == before  # every other key of every part: same type, same value


def _plan_fields(text):
    data = json.loads(text)
    data.pop("format")
    for key in ("kept", "num_experts", "scores"):
        data[key] = {int(k): v for k, v in data[key].items()}
    return data


def test_key_order_and_values_survive(qwen, tmp_path):
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model)
    plan = PruningPlan.from_observations(obs, "reap", keep=6)
    out = prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False).paths
    keys_before = list(gguf.GGUFReader(source[0]).fields)
    keys_after = list(gguf.GGUFReader(out[0]).fields)
    assert keys_after == keys_before + [PLAN_KEY]
    assert PruningPlan(**_plan_fields(gguf.GGUFReader(out[0]).get_field(PLAN_KEY).contents())).kept == plan.kept


def test_split_gguf_is_read_and_written_in_parts(qwen, tmp_path):
    model, obs = qwen
    parts = write_gguf(tmp_path / "model.gguf", model, expert_type="Q8_0", split_tensors=9)
    whole = write_gguf(tmp_path / "whole.gguf", model, expert_type="Q8_0")
    assert len(parts) == 3
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.5)
    out = prune_gguf(parts[1], plan, tmp_path / "pruned.gguf", progress=False).paths  # any part names the set
    assert [p.name for p in out] == [f"pruned-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    check_pruned(parts, out, plan, expert_type="Q8_0")
    for source, written in zip(parts, out):  # each part keeps its own tensors and split keys
        assert [t.name for t in gguf.GGUFReader(written).tensors] == [t.name for t in gguf.GGUFReader(source).tensors]
    meta = read_metadata(out)
    assert [meta[i, "split.no"][1] for i in range(3)] == [0, 1, 2]
    assert {meta[i, "split.count"][1] for i in range(3)} == {3}
    assert read_tensors(out) == read_tensors(prune_gguf(whole[0], plan, tmp_path / "w.gguf", progress=False).paths)


def test_selection_bias_shared_experts_and_dense_layers(batches_module, tmp_path):
    model = tiny_model("deepseek_v3")  # dense layer 0, shared experts, e_score_correction_bias, 2 routing groups
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8))
    obs = observe(model, batches_module, progress=False)
    source = write_gguf(tmp_path / "model.gguf", model, expert_type="Q8_0")
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.25)
    out = prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False).paths
    before, after = read_tensors(source), read_tensors(out)
    for layer in plan.layers:
        bias = np.frombuffer(before[f"blk.{layer}.exp_probs_b.bias"][2], np.float32)
        assert np.array_equal(
            np.frombuffer(after[f"blk.{layer}.exp_probs_b.bias"][2], np.float32), bias[plan.kept[layer]]
        )
        for shared in ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"):
            assert after[f"blk.{layer}.{shared}.weight"] == before[f"blk.{layer}.{shared}.weight"]
    assert {n: v for n, v in after.items() if n.startswith("blk.0.")} == {
        n: v for n, v in before.items() if n.startswith("blk.0.")
    }


def test_pruned_gguf_holds_the_pruned_transformers_model(qwen, tmp_path):
    """Same experts, same order: the F32 GGUF pruned by reapkit equals the GGUF of the model pruned by transformers."""
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model)
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.5)
    out = prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False).paths
    reference = tensors_of(remove_experts(copy.deepcopy(model), plan))
    for name, value in reference.items():
        np.testing.assert_array_equal(dequantized(out, name), value, err_msg=name)


def test_router_fingerprint_equals_the_observations(qwen, tmp_path):
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model, expert_type="Q8_0")
    gguf_model = open_gguf(source[0])
    found = gguf_fingerprint(gguf_model, moe_layers(gguf_model))
    expected = obs.meta["fingerprint"]
    assert found["router_sha256"] == expected["router_sha256"]
    assert expected["model_type"] in found["model_type"]
    assert [found[k] for k in ("num_hidden_layers", "hidden_size", "num_experts")] == [
        expected[k] for k in ("num_hidden_layers", "hidden_size", "num_experts")
    ]


def test_multi_token_prediction_blocks_are_left_out(qwen, tmp_path):
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model, nextn=1)  # block 2: an MTP block with experts
    plan = PruningPlan.from_observations(obs, "reap", keep=6)
    pruned = prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False)
    assert "multi-token-prediction block(s) [2] left out" in pruned.notes[0]
    names = set(read_tensors(pruned.paths))
    assert not [n for n in names if n.startswith("blk.2.")] and "blk.1.ffn_up_exps.weight" in names
    meta = read_metadata(pruned.paths)
    assert meta[0, "qwen3moe.block_count"][1] == 2 and meta[0, "qwen3moe.nextn_predict_layers"][1] == 0
    assert meta[0, "qwen3moe.per_block_ids"][1] == [0, 1]  # per-block arrays lose the MTP block's entry


# ---- what is refused, with nothing written ---------------------------------------------------------


def refused(error, match, *, tmp_path, source, out="pruned.gguf"):
    assert match in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out}")]
    assert all(p.exists() for p in source)


@pytest.mark.parametrize(
    "name, shape, match",
    [
        (
            "blk.1.ffn_gate_chexps.weight",
            (8, 256, 256),
            "does not recognise the expert tensor blk.1.ffn_gate_chexps.weight",
        ),
        ("blk.0.ffn_norm_exps.weight", (8, 256), "does not recognise the expert tensor blk.0.ffn_norm_exps.weight"),
        ("blk.0.ffn_gate.3.weight", (256, 256), "blk.0.ffn_gate.3.weight stores one expert per tensor"),
        ("blk.1.exp_probs_b.bias", (7,), "does not have the 8 experts of block 1"),
    ],
)
def test_unrecognised_expert_tensors_are_named(qwen, tmp_path, name, shape, match):
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model, extra_tensors={name: np.zeros(shape, np.float32)})
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.25)
    with pytest.raises(CheckpointError) as error:
        prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False)
    refused(error, match, tmp_path=tmp_path, source=source)


@pytest.mark.parametrize(
    "other, match",
    [
        (dict(seed=5, **WIDE), "router_sha256"),  # same shapes, other weights
        (dict(num_experts=6, num_local_experts=6, **WIDE), "expert counts differ"),
        (dict(num_hidden_layers=3, **WIDE), "MoE layers [0, 1]"),
        (dict(hidden_size=128, moe_intermediate_size=256), "hidden_size"),
    ],
    ids=["router", "experts", "layers", "hidden"],
)
def test_observations_of_another_model_are_refused(qwen, tmp_path, other, match):
    _, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", tiny_model("qwen3_moe", **other))
    plan = PruningPlan.from_observations(obs, "reap", keep=6)
    with pytest.raises(Mismatch) as error:
        prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False)
    refused(error, match, tmp_path=tmp_path, source=source)
    assert "observe the transformers model this GGUF was converted from" in str(error.value)


@pytest.mark.parametrize("cut", ["data", "header", "garbage", "empty"])
def test_truncated_or_corrupt_files_are_refused(qwen, tmp_path, cut):
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model)
    data = source[0].read_bytes()
    damaged = {
        "data": data[:-1000],
        "header": data[:300],
        "garbage": b"GGUF" + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
        "empty": b"",
    }[cut]
    source[0].write_bytes(damaged)
    plan = PruningPlan.from_observations(obs, "reap", keep=6)
    with pytest.raises(CheckpointError) as error:
        prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False)
    message = {"data": "is truncated: tensor output.weight ends at byte", "empty": "is not a GGUF file"}
    message = message.get(cut, "is truncated or corrupt")
    refused(error, message, tmp_path=tmp_path, source=source)
    assert "download it again" in str(error.value) or "check the path" in str(error.value)
    assert source[0].read_bytes() == damaged


def test_a_missing_part_of_a_split_model_is_named(qwen, tmp_path):
    model, obs = qwen
    parts = write_gguf(tmp_path / "model.gguf", model, split_tensors=9)
    parts[2].unlink()
    with pytest.raises(MissingInput, match="model-00003-of-00003.gguf"):
        prune_gguf(parts[0], PruningPlan.from_observations(obs, "reap", keep=6), tmp_path / "p.gguf", progress=False)


def test_outputs_over_inputs_and_existing_outputs_are_refused(qwen, tmp_path):
    model, obs = qwen
    parts = write_gguf(tmp_path / "model.gguf", model, split_tensors=9)
    plan = PruningPlan.from_observations(obs, "reap", keep=6)
    before = digest(parts)
    for out in (parts[0], tmp_path / "model.gguf"):  # the input itself; a prefix whose parts are the inputs
        with pytest.raises(InvalidInput, match="is the input"):
            prune_gguf(parts[0], plan, out, progress=False)
    with pytest.raises(InvalidInput, match="a .gguf file"):
        prune_gguf(parts[0], plan, tmp_path / "pruned", progress=False)
    assert digest(parts) == before
    (tmp_path / "taken-00002-of-00003.gguf").write_text("mine")
    with pytest.raises(OutputExists, match="--force"):
        prune_gguf(parts[0], plan, tmp_path / "taken.gguf", progress=False)
    assert (tmp_path / "taken-00002-of-00003.gguf").read_text() == "mine"
    assert not (tmp_path / "taken-00001-of-00003.gguf").exists()
    prune_gguf(parts[0], plan, tmp_path / "taken.gguf", force=True, progress=False)
    assert (tmp_path / "taken-00002-of-00003.gguf").read_bytes()[:4] == b"GGUF"


def test_a_non_uniform_plan_is_refused(qwen, tmp_path):
    model, obs = qwen
    source = write_gguf(tmp_path / "model.gguf", model)
    plan = PruningPlan.from_observations(obs, "reap", counts={0: 5, 1: 7})
    with pytest.raises(InvalidInput) as error:
        prune_gguf(source[0], plan, tmp_path / "pruned.gguf", progress=False)
    refused(error, "one expert_count for all layers", tmp_path=tmp_path, source=source)
