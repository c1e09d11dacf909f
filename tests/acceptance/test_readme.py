"""The README's "Use it" commands, run as written, line by line, in a fresh folder (real subprocesses)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_block(heading: str) -> list[str]:
    """The command lines of the first ```bash block after `heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def as_subprocess(line: str) -> list[str]:
    """`reapkit ...` and `python ...` run by this interpreter; comments dropped."""
    words = shlex.split(line, comments=True)
    if words[0] == "reapkit":
        return [sys.executable, "-m", "reapkit", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise AssertionError(f"README command {line!r} starts with neither reapkit nor python")


@pytest.mark.slow
def test_use_it_block_runs_as_written(tmp_path):
    shutil.copytree(ROOT / "sweeps", tmp_path / "sweeps")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    lines = readme_block("## Use it")
    assert len(lines) >= 8
    for line in lines:
        run = subprocess.run(as_subprocess(line), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"README line failed: {line}\n{run.stderr[-3000:]}"
    assert {"layer", "expert", "domain", "value"} <= set(pd.read_csv(tmp_path / "scores.csv").columns)
    combined = json.loads((tmp_path / "runs" / "obs-ab" / "observations.json").read_text())
    assert set(combined["domains"]) == {"code", "prose"}
    plan = json.loads((tmp_path / "pruned" / "pruning_plan.json").read_text())
    assert plan["criterion"] == "reap" and plan["ratio"] == 0.25
    runs = pd.read_csv(tmp_path / "runs" / "ratios" / "runs.csv")
    assert list(runs.status) == ["ok"]
