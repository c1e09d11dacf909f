"""The notebooks: committed clean, parameters checked, executed by papermill on a tiny model; widgets."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from reapkit.notebook import ParameterError, check_parameters  # noqa: E402
from reapkit.sweep import run_notebook  # noqa: E402
from tiny_models import tiny_checkpoint, tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["01_saliency", "02_clusters", "03_pruning", "04_paper_figures"]


def _figures(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()} if folder.is_dir() else {}


# --------------------------------------------------------------------------------------------
# Committed notebooks
# --------------------------------------------------------------------------------------------

def test_all_notebooks_are_committed():
    assert set(NAMES) <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs; clear them (python notebooks/build.py)"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    following = next(c for c in nb.cells[tagged[0] + 1:] if c.cell_type == "code")
    assert "check_parameters(" in following.source
    assert nb.metadata.kernelspec.name == "python3"


def test_notebooks_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", ROOT / "notebooks" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for name, cells in build.NOTEBOOKS.items():
        committed = nbformat.read(str(ROOT / "notebooks" / f"{name}.ipynb"), as_version=4)
        assert [c.source for c in committed.cells] == [c.source for c in build.build_notebook(cells).cells], (
            f"{name}.ipynb differs from notebooks/build.py; run python notebooks/build.py")


# --------------------------------------------------------------------------------------------
# Parameter checks
# --------------------------------------------------------------------------------------------

GOOD = dict(model="demo", calibration="code:4,prose:4", seed=0, max_length=16, batch_size=2, layers=None,
            output_dir="out", figures_dir="fig", cache_dir=None, interactive=False, criteria=["reap"], ratios=[0.5])


@pytest.mark.parametrize("name, value, message", [
    ("criteria", ["reap", "nope"], "unknown criterion"),
    ("ratios", [0.5, 1.5], r"\[0, 1\)"),
    ("ratios", "half", r"\[0, 1\)"),
    ("seed", "0", "integer"),
    ("interactive", "yes", "True or False"),
    ("max_length", 2, "integer"),
    ("calibration", "nosuchdomain:4", "unknown built-in domain"),
])
def test_check_parameters_names_the_bad_one(name, value, message):
    with pytest.raises(ParameterError, match=rf"parameter '{name}'.*{message}"):
        check_parameters({**GOOD, name: value}, "01_saliency")


def test_check_parameters_normalises_and_reports_missing():
    P = check_parameters({**GOOD, "criteria": "frequency", "ratios": 0.25, "extra": 1}, "01_saliency")
    assert P.criteria == ["frequency"] and P.ratios == [0.25]
    with pytest.raises(ParameterError, match="'ratios' is missing"):
        check_parameters({k: v for k, v in GOOD.items() if k != "ratios"}, "01_saliency")
    assert check_parameters({"n": 3}, {"n": int}).n == 3
    with pytest.raises(ParameterError, match="'n' must be of type int"):
        check_parameters({"n": True}, {"n": int})


# --------------------------------------------------------------------------------------------
# Executed notebooks (tiny qwen3_moe saved to disk, token-id calibration files)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model, spec = tiny_checkpoint(root)
    return {"root": root, "params": dict(model=str(model), calibration=spec, max_length=12, batch_size=4,
                                         cache_dir=str(root / "cache")), "spec": spec}


def _executed_ok(path: Path, figures: Path | None = None):
    """No error cell, and (given the figures folder) every saved figure also shows inline."""
    nb = nbformat.read(str(path), as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if figures is not None:
        inline = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        saved = len(list(figures.glob("*.png")))
        assert saved and inline >= saved, f"{path.name}: {saved} figures saved but {inline} shown inline"
    return nb


@pytest.mark.slow
def test_notebook_01_saliency(tiny, tmp_path):
    out = run_notebook(ROOT / "notebooks/01_saliency.ipynb", {**tiny["params"], "ratios": [0.5]}, tmp_path)
    _executed_ok(out, tmp_path / "figures")
    figures = _figures(tmp_path / "figures")
    for name in ("saliency_heatmaps", "saliency_heatmaps_sorted", "saliency_curves", "criterion_agreement",
                 "domain_frequency", "domain_reap", "specialisation_by_depth"):
        assert figures.get(f"{name}.png", 0) > 0 and figures.get(f"{name}.pdf", 0) > 0, name
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results.columns) >= {"layer", "criterion_a", "criterion_b", "spearman", "overlap", "ratio"}
    assert len(results) == 2 * 6  # 2 MoE layers x 6 pairs of 4 criteria
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert set(scores.domain) == {"all", "code", "prose"}


@pytest.mark.slow
def test_notebook_02_clusters(tiny, tmp_path):
    out = run_notebook(ROOT / "notebooks/02_clusters.ipynb", {**tiny["params"], "layers": [1], "n_clusters": 3}, tmp_path)
    _executed_ok(out, tmp_path / "figures")
    figures = _figures(tmp_path / "figures")
    for name in ("distances_weights", "distances_output", "distances_router", "saliency_clusters"):
        assert figures.get(f"{name}.png", 0) > 0 and figures.get(f"{name}.pdf", 0) > 0, name
    clusters = pd.read_csv(tmp_path / "results.csv")
    assert set(clusters.space) == {"weights", "output", "router"} and set(clusters.layer) == {1}
    assert (clusters.groupby("space").cluster.nunique() == 3).all()


@pytest.mark.slow
def test_notebook_03_pruning(tiny, tmp_path):
    params = {**tiny["params"], "evaluation": tiny["spec"], "criteria": ["reap", "frequency"], "ratios": [0.5]}
    out = run_notebook(ROOT / "notebooks/03_pruning.ipynb", params, tmp_path)
    _executed_ok(out, tmp_path / "figures")
    figures = _figures(tmp_path / "figures")
    for name in ("plan_masks", "loss_vs_ratio_by_domain", "agreement_vs_ratio", "kl_vs_ratio", "reconstruction_error"):
        assert figures.get(f"{name}.png", 0) > 0 and figures.get(f"{name}.pdf", 0) > 0, name
    results = pd.read_csv(tmp_path / "results.csv")
    assert {"ratio", "criterion", "domain", "loss", "kl", "agreement"} <= set(results.columns)
    assert len(results) == 3 * 3  # (unpruned + 2 plans) x (code, prose, all)
    base = results[results.criterion == "none"]
    assert (base.agreement == 1).all() and (base.kl.abs() < 1e-6).all()
    assert len(pd.read_csv(tmp_path / "reconstruction.csv")) == 2 * 2
    checkpoint = tmp_path / "pruned_checkpoint"
    plan = json.loads((checkpoint / "pruning_plan.json").read_text())
    assert plan["criterion"] == "reap" and plan["ratio"] == 0.5
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert model.config.num_experts == 4 and model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 4


@pytest.mark.slow
def test_notebook_04_paper_figures(tiny, tmp_path):
    rows = [(r, c, d, 2 + r, r / 4, 1 - r / 2) for c in ("reap", "frequency") for r in (0.25, 0.5) for d in ("code", "prose", "all")]
    rows += [(0.0, "none", d, 2.0, 0.0, 1.0) for d in ("code", "prose", "all")]
    for i in range(2):
        folder = tmp_path / "sweep" / f"run{i}"
        folder.mkdir(parents=True)
        pd.DataFrame(rows, columns=["ratio", "criterion", "domain", "loss", "kl", "agreement"]).to_csv(folder / "results.csv", index=False)
    params = {**tiny["params"], "results": [str(tmp_path / "sweep" / "*" / "results.csv")]}
    out = run_notebook(ROOT / "notebooks/04_paper_figures.ipynb", params, tmp_path / "out")
    _executed_ok(out, tmp_path / "out" / "figures")
    figures = _figures(tmp_path / "out" / "figures")
    for name in ("loss_vs_ratio", "loss_vs_ratio_by_domain", "kl_vs_ratio", "agreement_vs_ratio", "criterion_agreement",
                 "specialisation_by_depth"):
        assert figures.get(f"{name}.png", 0) > 0 and figures.get(f"{name}.pdf", 0) > 0, name
    summary = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(summary) == len(rows)


def test_bad_parameter_stops_at_the_checking_cell(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        run_notebook(ROOT / "notebooks/01_saliency.ipynb", {"criteria": ["reap", "nonsense"]}, tmp_path)
    assert "parameter 'criteria'" in str(info.value) and "ParameterError" in str(info.value)
    nb = nbformat.read(str(tmp_path / "01_saliency.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    failing = [i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    assert len(failing) == 1 and "check_parameters(" in code[failing[0]].source
    assert all(c.execution_count is None for c in code[failing[0] + 1:])
    assert not (tmp_path / "figures").exists()


# --------------------------------------------------------------------------------------------
# Widgets
# --------------------------------------------------------------------------------------------

def test_explorer_redraws_on_every_control(batches, tmp_path):
    from reapkit.observe import observe
    from reapkit.widgets import SaliencyExplorer, explorer

    obs = observe(tiny_model("qwen3_moe"), batches, progress=False)
    obs.save(tmp_path / "obs")
    e = explorer(tmp_path / "obs", criteria=["reap", "frequency"], n_clusters=3)
    assert isinstance(e, SaliencyExplorer) and e.redraws == 1
    assert set(e.figures) == {"saliency", "clusters", "mask"}
    e.layer.value = obs.layers[1]
    e.criterion.value = "frequency"
    e.domain.value = "code"
    e.ratio.value = 0.5
    assert e.redraws == 5
    plan = e.plan()
    assert plan.criterion == "frequency" and all(len(k) == 4 for k in plan.kept.values())
    assert list(e.layer_scores()) == list(
        pd.Series(obs.pooled(["code"])["count"][1].numpy()))  # frequency in the code domain, layer 1
    e.update()
    assert e.redraws == 6
    with pytest.raises(ValueError, match="unknown view"):
        SaliencyExplorer(obs, views=("nope",))
