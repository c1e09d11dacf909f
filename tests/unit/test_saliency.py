"""Criteria as a registry: a criterion registered from outside reapkit works in scores, plans, the CLI and notebook checks."""

import subprocess
import sys

import numpy as np
import pytest
from tiny_models import tiny_model

from reapkit.errors import InvalidInput
from reapkit.observe.recorder import observe
from reapkit.run import cli
from reapkit.run.parameters import ParameterError, check_parameters
from reapkit.run.plugins import load_plugins
from reapkit.select import criteria
from reapkit.select.criteria import CRITERIA_NAMES, check_ratio, register_criterion, score, scores_frame
from reapkit.select.plan import PruningPlan

PLUGIN = '''
import reapkit


def loudest(stats, seed):
    """Sum of activation norms per routed token, squared: an outside criterion."""
    return (stats["norm_sum"] / np.maximum(stats["count"], 1)) ** 2


import numpy as np

reapkit.register_criterion("loudest", loudest, needs=["norm_sum", "count"])
'''


@pytest.fixture(scope="module")
def obs():
    import torch

    from reapkit.data import pad_batches

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 10, 5, 9, 12)]
    return observe(
        tiny_model("qwen3_moe"), pad_batches(seqs[:3], "code", 3) + pad_batches(seqs[3:], "prose", 2), progress=False
    )


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_criteria.py"
    path.write_text(PLUGIN)
    yield path
    criteria._REGISTRY.pop("loudest", None)


def test_registered_criterion_in_scores_plans_and_notebook_checks(obs, plugin):
    assert "loudest" not in CRITERIA_NAMES
    load_plugins([plugin, plugin])  # loading twice runs the file once
    assert list(CRITERIA_NAMES)[-1] == "loudest"
    np.testing.assert_allclose(score(obs, "loudest"), score(obs, "ean_mean") ** 2)
    frame = scores_frame(obs, ["reap", "loudest"])
    assert set(frame.criterion) == {"reap", "loudest"} and set(frame.domain) == {"all", "code", "prose"}
    plan = PruningPlan.from_observations(obs, "loudest", ratio=0.25)
    assert plan.criterion == "loudest" and all(len(k) == 6 for k in plan.kept.values())
    ranked = np.argsort(-score(obs, "ean_mean")[0], kind="stable")[:6]
    assert plan.kept[obs.layers[0]] == sorted(ranked.tolist())
    params = {"criteria": ["loudest", "reap"]}  # the other parameters take their declared defaults
    assert check_parameters(params, "01_saliency").criteria == ["loudest", "reap"]
    with pytest.raises(ParameterError, match="unknown criterion"):
        check_parameters({**params, "criteria": ["quietest"]}, "01_saliency")


def test_cli_loads_a_plugin_for_scores(obs, plugin, tmp_path, capsys):
    obs.save(tmp_path / "obs")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "reapkit",
            "scores",
            str(tmp_path / "obs"),
            "--criterion",
            "loudest",
            "--plugin",
            str(plugin),
            "--csv",
            str(tmp_path / "s.csv"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "loudest scores" in run.stdout and (tmp_path / "s.csv").is_file()
    assert cli.main(["scores", str(tmp_path / "obs"), "--criterion", "loudest"]) == 2  # not loaded here
    assert "unknown criterion 'loudest'" in capsys.readouterr().err
    assert cli.main(["scores", str(tmp_path / "obs"), "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "plugin file" in capsys.readouterr().err


def test_random_is_a_seeded_criterion_like_the_others(obs):
    shape = (len(obs.layers), max(obs.num_experts))
    np.testing.assert_array_equal(score(obs, "random", seed=3), np.random.default_rng(3).random(shape))
    assert criteria._REGISTRY["random"].needs == ("count",)
    assert list(CRITERIA_NAMES) == [
        "reap",
        "frequency",
        "soft_frequency",
        "ean_sum",
        "ean_mean",
        "weighted_ean_sum",
        "max_activation",
        "ean_ca",
        "msan",
        "aimer",
        "random",
    ]
    assert set(criteria.DEFAULT_CRITERIA) <= set(CRITERIA_NAMES)


def test_bad_registrations_and_bad_criteria_say_what_to_do(obs):
    with pytest.raises(InvalidInput, match="built-in"):
        register_criterion("reap", lambda stats, seed: stats["count"], needs=["count"])
    with pytest.raises(InvalidInput, match="identifier"):
        register_criterion("my criterion", lambda stats, seed: stats["count"], needs=["count"])
    with pytest.raises(InvalidInput, match="needs must name"):
        register_criterion("empty_needs", lambda stats, seed: stats["count"], needs=[])
    with pytest.raises(TypeError, match="fn must be a function"):
        register_criterion("not_callable", 3, needs=["count"])
    try:
        register_criterion("flat", lambda stats, seed: stats["count"].sum(1), needs=["count"])
        register_criterion("unknown_stat", lambda stats, seed: stats["nope"], needs=["nope"])
        with pytest.raises(InvalidInput, match=r"shape \(2,\).*shape \(2, 8\)"):
            score(obs, "flat")
        with pytest.raises(
            ValueError,
            match=r"criterion 'unknown_stat' needs the statistic 'nope', which these observations do not hold; observe",
        ):
            score(obs, "unknown_stat")
    finally:
        criteria._REGISTRY.pop("flat", None)
        criteria._REGISTRY.pop("unknown_stat", None)
    with pytest.raises(ValueError, match="cannot be imported"):
        load_plugins("no_such_reapkit_plugin_module")


@pytest.mark.parametrize("value", [1, 1.0, -0.1, float("nan"), True, "0.5", None])
def test_check_ratio_rejects(value):
    with pytest.raises(InvalidInput, match=r"ratios must be in \[0, 1\)"):
        check_ratio(value, "ratios")


def test_check_ratio_accepts():
    assert check_ratio(0) == 0.0 and isinstance(check_ratio(np.float32(0.5)), float)


def test_shared_constants_load_without_torch():
    code = (
        "import sys; from reapkit.select.criteria import DEFAULT_CRITERIA, check_ratio; from reapkit.data import DOMAINS; "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(DOMAINS, DEFAULT_CRITERIA)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "('code', 'prose', 'tools', 'math') ('reap', 'frequency', 'ean_mean', 'soft_frequency')" in run.stdout
