"""`reapkit demo`: the notebooks, run on the bundled demo model, write their figures.

Notebooks 1-5 on the demo model, each a few minutes on a laptop's CPU::

    run_demo()                                            # -> figures/
    run_demo(parameters={"calibration": "code:8,prose:8"})   # a quicker run
    run_demo(gallery_dir="docs/gallery")                 # and the executed notebooks as pages of the docs site
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from reapkit.model.demo import DEMO
from reapkit.run.execute import run_notebook
from reapkit.run.notebook import DEMO_NOTEBOOKS, NOTEBOOKS_DIR, cores

__all__ = ["DEMO_NOTEBOOKS", "run_demo"]

#: Notebooks `reapkit demo` runs, in order (04 draws from 05's results table).


def run_demo(
    figures_dir="figures",
    runs_dir="runs/demo",
    *,
    model: str = DEMO,
    parameters: dict | None = None,
    progress: bool = True,
    gallery_dir=None,
) -> dict[str, float]:
    """Run the notebooks of :data:`DEMO_NOTEBOOKS` on the bundled demo model; returns {notebook: seconds}.

    Executed notebooks and tables go to `runs_dir/<notebook>/`, figures to `figures_dir/<notebook>/`
    (PNG and PDF); observations are cached in `runs_dir/cache` and shared by the notebooks. What
    each notebook gets is its declared `demo` value (`reapkit.run.parameters.PARAMETERS`), then
    `parameters` where the notebook declares them (e.g. {"calibration": "code:8,prose:8"} for a
    quicker run); `model` runs the same on another checkpoint of the same kind. With `gallery_dir`
    (`reapkit demo`: `docs/gallery` of the checkout), the executed notebooks become the gallery's pages
    (`reapkit.run.gallery`).
    """
    from reapkit.atomic import check_separate
    from reapkit.model.demo import DEMO_PATH, resolve_name
    from reapkit.run.parameters import PARAMETERS, demo_parameters

    for folder in (figures_dir, runs_dir):
        check_separate(folder, DEMO_PATH, NOTEBOOKS_DIR, Path(__file__).parents[1], model, what="demo output folder")
    resolve_name(model)  # a demo model never built is refused here, with the command that builds it
    runs_dir, figures_dir = Path(runs_dir).resolve(), Path(figures_dir).resolve()
    threads = max(1, cores() - 1)
    start = time.perf_counter()
    seconds = {}
    for name in DEMO_NOTEBOOKS:
        declared = {p.name for p in PARAMETERS[name]}
        params = {**demo_parameters(name, runs=runs_dir, figures=figures_dir), "model": model, **(parameters or {})}
        params = {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items() if k in declared}
        t0 = time.perf_counter()
        if progress:
            print(f"[demo] {name} ...", file=sys.stderr, flush=True)
        run_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", params, runs_dir / name, threads=threads)
        seconds[name] = round(time.perf_counter() - t0, 1)
        if progress:
            print(f"[demo] {name} done in {seconds[name]:.0f} s -> {figures_dir / name}", file=sys.stderr, flush=True)
    if progress:
        print(
            f"[demo] all notebooks done in {time.perf_counter() - start:.0f} s; figures in {figures_dir}/",
            file=sys.stderr,
        )
    if gallery_dir is not None:
        from reapkit.run.gallery import write_gallery

        pages = write_gallery(runs_dir, gallery_dir, notebooks=DEMO_NOTEBOOKS)
        if progress:
            print(f"[demo] gallery: {len(pages)} pages in {gallery_dir}/ (make docs builds the site)", file=sys.stderr)
    return seconds
