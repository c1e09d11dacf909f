"""`torchrun -m reapkit observe` over 2 gloo processes on the CPU equals one process (a real torchrun)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_sequential import assert_same
from tiny_models import tiny_model

from reapkit.errors import InvalidInput
from reapkit.observe.distributed import my_share
from reapkit.observe.observations import Observations
from reapkit.observe.statistics import chosen
from reapkit.run.cli import main


def torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def test_two_processes_equal_one(tmp_path):
    tiny_model("qwen3_moe").save_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    files = []
    for domain, count in (("code", 4), ("prose", 2)):  # batches code, code, prose: rank 1 never sees prose
        path = tmp_path / f"{domain}.jsonl"
        path.write_text(
            "".join(json.dumps(torch.randint(3, 96, (n,), generator=g).tolist()) + "\n" for n in range(6, 6 + count))
        )
        files.append(str(path))
    args = ["observe", str(tmp_path / "model"), "--data", ",".join(files), "--batch-size", "2", "--statistics", "all"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    run = subprocess.run(
        [*torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "reapkit", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "in 2 processes" in run.stdout and run.stdout.count("observed") == 1  # rank 0 alone reports and writes
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one, two = Observations.load(tmp_path / "one"), Observations.load(tmp_path / "two")
    assert_same(one, two)
    assert set(two.stats["code"]) == set(chosen("all"))  # all observing records; maxima by max, the rest by sum
    assert two.meta["calibration"]["content_hash"] == one.meta["calibration"]["content_hash"]
    assert two.meta["calibration"]["processes"] == 2


def test_more_processes_than_batches_is_refused():
    assert my_share([1, 2, 3], 1, 2) == [2]
    with pytest.raises(InvalidInput, match="cannot be shared by 4 processes"):
        my_share([1, 2, 3], 0, 4)
