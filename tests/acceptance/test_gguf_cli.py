"""`reapkit prune MODEL.gguf ...` as a user runs it: the pruned file, and one clear line for each bad input.

Each case is a real `python -m reapkit prune` process on GGUF files the `gguf` package wrote from a
tiny qwen3_moe model. A refusal exits with 2 and prints one `reapkit prune: error:` line naming the
problem and the fix, no traceback; nothing is written where the output would go and the inputs stay
as they were.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_models import write_gguf
from tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, batches_for_gguf):
    from reapkit.observe.recorder import observe

    root = tmp_path_factory.mktemp("gguf")
    model = tiny_model("qwen3_moe")
    observe(model, batches_for_gguf, progress=False).save(root / "obs")
    observe(tiny_model("qwen3_moe", seed=5), batches_for_gguf, progress=False).save(root / "obs_other")
    write_gguf(root / "model.gguf", model, expert_type="Q8_0")
    write_gguf(root / "split.gguf", model, expert_type="Q8_0", split_tensors=9)
    chexps = {"blk.1.ffn_gate_chexps.weight": np.zeros((8, 32, 64), np.float32)}
    write_gguf(root / "unknown.gguf", model, extra_tensors=chexps)
    data = (root / "model.gguf").read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (root / "notgguf.gguf").write_bytes(b"<html>404 Not Found</html>\n" * 40)
    (root / "out").mkdir()
    return root


@pytest.fixture(scope="module")
def batches_for_gguf():
    import torch

    from reapkit.data import pad_batches

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 10, 5, 9, 12)]
    return pad_batches(seqs[:3], "code", 3) + pad_batches(seqs[3:], "prose", 2)


def inputs_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "out" not in path.relative_to(root).parts:
            h.update(str(path).encode() + path.read_bytes())
    return h.hexdigest()


def reapkit(root: Path, command: str, limit: int | None = None) -> subprocess.CompletedProcess:
    def file_size_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    argv = command.format(root=root, out=root / "out").split()
    return subprocess.run(
        [sys.executable, "-m", "reapkit", *argv],
        env=ENV,
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit if limit else None,
    )


def test_prune_a_gguf_file(world):
    run = reapkit(world, "prune {root}/model.gguf --observations {root}/obs --ratio 0.25 --out {out}/pruned.gguf")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "GGUF, byte for byte" in run.stdout and "{0: 6, 1: 6}" in run.stdout
    reader = gguf.GGUFReader(world / "out" / "pruned.gguf")
    assert reader.get_field("qwen3moe.expert_count").contents() == 6
    assert {tuple(t.shape.tolist())[-1] for t in reader.tensors if "_exps." in t.name} == {6}


def test_prune_a_split_gguf_file(world):
    run = reapkit(world, "prune {root}/split-00001-of-00003.gguf --observations {root}/obs --keep 4 --out {out}/s.gguf")
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (world / "out").glob("s-*")) == [f"s-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


CASES = [
    (
        "unknown-expert-tensor",
        "prune {root}/unknown.gguf --observations {root}/obs --out {out}/x.gguf",
        None,
        ["does not recognise the expert tensor blk.1.ffn_gate_chexps.weight", "prune the transformers checkpoint"],
    ),
    (
        "other-model",
        "prune {root}/model.gguf --observations {root}/obs_other --out {out}/x.gguf",
        None,
        ["recorded on a different model", "router_sha256", "observe the transformers model"],
    ),
    (
        "truncated",
        "prune {root}/truncated.gguf --observations {root}/obs --out {out}/x.gguf",
        None,
        ["truncated.gguf is truncated: tensor", "download it again"],
    ),
    (
        "not-gguf",
        "prune {root}/notgguf.gguf --observations {root}/obs --out {out}/x.gguf",
        None,
        ["notgguf.gguf is not a GGUF file", "check the path"],
    ),
    (
        "missing-part",
        "prune {root}/split-00001-of-00004.gguf --observations {root}/obs --out {out}/x.gguf",
        None,
        ["missing", "split-00004-of-00004.gguf"],
    ),
    (
        "output-is-input",
        "prune {root}/model.gguf --observations {root}/obs --out {root}/model.gguf --force",
        None,
        ["is the input", "outside the inputs"],
    ),
    (
        "output-parts-are-inputs",
        "prune {root}/split-00001-of-00003.gguf --observations {root}/obs --out {root}/split.gguf --force",
        None,
        ["split-00001-of-00003.gguf is the input"],
    ),
    (
        "in-memory",
        "prune {root}/model.gguf --observations {root}/obs --in-memory --out {out}/x.gguf",
        None,
        ["--in-memory does not apply to a GGUF file"],
    ),
    (
        "full-disk",
        "prune {root}/model.gguf --observations {root}/obs --out {out}/x.gguf",
        20000,
        ["disk is full or a file-size limit", "free space or write elsewhere"],
    ),
]


@pytest.mark.parametrize("cid, command, limit, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_nothing_written(world, cid, command, limit, fragments):
    before = inputs_digest(world)
    listing = sorted((world / "out").iterdir())
    run = reapkit(world, command, limit)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("reapkit prune: error: ")]
    assert len(lines) == 1, run.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert sorted((world / "out").iterdir()) == listing  # no output, no temporary sibling
    assert inputs_digest(world) == before
