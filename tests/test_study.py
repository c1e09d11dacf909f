"""The REAP study: compression study frame, calibration sensitivity, summary, figures, notebook 05."""
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from reapkit import plot, study  # noqa: E402
from reapkit.data import pad_batches  # noqa: E402
from reapkit.observe import observe  # noqa: E402
from tiny_models import tiny_checkpoint, tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RATIOS = (0.0, 0.25, 0.5, 0.75)  # tiny model: 8 experts, top-2 -> keeps 8, 6, 4, 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores shared with other work: one torch thread is many times faster than two here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batches(n, domain, seed, length=16):
    g = torch.Generator().manual_seed(seed)
    return pad_batches([torch.randint(3, 96, (length - i % 3,), generator=g).tolist() for i in range(n)], domain, 4)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("qwen3_moe")
    calibration = _batches(8, "code", 1) + _batches(8, "prose", 2)
    evaluation = _batches(4, "code", 3) + _batches(4, "prose", 4)
    obs = observe(model, calibration, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = study.compression_study(model, obs, evaluation, ratios=(*RATIOS, 0.875), progress=False)
    return {"model": model, "calibration": calibration, "evaluation": evaluation, "obs": obs, "results": results,
            "warnings": [str(w.message) for w in caught]}


def test_study_frame_columns_and_rows(setup):
    results = setup["results"]
    assert list(results.columns) == study.COLUMNS
    # per ratio: 4 criteria + 3 random seeds + 2 merges + 1 global = 10 variants, x (code, prose, all)
    assert len(results) == len(RATIOS) * 10 * 3
    assert set(results.method) == {"prune", "merge", "global"}
    assert set(results.criterion) == {"reap", "frequency", "soft_frequency", "ean_mean", "random", "m_smoe", "hc_smoe"}
    assert set(results.domain) == {"code", "prose", "all"}
    assert sorted(results.ratio.unique()) == list(RATIOS)
    random = results[results.criterion == "random"]
    assert sorted(random.seed.unique()) == [0, 1, 2] and results[results.criterion != "random"].seed.isna().all()
    assert set(results[results.method == "global"].label) == {"global_reap"}


def test_impossible_ratio_is_skipped_with_a_note(setup):
    assert 0.875 not in set(setup["results"].ratio)
    notes = setup["results"].attrs["notes"]
    assert len(notes) == 1 and "0.875" in notes[0] and "top-k" in notes[0]
    assert any("0.875" in w for w in setup["warnings"])


def test_ratio_zero_is_the_unpruned_model_for_every_method(setup):
    results = setup["results"]
    zero = results[results.ratio == 0]
    assert len(zero) == 10 * 3
    assert (zero.kl.abs() < 1e-6).all() and (zero.top1_agreement == 1).all()
    assert np.isfinite(results[["loss", "perplexity", "kl", "top1_agreement"]].to_numpy(float)).all()
    assert (results[results.ratio > 0].groupby("label").kl.max() > 0).all()  # every method changes the model
    pruned = results[results.method != "merge"]
    assert np.allclose(pruned[pruned.ratio == 0].kept_routing, 1) and (pruned.kept_routing <= 1 + 1e-9).all()
    assert results[results.method == "merge"].kept_routing.isna().all()


def test_merges_keep_as_many_experts_as_pruning_and_global_keeps_the_total(setup):
    results = setup["results"]
    for ratio, part in results.groupby("ratio"):
        prune = part[part.method == "prune"]
        assert prune.experts_kept.nunique() == 1
        kept = int(prune.experts_kept.iloc[0])
        assert kept == 8 - int(8 * ratio)
        assert (part[part.method == "merge"].experts_kept == kept).all()
        glob = part[part.method == "global"]
        assert (glob.experts_kept == 2 * kept).all()  # 2 MoE layers: the same total, spread unevenly
        assert (part.experts_total == 2 * kept).all()


def test_global_plan_uses_the_same_total(setup):
    from reapkit.plan import PruningPlan

    plan = PruningPlan.from_global_budget(setup["obs"], "reap", total=8)
    assert sum(len(v) for v in plan.kept.values()) == 8


def test_calibration_sensitivity(setup):
    loss, overlap = study.calibration_sensitivity(setup["model"], None, setup["evaluation"], domains=("code", "prose"),
                                                  calibration=setup["calibration"], ratio=0.5, progress=False)
    assert list(loss.columns) == ["unpruned", "code", "prose", "mix"]
    assert list(loss.index) == ["code", "prose", "all"]
    assert np.isfinite(loss.to_numpy()).all()
    assert list(overlap.index) == list(overlap.columns) == ["code", "prose", "mix"]
    assert np.allclose(np.diag(overlap), 1) and ((overlap >= 0) & (overlap <= 1)).all().all()
    assert np.allclose(overlap, overlap.T)
    # per-domain statistics of one pass == observing each domain alone
    alone, _ = study.calibration_sensitivity(setup["model"], None, setup["evaluation"], domains=("code",),
                                             calibration=setup["calibration"][:2], ratio=0.5, progress=False)
    assert alone.loc["all", "code"] == pytest.approx(loss.loc["all", "code"])
    # the same Observations, no model pass
    with pytest.warns(UserWarning, match="'math'"):
        again, _ = study.calibration_sensitivity(setup["model"], None, setup["evaluation"], domains=("code", "prose", "math"),
                                                 calibration=setup["obs"], ratio=0.5, progress=False)
    pd.testing.assert_frame_equal(again, loss)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        study.calibration_sensitivity(setup["model"], None, setup["evaluation"])
    with pytest.raises(ValueError, match="none of the domains"):
        study.calibration_sensitivity(setup["model"], None, setup["evaluation"], domains=("math",), calibration=setup["obs"])


def test_summarise_mentions_every_method(setup):
    sensitivity = study.calibration_sensitivity(setup["model"], None, setup["evaluation"], domains=("code", "prose"),
                                                calibration=setup["obs"], progress=False)
    text = study.summarise(setup["results"], sensitivity)
    for name in ("frequency", "soft_frequency", "ean_mean", "random", "m_smoe", "hc_smoe", "global_reap",
                 "prune", "merge", "global"):
        assert f"`{name}`" in text or f"({name})" in text, name
    for ratio in ("25%", "50%", "75%"):
        assert ratio in text
    assert "Calibration" in text and "**code**" in text and "Jaccard" in text
    assert "REAP" in study.summarise(setup["results"])  # without the sensitivity part
    assert "not in these results" in study.summarise(setup["results"][setup["results"].criterion != "reap"])


def test_results_table_is_what_notebook_04_reads(setup):
    table = study.results_table(setup["results"], model="tiny")
    assert {"ratio", "criterion", "domain", "loss", "kl", "agreement", "model"} <= set(table.columns)
    assert {"global_reap", "m_smoe", "reap"} <= set(table.criterion)


def test_study_figures(setup, tmp_path):
    fig = plot.study_figure(setup["results"])
    assert len([a for a in fig.axes if a.get_visible()]) == 2 * 3
    sensitivity = study.calibration_sensitivity(setup["model"], None, setup["evaluation"], domains=("code", "prose"),
                                                calibration=setup["obs"], progress=False)
    fig2 = plot.calibration_figure(*sensitivity)
    paths = plot.save_figure(fig, tmp_path, "study", close=True) + plot.save_figure(fig2, tmp_path, "calib", close=True)
    assert all(p.stat().st_size > 0 for p in paths)
    assert plot.study_curves(pd.DataFrame(columns=study.COLUMNS)).texts  # "no data"


def test_bad_input(setup):
    with pytest.raises(ValueError, match="ratios"):
        study.compression_study(setup["model"], setup["obs"], setup["evaluation"], ratios=[1.0], progress=False)
    with pytest.raises(ValueError, match="unknown criterion"):
        study.compression_study(setup["model"], setup["obs"], setup["evaluation"], criteria=["nope"], progress=False)
    with pytest.raises(ValueError, match="unknown merge method"):
        study.compression_study(setup["model"], setup["obs"], setup["evaluation"], merges=["nope"], progress=False)


# --------------------------------------------------------------------------------------------
# Notebook 05 under papermill (tiny qwen3_moe saved to disk, token-id files)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_notebook_05_study(tmp_path):
    from reapkit.sweep import run_notebook

    model, spec = tiny_checkpoint(tmp_path)
    params = dict(model=str(model), calibration=spec, evaluation=spec, max_length=12, batch_size=4,
                  cache_dir=str(tmp_path / "cache"), ratios=[0, 0.5], random_seeds=[0, 1])
    out = run_notebook(ROOT / "notebooks/05_study.ipynb", params, tmp_path / "run", threads=1)
    nb = nbformat.read(str(out), as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    figures = tmp_path / "run" / "figures"
    for name in ("study", "calibration_sensitivity"):
        assert (figures / f"{name}.png").stat().st_size > 0 and (figures / f"{name}.pdf").stat().st_size > 0
    results = pd.read_csv(tmp_path / "run" / "study.csv")
    assert len(results) == 2 * (4 + 2 + 2 + 1) * 3
    assert {"agreement", "criterion"} <= set(pd.read_csv(tmp_path / "run" / "results.csv").columns)
    loss = pd.read_csv(tmp_path / "run" / "sensitivity_loss.csv")
    assert list(loss.columns) == ["eval_domain", "unpruned", "code", "prose", "mix"]
    assert "REAP" in (tmp_path / "run" / "summary.md").read_text()


def test_notebook_05_bad_parameter(tmp_path):
    from reapkit.notebook import ParameterError, check_parameters

    good = dict(model="demo", calibration="code:4", evaluation="code:4", seed=0, max_length=16, batch_size=2,
                output_dir="o", figures_dir="f", cache_dir=None, interactive=False, ratios=[0, 0.5], criteria=["reap"],
                random_seeds=[], merges=[], global_budget=False, margin=0, sensitivity=True, sensitivity_ratio=0.5,
                sensitivity_criterion="reap")
    assert check_parameters(good, "05_study").merges == []
    with pytest.raises(ParameterError, match="'merges'.*unknown merge method"):
        check_parameters({**good, "merges": ["zip"]}, "05_study")
    with pytest.raises(ParameterError, match="'global_budget'"):
        check_parameters({**good, "global_budget": "nope"}, "05_study")


def test_study_sweep_file_is_valid():
    from reapkit.sweep import load_sweep

    sweep = load_sweep(ROOT / "sweeps" / "study.yaml")
    assert sweep["notebook"].name == "05_study.ipynb" and len(sweep["runs"]) == 3
