"""Sweeps: a bad file is refused before any run; a failing run is reported while the others finish;
results are appended to one table."""

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from reapkit.run.execute import run_notebook
from reapkit.run.sweep import SWEEP_KEYS, SweepError, load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[2]

# A notebook with no heavy imports: writes results.csv, fails when asked to.
DUMMY_PARAMETERS = 'value = 1\nfail = False\noutput_dir = "out"\n'
DUMMY_BODY = """\
import pandas as pd
from pathlib import Path
if fail:
    raise RuntimeError(f"asked to fail with value={value}")
Path(output_dir).mkdir(parents=True, exist_ok=True)
pd.DataFrame({"value": [value, value * 10], "kind": ["a", "b"]}).to_csv(Path(output_dir) / "results.csv", index=False)"""


@pytest.fixture
def dummy(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(DUMMY_PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(DUMMY_BODY)]
    path = tmp_path / "dummy.ipynb"
    nbformat.write(nb, str(path))
    return path


def write_sweep(tmp_path, notebook, name="s", **spec):
    path = tmp_path / f"{name}.yaml"
    import yaml

    path.write_text(
        yaml.safe_dump(
            {"name": name, "notebook": str(notebook), "runs_dir": str(tmp_path / "runs"), **spec}, sort_keys=False
        )
    )
    return path


def test_unknown_key_refuses_the_file_before_any_run(tmp_path, dummy):
    path = write_sweep(tmp_path, dummy, grid={"value": [1, 2]}, gird={"value": [3]})
    with pytest.raises(SweepError) as info:
        run_sweep(path)
    message = str(info.value)
    assert "'gird'" in message and all(k in message for k in SWEEP_KEYS)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"nope": [1]}}, "no parameter"),
        ({"grid": {"value": 3}}, "non-empty list"),
        ({"parameters": {"value": 1}, "grid": {"value": [2]}}, "both"),
        ({"jobs": 0}, "jobs"),
    ],
)
def test_malformed_sweeps_are_refused(tmp_path, dummy, spec, message):
    with pytest.raises(SweepError, match=message):
        run_sweep(write_sweep(tmp_path, dummy, **spec))
    assert not (tmp_path / "runs").exists()


def test_grid_product_and_run_ids(tmp_path, dummy):
    sweep = load_sweep(
        write_sweep(tmp_path, dummy, parameters={"fail": False}, grid={"value": [1, 2], "output_dir": ["x"]})
    )
    assert [r["run_id"] for r in sweep["runs"]] == ["000-value=1-output_dir=x", "001-value=2-output_dir=x"]
    assert sweep["runs"][1]["parameters"] == {"fail": False, "value": 2, "output_dir": "x"}


@pytest.mark.slow
def test_failed_run_is_reported_and_the_others_finish(tmp_path, dummy, capsys):
    path = write_sweep(tmp_path, dummy, grid={"value": [1, 2, 3], "fail": [False, True]}, jobs=2)
    summary = run_sweep(path)
    assert list(summary.status) == ["ok", "failed"] * 3
    failed = summary[summary.status == "failed"].iloc[0]
    assert "asked to fail with value=1" in failed.error and json.loads(failed.parameters) == {"value": 1, "fail": True}
    assert Path(failed.notebook).is_file()  # the executed notebook, with the traceback
    err = capsys.readouterr().err
    assert "FAILED" in err and failed.run_id in err and failed.notebook in err
    root = tmp_path / "runs" / "s"
    results = pd.read_csv(root / "results.csv")
    assert sorted(results.value) == [1, 2, 3, 10, 20, 30]
    assert set(results.columns) >= {"run_id", "value", "fail", "kind"}
    assert (root / "runs.csv").is_file() and summary.rows.tolist() == [2, 0] * 3
    for run_id in summary.run_id[summary.status == "ok"]:
        assert (root / run_id / "dummy.ipynb").is_file() and (root / run_id / "results.csv").is_file()

    # A second sweep under the same name appends; a run id run again replaces its rows.
    run_sweep(write_sweep(tmp_path, dummy, grid={"value": [7]}), jobs=1)
    run_sweep(write_sweep(tmp_path, dummy, grid={"value": [7]}), jobs=1)
    results = pd.read_csv(root / "results.csv")
    assert sorted(results.value) == [1, 2, 3, 7, 10, 20, 30, 70]


def test_run_notebook_writes_into_out_dir(tmp_path, dummy):
    out = run_notebook(dummy, {"value": 5}, tmp_path / "one")
    assert out == tmp_path / "one" / "dummy.ipynb" and out.is_file()
    assert pd.read_csv(tmp_path / "one" / "results.csv").value.tolist() == [5, 50]  # output_dir defaulted to out_dir


def test_example_sweep_files_are_valid():
    files = sorted((ROOT / "sweeps").glob("*.yaml"))
    assert files
    for path in files:
        sweep = load_sweep(path)
        assert sweep["runs"], path


def test_run_demo_refuses_without_demo_model(monkeypatch, tmp_path):
    import reapkit.model.demo
    from reapkit.run import demo

    monkeypatch.setattr(reapkit.model.demo, "DEMO_PATH", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="demo model"):
        demo.run_demo(tmp_path / "f", tmp_path / "r")


@pytest.mark.slow
def test_run_demo_on_the_bundled_model(tmp_path):
    from reapkit.model.demo import DEMO_PATH
    from reapkit.run.demo import DEMO_NOTEBOOKS, run_demo

    if not (DEMO_PATH / "config.json").is_file():
        pytest.skip("the bundled demo model is not built (python -m reapkit.model.demo train)")
    quick = {
        "calibration": "code:4,tools:4,prose:4,math:4",
        "evaluation": "code:2,tools:2,prose:2,math:2",
        "criteria": ["reap", "frequency"],
        "ratios": [0.5],
        "random_seeds": [0],
        "merges": ["m_smoe"],
        "max_length": 64,
        "max_new_tokens": 4,
    }
    run_demo(tmp_path / "figures", tmp_path / "runs", parameters=quick, progress=False)
    for name in DEMO_NOTEBOOKS:
        assert (tmp_path / "runs" / name / f"{name}.ipynb").is_file()
        pngs = list((tmp_path / "figures" / name).glob("*.png"))
        assert pngs and all(p.stat().st_size > 0 and p.with_suffix(".pdf").is_file() for p in pngs)
    assert (tmp_path / "runs" / "03_pruning" / "pruned_checkpoint" / "pruning_plan.json").is_file()
    assert len(pd.read_csv(tmp_path / "runs" / "04_paper_figures" / "results.csv"))


def test_resume_skips_runs_finished_with_the_same_parameters(tmp_path, dummy):
    first = run_sweep(write_sweep(tmp_path, dummy, grid={"value": [1, 2]}), jobs=1, progress=False)
    assert list(first.status) == ["ok", "ok"] and not first.skipped.any()
    notebook = tmp_path / "runs" / "s" / "000-value=1" / "dummy.ipynb"
    stamp = notebook.stat().st_mtime_ns
    again = run_sweep(write_sweep(tmp_path, dummy, grid={"value": [1, 2]}), jobs=1, resume=True, progress=False)
    assert again.skipped.all() and list(again.status) == ["ok", "ok"] and notebook.stat().st_mtime_ns == stamp
    changed = run_sweep(
        write_sweep(tmp_path, dummy, parameters={"fail": False}, grid={"value": [1, 2]}),
        jobs=1,
        resume=True,
        progress=False,
    )
    assert not changed.skipped.any()  # other parameters: run again
    assert sorted(pd.read_csv(tmp_path / "runs" / "s" / "results.csv").value) == [1, 2, 10, 20]
