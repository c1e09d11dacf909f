"""ruff (configured in pyproject.toml) finds nothing to lint or reformat in the paths that are kept clean."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Paths kept lint- and format-clean; grows to the whole tree (".").
CLEAN_PATHS = [
    "reapkit/data",
    "reapkit/demo.py",
    "reapkit/hooks.py",
    "reapkit/lazy.py",
    "reapkit/plugins.py",
    "reapkit/saliency.py",
    "scripts",
    "tests/test_demo.py",
    "tests/test_doctests.py",
    "tests/test_hooks.py",
    "tests/test_saliency.py",
    "tests/test_style.py",
]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    run = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *CLEAN_PATHS], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, (
        f"`ruff {' '.join(command)}` found problems; run `ruff check --fix` and `ruff format`:\n{run.stdout}{run.stderr}"
    )
