"""ruff (configured in pyproject.toml) finds nothing to lint or reformat anywhere in the tree."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Paths kept lint- and format-clean.
CLEAN_PATHS = ["."]  # the whole tree (pyproject.toml says what is excluded)


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    run = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *CLEAN_PATHS], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, (
        f"`ruff {' '.join(command)}` found problems; run `ruff check --fix` and `ruff format`:\n{run.stdout}{run.stderr}"
    )
