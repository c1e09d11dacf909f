"""`reapkit ablate` end to end on a tiny checkpoint: single-expert costs, a plan's joint cost, one-line refusals."""

import subprocess
import sys

import pandas as pd
import pytest
from tiny_models import tiny_checkpoint

from reapkit.select.plan import PruningPlan


def reapkit(*args):
    return subprocess.run([sys.executable, "-m", "reapkit", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ablate"))


def test_ablate_writes_each_experts_cost_and_a_plans_joint_cost(checkpoint, tmp_path):
    model, spec = checkpoint
    run = reapkit("ablate", model, "--data", spec, "--layers", "1", "--out", tmp_path / "costs.csv")
    assert run.returncode == 0, run.stderr
    costs = pd.read_csv(tmp_path / "costs.csv")
    assert list(costs.columns) == ["layer", "expert", "loss_change", "lo", "hi", "tokens"]
    assert costs["layer"].tolist() == [1] * 8 and costs["tokens"].iloc[0] == 88  # 8 sequences x 11 targets
    assert "ablated 8 experts one at a time" in run.stdout and str(tmp_path / "costs.csv") in run.stdout

    PruningPlan({0: [0, 1, 2, 3, 4, 5], 1: [0, 2, 3, 4, 5, 6]}, {0: 8, 1: 8}, "test").save(tmp_path / "plan.json")
    run = reapkit("ablate", model, "--data", spec, "--plan", tmp_path / "plan.json", "--out", tmp_path / "joint.csv")
    assert run.returncode == 0, run.stderr
    joint = pd.read_csv(tmp_path / "joint.csv")
    assert joint["layer"].tolist() == ["0", "1", "all"] and joint["removed"].tolist() == [2, 2, 4]
    single = costs.set_index("expert")["loss_change"]
    assert joint.loc[1, "singles"] == pytest.approx(single[1] + single[7], abs=1e-9)  # the same single costs
    assert "Masking the plan's 4 removed experts together" in run.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "7"], "layers [7] are not MoE layers of this model; MoE layers are [0, 1]"),
        (["--layers", "one"], "--layers 'one' is not a comma-separated list"),
        (["--limit", "0"], "--limit is a number of held-out tokens, at least 1"),
        (["--plan", "plan.json", "--layers", "1"], "with --plan, drop --layers"),
    ],
)
def test_bad_layers_or_limit_get_one_clear_line_and_no_file(checkpoint, tmp_path, args, message):
    model, spec = checkpoint
    run = reapkit("ablate", model, "--data", spec, *args, "--out", tmp_path / "costs.csv")
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "costs.csv").exists()
