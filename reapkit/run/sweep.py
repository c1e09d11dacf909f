"""Run a notebook over a parameter grid with papermill (`reapkit sweep`).

Each run is a notebook executed by a kernel of its own, minutes each, so this is not run here::

    sweep = load_sweep("sweeps/ratios.yaml")  # read and checked (runs: 000-ratios=0.25-seed=0, ...)
    summary = run_sweep("sweeps/ratios.yaml", jobs=2)     # one row per run: status, error, notebook
    summary = run_sweep("sweeps/ratios.yaml", resume=True)  # only the runs not finished before
    run_sweep("sweeps/ratios.yaml", overrides={"calibration": "code:4"}, limit=1)   # a quick check

A sweep file (YAML)::

    name: ratios                     # runs go to runs/<name>/<run-id>/
    notebook: notebooks/03_pruning.ipynb
    parameters: {calibration: "code:16,prose:16"}    # fixed for every run
    grid: {ratios: [[0.25], [0.5]], seed: [0, 1]}     # product of the lists
    jobs: 2                          # runs at once (processes); default: what the cores allow

Allowed keys: see :data:`SWEEP_KEYS`; any other key refuses the whole file before a run starts,
and so does a parameter the notebook does not declare or a value its declaration refuses
(`reapkit.run.parameters.PARAMETERS`).
Each run's notebook writes its tidy results (`results.csv` or `results.parquet`) into its output
folder; as each run finishes they are appended, with the run id and the grid values, to
`runs/<name>/results.csv` (under a lock: sweeps sharing the table lose no rows), and the run's
status to `runs/<name>/runs.csv`. A failed run is reported (parameters, executed notebook) and
the others go on; an interrupted run leaves no folder behind.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from reapkit.errors import MissingInput, ParameterError, SweepError
from reapkit.run.execute import run_notebook
from reapkit.run.notebook import NOTEBOOKS_DIR, cores

__all__ = [
    "SWEEP_KEYS",
    "SweepError",
    "load_sweep",
    "build_runs",
    "run_job",
    "write_result",
    "run_sweep",
]

SWEEP_KEYS = ("name", "notebook", "parameters", "grid", "jobs", "runs_dir", "description", "kernel", "timeout")
RESULT_FILES = ("results.csv", "results.parquet")


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------


def _slug(value) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = "+".join(_slug(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:40] or "x"


def load_sweep(path, *, overrides: dict | None = None, limit: int | None = None) -> dict:
    """Read and check a sweep file; returns the normalised sweep with its list of `runs`.

    `overrides` {parameter: value} replace the file's values for every run (a grid parameter so set
    takes that one value); `limit` keeps the first runs of the grid. Raises :class:`SweepError`
    (naming the key and the allowed keys, or the bad parameter) before anything runs.
    """
    path = Path(path)
    spec = _read_sweep_file(path)
    notebook = _find_notebook(spec, path)
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SweepError(f"{path}: name must be a plain folder name (letters, digits, . _ -), got {name!r}")
    fixed, grid = _check_grid(spec, path, notebook)
    jobs = spec.get("jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise SweepError(f"{path}: jobs must be a positive integer, got {jobs!r}")
    runs_dir = Path(spec.get("runs_dir", "runs")) / name
    if overrides:
        fixed = {**fixed, **overrides}
        grid = {k: v for k, v in grid.items() if k not in overrides}
    runs = build_runs(fixed, grid)[:limit]
    _check_runs(path, notebook, runs)
    return {
        "name": name,
        "notebook": notebook,
        "runs": runs,
        "jobs": jobs,
        "runs_dir": runs_dir,
        "kernel": spec.get("kernel", "python3"),
        "timeout": spec.get("timeout"),
    }


def _check_runs(path: Path, notebook: Path, runs: list[dict]) -> None:
    """Every run's parameters against the notebook's declaration (`reapkit.run.parameters.check_run`)."""
    from reapkit.run.parameters import check_run

    for run in runs:
        try:
            check_run(notebook.stem, run["parameters"])
        except ParameterError as error:
            raise SweepError(f"{path}: run {run['run_id']}: {error}. Nothing was run") from None


def _read_sweep_file(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise MissingInput(f"sweep file {path} does not exist; check the path")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path} must hold a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(
            f"{path}: unknown key(s) {', '.join(repr(k) for k in unknown)}; allowed keys are "
            f"{', '.join(SWEEP_KEYS)}. Nothing was run"
        )
    if "notebook" not in spec:
        raise SweepError(f"{path}: missing key 'notebook' (the notebook to run, e.g. notebooks/03_pruning.ipynb)")
    return spec


def _find_notebook(spec: dict, path: Path) -> Path:
    """The notebook as given, or relative to the sweep file, the project or `notebooks/`."""
    notebook = Path(spec["notebook"])
    if not notebook.is_absolute() and not notebook.is_file():
        for base in (path.parent, NOTEBOOKS_DIR.parent, NOTEBOOKS_DIR):
            if (base / notebook).is_file():
                notebook = base / notebook
                break
    if not notebook.is_file():
        raise SweepError(f"{path}: notebook {spec['notebook']!r} does not exist")
    return notebook


def _check_grid(spec: dict, path: Path, notebook: Path) -> tuple[dict, dict]:
    """The fixed parameters and the grid, checked against each other and the notebook's parameters."""
    import papermill as pm

    fixed = spec.get("parameters") or {}
    grid = spec.get("grid") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"{path}: 'parameters' must be a mapping {{parameter: value}}")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepError(f"{path}: 'grid' must map each parameter to a non-empty list of values")
    both = sorted(set(fixed) & set(grid))
    if both:
        raise SweepError(f"{path}: parameter(s) {both} appear in both 'parameters' and 'grid'; keep each in one place")
    declared = pm.inspect_notebook(str(notebook))
    if declared:
        unknown = sorted((set(fixed) | set(grid)) - set(declared))
        if unknown:
            raise SweepError(
                f"{path}: notebook {notebook.name} has no parameter(s) {unknown}; its parameters are "
                f"{', '.join(declared)}. Nothing was run"
            )
    return fixed, grid


def build_runs(fixed: dict, grid: dict) -> list[dict]:
    """Job building: one run per combination of the grid's values, with a readable run id.

    >>> [r["run_id"] for r in build_runs({"seed": 0}, {"ratio": [0.25, 0.5]})]
    ['000-ratio=0.25', '001-ratio=0.5']
    """
    runs = []
    keys = list(grid)
    for index, values in enumerate(itertools.product(*(grid[k] for k in keys))):
        varying = dict(zip(keys, values))
        run_id = "-".join([f"{index:03d}"] + [f"{k}={_slug(v)}" for k, v in varying.items()])[:120]
        parameters = {**fixed, **varying}
        runs.append(
            {
                "run_id": run_id,
                "grid": varying,
                "parameters": parameters,
                "key": json.dumps(parameters, sort_keys=True, default=str),
            }
        )
    return runs


def run_job(notebook: str, run: dict, run_dir: str, kernel: str, timeout, threads: int) -> dict:
    """One job: execute one run into `run_dir`; never raises for a failing notebook (the error goes into
    the returned record). An interrupt removes the half-made run folder and puts back a previous one."""
    from reapkit.atomic import replacing_directory

    start = time.perf_counter()
    record = {
        "run_id": run["run_id"],
        "status": "ok",
        "error": "",
        "notebook": str(Path(run_dir) / Path(notebook).name),
        "parameters": run["key"],
    }
    with replacing_directory(run_dir):
        try:
            run_notebook(notebook, run["parameters"], run_dir, kernel=kernel, timeout=timeout, threads=threads)
        except Exception as error:  # noqa: BLE001 - reported, the sweep goes on
            record["status"] = "failed"
            text = str(error).strip() or type(error).__name__
            record["error"] = f"{type(error).__name__}: {text}"[-2000:]
            if not Path(record["notebook"]).is_file():
                record["error"] += "\n" + traceback.format_exc(limit=3)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def _read_run_results(run_dir: Path) -> pd.DataFrame | None:
    for name in RESULT_FILES:
        path = run_dir / name
        if path.is_file():
            return pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
    return None


RUN_COLUMNS = ["run_id", "status", "error", "notebook", "parameters", "seconds", "rows"]


def _grid_value(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def write_result(root: Path, run: dict, record: dict) -> None:
    """Result writing: add one finished run to `root/runs.csv` and its results rows to `root/results.csv`.

    Rows of the same run id are replaced; tables stay sorted by run id. A lock on `root` lets sweeps
    that share the tables (same name and runs folder) write at the same time without losing rows.
    """
    from reapkit.atomic import locked

    frame = _read_run_results(root / run["run_id"]) if record["status"] == "ok" else None
    record["rows"] = 0
    if frame is not None:
        frame = frame.copy()
        for key, value in reversed(list(run["grid"].items())):
            if key not in frame.columns:
                frame.insert(0, key, _grid_value(value))
        frame.insert(0, "run_id", run["run_id"])
        record["rows"] = len(frame)
    row = pd.DataFrame(
        [{**{c: record.get(c, "") for c in RUN_COLUMNS}, **{k: _grid_value(v) for k, v in run["grid"].items()}}]
    )
    with locked(root):
        if frame is not None:
            _replace_rows(root / "results.csv", frame, run["run_id"])
        _replace_rows(root / "runs.csv", row, run["run_id"])


def _replace_rows(path: Path, rows: pd.DataFrame, run_id: str) -> None:
    if path.is_file() and path.stat().st_size:
        old = pd.read_csv(path, dtype={"run_id": str, "parameters": str, "error": str, "notebook": str})
        old = old[old["run_id"] != run_id] if "run_id" in old.columns else old
        rows = pd.concat([old, rows], ignore_index=True)
    _write_csv(rows.sort_values("run_id", kind="stable", ignore_index=True), path)


def finished_runs(root: Path) -> dict[str, str]:
    """{run id: parameters JSON} of the runs in `root/runs.csv` that finished ("ok")."""
    path = root / "runs.csv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype={"run_id": str, "parameters": str, "status": str})
    return {r.run_id: r.parameters for r in table.itertuples() if r.status == "ok"}


def run_sweep(
    params_yaml,
    *,
    jobs: int | None = None,
    progress: bool = True,
    resume: bool = False,
    overrides: dict | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Run every parameter combination of a sweep file; returns one row per run.

    Columns: run_id, status ("ok" / "failed"), error, notebook (the executed notebook), parameters
    (JSON), seconds, rows (results rows appended), skipped (finished before, with `resume`), then
    one column per grid parameter. As each run finishes, its row goes to `runs/<name>/runs.csv` and
    its results to `runs/<name>/results.csv` (rows of a run id run again are replaced). `resume`
    skips the runs that finished before with the same parameters. `overrides` and `limit`: see
    :func:`load_sweep`. `jobs` overrides the file's
    `jobs`; by default as many runs go at once as there are cores (at most the number of runs).
    """
    from reapkit.atomic import check_separate

    sweep = load_sweep(params_yaml, overrides=overrides, limit=limit)
    runs, root = sweep["runs"], sweep["runs_dir"]
    check_separate(root, params_yaml, sweep["notebook"], what="sweep runs folder")
    done = finished_runs(root) if resume else {}
    todo = [run for run in runs if done.get(run["run_id"]) != run["key"]]
    if progress and len(todo) < len(runs):
        print(
            f"[sweep {sweep['name']}] resuming: {len(runs) - len(todo)} of {len(runs)} runs finished before",
            file=sys.stderr,
        )
    root.mkdir(parents=True, exist_ok=True)
    for record, run in _execute(sweep, todo, jobs):
        write_result(root, run, record)
        _report(sweep["name"], record, progress)
    table = pd.read_csv(root / "runs.csv", dtype={"run_id": str, "parameters": str, "error": str, "notebook": str})
    table = table.set_index("run_id").loc[[r["run_id"] for r in runs]].reset_index()
    table["error"] = table["error"].fillna("")
    skipped = {r["run_id"] for r in runs} - {r["run_id"] for r in todo}
    summary = table[RUN_COLUMNS].assign(skipped=table["run_id"].isin(skipped))
    for key in runs[0]["grid"] if runs else {}:
        summary[key] = [_grid_value(r["grid"][key]) for r in runs]
    failed = summary[summary["status"] != "ok"]
    if len(failed):
        print(
            f"[sweep {sweep['name']}] {len(failed)} of {len(summary)} run(s) failed: {', '.join(failed['run_id'])}",
            file=sys.stderr,
        )
    return summary


def _execute(sweep: dict, runs: list[dict], jobs: int | None):
    """Yield (record, run) as each run finishes: in this process for one job, else in a process pool.

    An interrupt stops the pool's workers with SIGTERM so each removes its half-made run folder.
    """
    if not runs:
        return
    available = cores()
    jobs = max(1, min(jobs or sweep["jobs"] or min(len(runs), available), len(runs)))
    threads = max(1, (available - 1) // jobs)
    notebook, root = str(sweep["notebook"].resolve()), sweep["runs_dir"]
    args = lambda run: (notebook, run, str(root / run["run_id"]), sweep["kernel"], sweep["timeout"], threads)  # noqa: E731
    if jobs == 1:
        for run in runs:
            yield run_job(*args(run)), run
        return
    import multiprocessing
    import signal

    from reapkit.atomic import terminate_as_interrupt

    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=terminate_as_interrupt
    )
    try:
        futures = {pool.submit(run_job, *args(run)): run for run in runs}
        for future in as_completed(futures):
            yield future.result(), futures[future]
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _report(name: str, record: dict, progress: bool) -> None:
    if record["status"] != "ok":
        first = record["error"].splitlines()[0] if record["error"] else ""
        print(
            f"[sweep {name}] run {record['run_id']} FAILED with parameters {record['parameters']}; "
            f"see {record['notebook']}\n  {first}",
            file=sys.stderr,
        )
    elif progress:
        print(f"[sweep {name}] run {record['run_id']} done in {record['seconds']} s", file=sys.stderr)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    from reapkit.atomic import atomic_write_text

    atomic_write_text(path, frame.to_csv(index=False))
