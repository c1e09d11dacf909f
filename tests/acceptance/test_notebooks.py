"""The notebooks: committed clean, parameters checked, executed by papermill on a tiny model; widgets."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from tiny_models import tiny_checkpoint, tiny_model  # noqa: E402

from reapkit.run.execute import run_notebook  # noqa: E402
from reapkit.run.parameters import ParameterError, check_parameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["01_saliency", "02_clusters", "03_pruning", "04_paper_figures", "05_study"]


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
            assert cell.outputs == [], (
                f"{path.name} cell {i} has outputs; clear them (python -m reapkit.run.notebook sync)"
            )
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    following = next(c for c in nb.cells[tagged[0] + 1 :] if c.cell_type == "code")
    assert "check_parameters(" in following.source
    assert nb.metadata.kernelspec.name == "reapkit"  # make lab's kernel; batch runs name python3 (run_notebook)


def test_each_ipynb_matches_its_percent_source():
    """A cell edited in JupyterLab (the .ipynb) or in an editor (the .py) cannot silently diverge."""
    import jupytext

    from reapkit.run.notebook import sync_notebooks

    sources = sorted((ROOT / "notebooks").glob("*.py"))
    assert {p.stem for p in sources} == {p.stem for p in NOTEBOOKS}
    for source in sources:
        paired = jupytext.read(str(source), fmt="py:percent")
        committed = nbformat.read(str(source.with_suffix(".ipynb")), as_version=4)
        assert [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in committed.cells] == [
            (c.cell_type, c.source, c.metadata.get("tags", [])) for c in paired.cells
        ], f"{source.stem}.ipynb differs from {source.name}; edit one and run python -m reapkit.run.notebook sync"
        assert committed.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert sync_notebooks(check=True) == [], "run python -m reapkit.run.notebook sync"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_the_declaration(path):
    from reapkit.run.parameters import PARAMETERS, notebook_defaults, parameters_cell

    nb = nbformat.read(str(path), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert cell.source == parameters_cell(path.stem)
    values = {}
    exec(cell.source, {}, values)  # the cell's defaults are the declared ones, and pass the checks
    assert values == notebook_defaults(path.stem)
    check_parameters(values, path.stem)
    assert len({p.name for p in PARAMETERS[path.stem]}) == len(PARAMETERS[path.stem])
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "**Question:**" in first.source, "each notebook opens with its question"


def test_no_notebook_quotes_a_commit_id():
    import re

    for path in NOTEBOOKS:
        text = " ".join(c.source for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "markdown")
        assert not re.search(r"commit `?[0-9a-f]{7,40}", text), path.name


# --------------------------------------------------------------------------------------------
# Parameter checks
# --------------------------------------------------------------------------------------------

GOOD = dict(
    model="demo",
    calibration="code:4,prose:4",
    seed=0,
    max_length=16,
    batch_size=2,
    layers=None,
    output_dir="out",
    figures_dir="fig",
    cache_dir=None,
    interactive=False,
    criteria=["reap"],
    ratios=[0.5],
)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("criteria", ["reap", "nope"], "unknown criterion"),
        ("ratios", [0.5, 1.5], r"\[0, 1\)"),
        ("ratios", "half", r"\[0, 1\)"),
        ("seed", "0", "integer"),
        ("interactive", "yes", "True or False"),
        ("max_length", 2, "integer"),
        ("calibration", "nosuchdomain:4", "unknown built-in domain"),
    ],
)
def test_check_parameters_names_the_bad_one(name, value, message):
    with pytest.raises(ParameterError, match=rf"parameter '{name}'.*{message}"):
        check_parameters({**GOOD, name: value}, "01_saliency")


def test_check_parameters_normalises_and_fills_declared_defaults():
    P = check_parameters({**GOOD, "criteria": "frequency", "ratios": 0.25, "extra": 1}, "01_saliency")
    assert P.criteria == ["frequency"] and P.ratios == [0.25]
    assert check_parameters({k: v for k, v in GOOD.items() if k != "ratios"}, "01_saliency").ratios == [0.25, 0.5]
    assert check_parameters({"n": 3}, {"n": int}).n == 3
    with pytest.raises(ParameterError, match="'n' is missing"):
        check_parameters({}, {"n": int})
    with pytest.raises(ParameterError, match="'n' must be of type int"):
        check_parameters({"n": True}, {"n": int})


def test_numbers_as_strings_are_refused_with_the_fix():
    """papermill -r ratio 0.25 (or a quoted YAML value) passes the string "0.25"."""
    with pytest.raises(
        ParameterError, match=r"parameter 'ratio' = '0.25'.*string '0.25': pass the number without quotes"
    ):
        check_parameters({"ratio": "0.25"}, "02_clusters")
    with pytest.raises(ParameterError, match="'seed'.*without quotes"):
        check_parameters({"seed": "3"}, "02_clusters")


def test_output_paths_resolve_against_the_project_root(monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")  # where JupyterLab starts kernels
    P = check_parameters({}, "01_saliency")
    assert P.figures_dir == str(ROOT / "figures" / "01_saliency") and P.cache_dir == str(ROOT / "runs" / "cache")
    assert check_parameters({"output_dir": "/tmp/x"}, "01_saliency").output_dir == "/tmp/x"


def test_device_map_is_passed_only_when_set(tmp_path):
    from reapkit.run.notebook import load_model

    model, _ = tiny_checkpoint(tmp_path)
    loaded, tokenizer = load_model(str(model), device_map=None)  # works before and after load_model takes device_map
    assert tokenizer is None and loaded.config.model_type == "qwen3_moe"
    with pytest.raises(ParameterError, match="device_map"):
        check_parameters({"device_map": 3}, "01_saliency")


def test_sweeps_are_checked_against_the_declarations(tmp_path):
    import yaml

    from reapkit.run.sweep import SweepError, load_sweep

    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {"notebook": str(ROOT / "notebooks" / "03_pruning.ipynb"), "grid": {"ratios": [[0.5], ["0.75"]]}}
        )
    )
    with pytest.raises(SweepError, match=r"run 001-ratios=0.75.*'ratios'.*without quotes.*Nothing was run"):
        load_sweep(path)
    sweep = load_sweep(ROOT / "sweeps" / "ratios.yaml", overrides={"ratios": [0.5], "seed": 3}, limit=1)
    assert len(sweep["runs"]) == 1 and sweep["runs"][0]["parameters"]["ratios"] == [0.5]


# --------------------------------------------------------------------------------------------
# Executed notebooks (tiny qwen3_moe saved to disk, token-id calibration files)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model, spec = tiny_checkpoint(root)
    return {
        "root": root,
        "params": dict(model=str(model), calibration=spec, max_length=12, batch_size=4, cache_dir=str(root / "cache")),
        "spec": spec,
    }


def _has_figures(folder: Path, *names):
    figures = _figures(folder)
    for name in names:
        assert figures.get(f"{name}.png", 0) > 0 and figures.get(f"{name}.pdf", 0) > 0, name


def _readings(nb) -> int:
    """Markdown outputs that read a figure (written by reapkit.study.readings)."""
    return sum(
        "**Reading.**" in "".join(o.get("data", {}).get("text/markdown", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


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
    """Run with a plugin that registers an outside criterion, compared beside three built-in ones."""
    plugin = tmp_path / "quiet.py"
    plugin.write_text(
        "import reapkit\n"
        "reapkit.register_criterion('quietest', lambda stats, seed: -stats['norm_sum'], needs=['norm_sum'])\n"
    )
    params = {
        **tiny["params"],
        "ratios": [0.5],
        "plugins": [str(plugin)],
        "criteria": ["reap", "frequency", "ean_mean", "quietest"],
        "evaluation": tiny["spec"],
    }
    out = run_notebook(ROOT / "notebooks/01_saliency.ipynb", params, tmp_path / "run")
    tmp_path = tmp_path / "run"
    nb = _executed_ok(out, tmp_path / "figures")
    _has_figures(
        tmp_path / "figures",
        "saliency_heatmaps",
        "expert_usage",
        "saliency_curves",
        "kept_mass",
        "criterion_agreement",
        "domain_frequency",
        "specialisation_by_depth",
        "ablation_rank_correlation",
        "criterion_vs_ablation",
        "joint_vs_singles",
    )
    assert _readings(nb) == 9
    costs = pd.read_csv(tmp_path / "ablation.csv")  # every expert of both MoE layers masked alone
    assert len(costs) == 2 * 8 and ((costs.lo <= costs.loss_change) & (costs.loss_change <= costs.hi)).all()
    correlation = pd.read_csv(tmp_path / "ablation_correlation.csv")  # every criterion these observations score
    assert {"reap", "ean_ca", "msan", "aimer", "quietest"} <= set(correlation.criterion)
    joint = pd.read_csv(tmp_path / "plan_ablation.csv")
    assert "all" in set(joint.layer.astype(str))
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results.columns) >= {"layer", "criterion_a", "criterion_b", "spearman", "overlap", "ratio"}
    assert len(results) == 2 * 6  # 2 MoE layers x 6 pairs of 4 criteria
    assert "quietest" in set(results.criterion_a) | set(results.criterion_b)
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert set(scores.domain) == {"all", "code", "prose"}


@pytest.mark.slow
def test_notebook_02_clusters(tiny, tmp_path):
    out = run_notebook(
        ROOT / "notebooks/02_clusters.ipynb", {**tiny["params"], "layers": [1], "n_clusters": 3}, tmp_path
    )
    nb = _executed_ok(out, tmp_path / "figures")
    _has_figures(tmp_path / "figures", "distance_spread", "distances", "saliency_clusters", "merging")
    assert _readings(nb) == 4
    distances = pd.read_csv(tmp_path / "alignment.csv")  # M-SMoE's members, aligned to their dominant expert
    assert len(distances) and (distances.after <= distances.before + 1e-3).all() and set(distances.layer) == {1}
    fidelity = pd.read_csv(tmp_path / "merge_fidelity.csv")
    assert set(fidelity.expert) == {"merged", "representative"} and (fidelity.tokens > 0).any()
    clusters = pd.read_csv(tmp_path / "results.csv")
    assert set(clusters.space) == {"weights", "output", "router"} and set(clusters.layer) == {1}
    assert (clusters.groupby("space").cluster.nunique() == 3).all()


@pytest.mark.slow
def test_notebook_03_pruning(tiny, tmp_path):
    params = {
        **tiny["params"],
        "evaluation": tiny["spec"],
        "criteria": ["reap", "frequency"],
        "ratios": [0.5],
        "max_new_tokens": 0,
        "recover_ratios": [0.5],
        "recover_epochs": 1,
        "budget_ratios": [0.5],
        "search_generations": 1,
        "search_population": 2,
    }
    out = run_notebook(ROOT / "notebooks/03_pruning.ipynb", params, tmp_path)
    nb = _executed_ok(out, tmp_path / "figures")
    _has_figures(
        tmp_path / "figures",
        "plan_masks",
        "loss_vs_ratio_by_domain",
        "reconstruction_error",
        "recovery",
        "budget_searches",
    )
    assert _readings(nb) == 7
    budgets = pd.read_csv(tmp_path / "budgets.csv")  # every search keeps the uniform plan's total
    assert set(budgets.search) == {"uniform", "global", "water", "evolution"} and budgets.kept.nunique() == 1
    recovery = pd.read_csv(tmp_path / "recovery.csv")
    assert set(recovery.metric) == {"loss", "kl"} and (recovery.ratio == 0.5).all()
    assert (recovery.recovered_lo <= recovery.recovered).all() and (recovery.recovered <= recovery.recovered_hi).all()
    results = pd.read_csv(tmp_path / "results.csv")
    assert {"ratio", "criterion", "domain", "loss", "loss_lo", "loss_hi", "kl", "agreement"} <= set(results.columns)
    assert len(results) == 3 * 3  # (unpruned + 2 plans) x (code, prose, all)
    base = results[results.criterion == "unpruned"]  # the one name of the unpruned baseline
    assert len(base) == 3 and (base.agreement == 1).all() and (base.kl.abs() < 1e-6).all()
    assert not results.isin(["none"]).any().any()
    assert len(pd.read_csv(tmp_path / "reconstruction.csv")) == 2 * 2
    assert not (tmp_path / "samples.csv").exists()  # max_new_tokens = 0: no samples
    checkpoint = tmp_path / "pruned_checkpoint"
    plan = json.loads((checkpoint / "pruning_plan.json").read_text())
    assert plan["criterion"] == "reap" and plan["ratio"] == 0.5
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert model.config.num_experts == 4 and model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 4


def _shown(cell) -> list[str]:
    """What a cell showed in words: its text and Markdown outputs (figures aside)."""
    return [
        "".join(o.get("text", ""))
        + "".join(o.get("data", {}).get(kind, "") for kind in ("text/markdown", "text/plain"))
        for o in cell.outputs
    ]


@pytest.mark.slow
def test_notebook_03_cells_give_the_same_result_when_run_again(tiny, tmp_path):
    """A person runs notebook 03 top to bottom in one kernel, then the cost cell again (after the checkpoint
    cell pruned a model) and the results cell again: the same readings, the same results.csv."""
    from nbclient import NotebookClient
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    params = {
        **tiny["params"],
        "evaluation": tiny["spec"],
        "criteria": ["reap"],
        "ratios": [0.5],
        "max_new_tokens": 0,
        "output_dir": str(tmp_path),
        "figures_dir": str(tmp_path / "figures"),
    }
    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks/03_pruning.ipynb")), params)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    writes = [i for i in code if 'P.output_dir, "results")' in nb.cells[i].source]
    assert len(writes) == 1, "results.csv is written by one cell"
    costs = next(i for i in code if "evaluate_plans(" in nb.cells[i].source)
    saved = next(i for i in code if "pruned_checkpoint" in nb.cells[i].source)
    assert costs < writes[0] < saved
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        for index in code:
            client.execute_cell(nb.cells[index], index)
        first, table = _shown(nb.cells[costs]), (tmp_path / "results.csv").read_text()
        assert (tmp_path / "pruned_checkpoint" / "pruning_plan.json").is_file()
        for index in (costs, writes[0]):  # run again, as a person does after changing their mind
            client.execute_cell(nb.cells[index], index)
    assert not [o for i in code for o in nb.cells[i].outputs if o.output_type == "error"]
    assert "**Reading.**" in "".join(first) and _shown(nb.cells[costs]) == first
    assert (tmp_path / "results.csv").read_text() == table


@pytest.mark.slow
def test_notebook_04_paper_figures(tiny, tmp_path):
    """Drawn from a real study of the tiny model (results table and per-layer sensitivity, as notebook 05 writes them)."""
    from reapkit.data import calibration_batches
    from reapkit.observe.recorder import observe
    from reapkit.run.notebook import load_model
    from reapkit.study import experiments
    from reapkit.study.sensitivity import layer_sensitivity

    model, _ = load_model(tiny["params"]["model"])
    batches = calibration_batches(tiny["spec"], None, batch_size=4, max_length=12)
    obs = observe(model, batches, progress=False)
    from reapkit.study.gaps import gap_table

    sequences = experiments.study_sequences(
        model,
        obs,
        batches,
        ratios=[0, 0.5],
        criteria=["reap", "frequency"],
        random_seeds=[],
        merges=["m_smoe"],
        global_budget=True,
        progress=False,
    )
    results = experiments.study_results(sequences, resamples=50)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    experiments.results_table(results, model="tiny").to_csv(study_dir / "results.csv", index=False)
    gap_table(sequences, resamples=50).to_csv(study_dir / "gaps.csv", index=False)  # as notebook 05 writes it
    layer_sensitivity(model, obs, batches, resamples=50, progress=False).to_csv(
        study_dir / "layer_sensitivity.csv", index=False
    )
    params = {
        **tiny["params"],
        "results": [str(study_dir / "results.csv")],
        "layer_sensitivity": str(study_dir / "layer_sensitivity.csv"),
    }
    out = run_notebook(ROOT / "notebooks/04_paper_figures.ipynb", params, tmp_path / "out")
    nb = _executed_ok(out, tmp_path / "out" / "figures")
    names = (
        "reap_vs_frequency",
        "global_budget",
        "saliency_dendrogram",
        "coactivation",
        "layer_sensitivity",
        "compression",
        "gap_to_reap",
        "pruning_vs_merging",
    )
    _has_figures(tmp_path / "out" / "figures", *names)
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) == len(names)
    assert _readings(nb) == len(names)
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == len(results)


def test_no_two_notebooks_write_the_same_figure():
    """Figure names saved by each notebook (read from its source): each name belongs to one notebook."""
    import re

    owners = {}
    for path in NOTEBOOKS:
        text = " ".join(c.source for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code")
        for name in re.findall(r'figures\.save\(.*?,\s*f?"([A-Za-z0-9_{}]+)"\)', text, flags=re.S):
            assert name not in owners, f"{name} is written by {owners[name]} and {path.stem}"
            owners[name] = path.stem
    assert len(owners) >= 15


def test_bad_parameter_stops_at_the_checking_cell(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        run_notebook(ROOT / "notebooks/01_saliency.ipynb", {"criteria": ["reap", "nonsense"]}, tmp_path)
    assert "parameter 'criteria'" in str(info.value) and "ParameterError" in str(info.value)
    nb = nbformat.read(str(tmp_path / "01_saliency.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    failing = [i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    assert len(failing) == 1 and "check_parameters(" in code[failing[0]].source
    assert all(c.execution_count is None for c in code[failing[0] + 1 :])
    assert not (tmp_path / "figures").exists()


# --------------------------------------------------------------------------------------------
# Widgets
# --------------------------------------------------------------------------------------------


def test_explorer_redraws_on_every_control(batches, tmp_path):
    from reapkit.observe.recorder import observe
    from reapkit.plot.widgets import SaliencyExplorer, explorer, ratio_label, ratio_options

    obs = observe(tiny_model("qwen3_moe"), batches, progress=False, statistics=["output_sum"])
    obs.save(tmp_path / "obs")
    e = explorer(tmp_path / "obs", criteria=["reap", "frequency"], n_clusters=3)
    assert isinstance(e, SaliencyExplorer) and e.redraws == 1
    assert set(e.figures) == {"saliency", "clusters", "mask"}
    # only ratios a plan can meet (8 experts, top-2: 0..6 removed), labelled as the figures label them
    assert e.ratio.options == tuple(ratio_options(8, 2)) and len(e.ratio.options) == 7
    assert e.ratio.label == "25% (2/8)" and ratio_label(0.625, 16) == "62% (10/16)"
    e.layer.value = obs.layers[1]
    e.criterion.value = "frequency"
    e.domain.value = "code"
    e.ratio.value = 0.75
    assert e.redraws == 5
    plan = e.plan()
    assert plan.criterion == "frequency" and all(len(k) == 2 for k in plan.kept.values())
    assert "<span class='reapkit-kept'>2</span> of 8" in e.summary.value and "75% (6/8)" in e.summary.value
    assert list(e.layer_scores()) == list(
        pd.Series(obs.pooled(["code"])["count"][1].numpy())
    )  # frequency in the code domain, layer 1
    e.update()
    assert e.redraws == 6
    with pytest.raises(ValueError, match="unknown view"):
        SaliencyExplorer(obs, views=("nope",))


def test_study_explorer_draws(tmp_path):
    """The study explorer shows a figure (it used to print `<Axes ...>`)."""
    from reapkit.plot.widgets import study_explorer

    rows = [
        dict(
            method="prune",
            criterion=c,
            label=c,
            seed=None,
            ratio=r,
            domain=d,
            loss=2 + r + (c == "reap"),
            kl=r,
            agreement=1 - r,
        )
        for c in ("reap", "frequency")
        for r in (0.0, 0.5)
        for d in ("all", "code")
    ]
    e = study_explorer(pd.DataFrame(rows))
    assert list(e.metric.options) == ["loss", "kl", "agreement"] and e.domain.options[0] == "all"
    e.metric.value = "kl"
    e.domain.value = "code"
    assert e.redraws == 3
    ax = e.figures["curves"].axes[0]
    assert {line.get_label() for line in ax.lines} >= {"REAP", "frequency"}  # display names


# --------------------------------------------------------------------------------------------
# Shipped sweep files run (a reduced grid: the tiny model, one run each)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
# sweeps/lm_eval.yaml scores with lm-eval, which needs a tokenizer: tests/integration/test_lm_eval.py runs it on the demo model.
@pytest.mark.parametrize(
    "sweep", sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if p.stem != "lm_eval"), ids=lambda p: p.stem
)
def test_shipped_sweep_runs(sweep, tiny, tmp_path, monkeypatch):
    from reapkit.run.parameters import PARAMETERS
    from reapkit.run.sweep import load_sweep, run_sweep

    quick = {
        **tiny["params"],
        "evaluation": tiny["spec"],
        "ratios": [0.5],
        "criteria": ["reap", "frequency"],
        "random_seeds": [],
        "merges": [],
        "sensitivity": False,
        "layer_sensitivity": False,
        "spaces": ["output"],
    }
    notebook = load_sweep(sweep)["notebook"].stem
    overrides = {k: v for k, v in quick.items() if k in {p.name for p in PARAMETERS[notebook]}}
    monkeypatch.chdir(tmp_path)  # runs/<name>/ lands here
    summary = run_sweep(sweep, overrides=overrides, limit=1, jobs=1, progress=False)
    assert list(summary.status) == ["ok"], summary.error.tolist()
    name = load_sweep(sweep)["name"]
    assert len(pd.read_csv(tmp_path / "runs" / name / "results.csv")) == summary.rows.sum() > 0


def test_benchmark_reading_quotes_lm_eval_rows():
    """lm-eval rows (long form) read per task and metric, in each metric's direction; no interval, no claim."""
    from reapkit.study import readings

    def row(criterion, ratio, metric, value, stderr=float("nan")):
        return dict(
            criterion=criterion,
            label=criterion,
            ratio=ratio,
            domain="t",
            metric=metric,
            value=value,
            stderr=stderr,
            value_lo=value - 1.96 * stderr,
            value_hi=value + 1.96 * stderr,
        )

    rows = [
        row("unpruned", 0.0, "bits_per_byte", 1.2),
        row("reap", 0.5, "bits_per_byte", 1.5),
        row("frequency", 0.5, "bits_per_byte", 1.9),
        row("unpruned", 0.0, "acc", 0.8, 0.01),
        row("reap", 0.5, "acc", 0.3, 0.01),
        row("frequency", 0.5, "acc", 0.7, 0.01),
    ]
    text = readings.benchmark_scores(pd.DataFrame(rows))
    bits, acc = text.split("**bits_per_byte**")[1].split("**acc**")
    assert "lower is better" in bits and "best first: reap 1.50, frequency 1.90" in bits and "overlap" not in bits
    assert "higher is better" in acc and "unpruned 0.80 [0.78, 0.82]" in acc
    assert "best first: frequency 0.70 [0.68, 0.72], reap 0.30 [0.28, 0.32]" in acc and "overlap" not in acc
    assert "no difference between plans is claimed" in text  # lm-eval's stderrs are not paired


def test_readings_quote_the_data():
    """The readings under the figures are computed from the tables, not pasted."""
    from reapkit.study import readings

    rows = [
        dict(ratio=r, criterion=c, domain="all", loss=2.0 + r * k, loss_lo=1.9 + r * k, loss_hi=2.1 + r * k)
        for c, k in (("reap", 1.0), ("frequency", 3.0))
        for r in (0.5,)
    ] + [dict(ratio=0.0, criterion="unpruned", domain="all", loss=2.0, loss_lo=1.9, loss_hi=2.1)]
    text = readings.costs(pd.DataFrame(rows))
    assert "unpruned 2.00 [1.90, 2.10]" in text and "best first: reap 2.50 [2.40, 2.60], frequency 3.50" in text
    assert "No difference between methods is claimed" in text  # no paired gaps given: no claim
    agreement = pd.DataFrame(
        [dict(layer=0, criterion_a="reap", criterion_b="frequency", spearman=0.3, overlap=0.6, ratio=0.5)]
    )
    text = readings.criterion_agreement(agreement, experts=16, ratio=0.5)
    # one layer: 6 of 8 pruned experts shared happens by chance 7% of the time, so not beyond chance
    assert "overlap by 0.34" in text and "reap / frequency: rho 0.30 (at chance), overlap 0.60 (at chance)" in text
