"""Execute one notebook with papermill, parameters injected, into a folder of its own.

A notebook run takes a kernel and minutes, so the example is not run here::

    run_notebook("notebooks/03_pruning.ipynb", {"ratios": [0.5]}, "runs/one")   # -> runs/one/03_pruning.ipynb
"""

from __future__ import annotations

import os
from pathlib import Path

from reapkit.errors import MissingInput
from reapkit.run.lab import BATCH, SESSION
from reapkit.run.notebook import cores

__all__ = ["run_notebook", "cores"]


def _abs(value):
    return str(Path(value).resolve())


def run_notebook(
    notebook,
    parameters: dict | None,
    out_dir,
    *,
    kernel: str = "python3",
    timeout: int | None = None,
    threads: int | None = None,
    log_output: bool = False,
) -> Path:
    """Execute `notebook` with papermill, `parameters` injected, into `out_dir/<notebook name>`.

    `output_dir` and `figures_dir` default to `out_dir` and `out_dir/figures` when the notebook has
    those parameters and `parameters` does not set them. Relative paths in those two are resolved
    against the current directory; the kernel runs in it. `threads` limits the kernel's torch /
    BLAS threads (OMP_NUM_THREADS; default: the environment's, else one less than the cores). The kernel
    runs as a batch run (`reapkit.run.lab.live_session` is False: no explorer is built). Raises papermill's
    `PapermillExecutionError` when a cell fails; the executed notebook (with the traceback in the failing
    cell) is written either way.
    """
    import papermill as pm

    notebook = Path(notebook)
    if not notebook.is_file():
        raise MissingInput(f"notebook {notebook} does not exist; check the path (notebooks live in notebooks/)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {})
    declared = set(pm.inspect_notebook(str(notebook)))
    if "output_dir" in declared:
        params.setdefault("output_dir", str(out_dir))
    if "figures_dir" in declared:
        params.setdefault("figures_dir", str(out_dir / "figures"))
    for key in ("output_dir", "figures_dir", "cache_dir"):
        if isinstance(params.get(key), (str, Path)):
            params[key] = _abs(params[key])
    output = out_dir / notebook.name
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, cores() - 1)  # a spare core: oversubscribed torch threads run many times slower
    env_backup = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND", SESSION, BATCH)}
    os.environ.pop(SESSION, None)  # a batch run, even one started from a JupyterLab kernel: no explorers
    os.environ[BATCH] = "1"
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    try:
        for attempt in (1, 2):  # a kernel that dies or never starts (port races under load) gets one retry
            try:
                pm.execute_notebook(
                    str(notebook),
                    str(output),
                    parameters=params,
                    kernel_name=kernel,
                    progress_bar=False,
                    log_output=log_output,
                    execution_timeout=timeout,
                    start_timeout=300,
                    cwd=os.getcwd(),
                )
                break
            except pm.PapermillExecutionError:
                raise
            except (RuntimeError, TimeoutError):
                if attempt == 2:
                    raise
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return output
