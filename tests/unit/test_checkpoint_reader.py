"""Opening a checkpoint folder reads its shard headers and names what is missing, damaged or inconsistent."""

import json

import pytest
import torch
from safetensors.torch import save_file

from reapkit.errors import CheckpointError, MissingInput
from reapkit.model.checkpoint import INDEX_FILE, SINGLE_FILE, Checkpoint

A, B = torch.arange(6, dtype=torch.float32).view(2, 3), torch.ones(4, dtype=torch.bfloat16)


def sharded(folder):
    """Two shards and an index; the second shard also holds a stale copy of `a` that the index does not count."""
    folder.mkdir()
    save_file({"a": A}, str(folder / "one.safetensors"))
    save_file({"b": B, "a": torch.zeros(2, 3)}, str(folder / "two.safetensors"))
    index = {"metadata": {}, "weight_map": {"a": "one.safetensors", "b": "two.safetensors"}}
    (folder / INDEX_FILE).write_text(json.dumps(index))
    return folder


def test_headers_give_names_shapes_and_sizes(tmp_path):
    checkpoint = Checkpoint.open(sharded(tmp_path / "model"))
    assert {n: (t.shard, t.dtype, t.shape) for n, t in checkpoint.tensors.items()} == {
        "a": ("one.safetensors", "F32", (2, 3)),
        "b": ("two.safetensors", "BF16", (4,)),
    }
    assert (checkpoint.nbytes, checkpoint.largest) == (24 + 8, 24)
    with checkpoint.reading() as read:
        assert torch.equal(read("a"), A) and torch.equal(read("b"), B)  # the index decides which copy counts
    (tmp_path / "single").mkdir()
    save_file({"a": A}, str(tmp_path / "single" / SINGLE_FILE))
    assert (
        list(Checkpoint.open(tmp_path / "single").tensors) == ["a"] and Checkpoint.open(tmp_path / "single").index == {}
    )


def cut(at):
    return lambda folder: (folder / "two.safetensors").write_bytes((folder / "two.safetensors").read_bytes()[:at])


def edit_index(change):
    def apply(folder):
        index = json.loads((folder / INDEX_FILE).read_text())
        change(index)
        (folder / INDEX_FILE).write_text(json.dumps(index))

    return apply


DAMAGES = {
    "cut in the data": (cut(-4), "the shard {folder}/two.safetensors is incomplete (cut short): "),
    "cut in the header": (cut(20), "the shard {folder}/two.safetensors is incomplete (cut short inside its header"),
    "cut in the length": (cut(3), "the shard {folder}/two.safetensors is incomplete (cut short inside its header"),
    "bytes appended": (
        lambda folder: (folder / "two.safetensors").open("ab").write(b"\0" * 8),
        "the shard {folder}/two.safetensors is longer than its header describes",
    ),
    "header not JSON": (
        lambda folder: (folder / "two.safetensors").write_bytes((8).to_bytes(8, "little") + b"not json"),
        "{folder}/two.safetensors is not a safetensors file",
    ),
    "index without weight_map": (edit_index(lambda index: index.pop("weight_map")), "is not a safetensors index"),
    "shard missing": (
        lambda folder: (folder / "one.safetensors").unlink(),
        "the index {folder}/" + INDEX_FILE + " names shard(s) missing from {folder}: one.safetensors",
    ),
    "tensor in the wrong shard": (
        edit_index(lambda index: index["weight_map"].update(b="one.safetensors")),
        "puts 1 tensor(s) in shards that do not hold them (first: b in one.safetensors)",
    ),
    "no weights": (
        lambda folder: [p.unlink() for p in folder.iterdir()],
        "{folder} holds no .safetensors weights as save_pretrained writes them",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damage_is_named_on_one_line(damage, tmp_path):
    folder = sharded(tmp_path / "model")
    spoil, message = DAMAGES[damage]
    spoil(folder)
    with pytest.raises(CheckpointError) as error:
        Checkpoint.open(folder)
    assert message.format(folder=folder) in str(error.value) and "\n" not in str(error.value)


def test_a_shard_damaged_after_opening_is_named_when_read(tmp_path):
    checkpoint = Checkpoint.open(sharded(tmp_path / "model"))
    cut(-4)(checkpoint.folder)
    with pytest.raises(CheckpointError, match="cannot read the shard .*two.safetensors"), checkpoint.reading() as read:
        read("b")


def test_a_missing_folder_is_a_missing_input(tmp_path):
    with pytest.raises(MissingInput, match="is not a local folder; .*download it first"):
        Checkpoint.open(tmp_path / "absent")
