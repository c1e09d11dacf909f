"""What the notebooks in `notebooks/` share: model loading, calibration, figures, tables, and their sources.

    >>> from reapkit.run.parameters import check_parameters
    >>> P = check_parameters({"model": "demo", "calibration": "code:8,prose:8"}, "01_saliency")
    >>> run = calibrate(P)                             # run.model, run.tokenizer, run.obs, run.layers
    domains ['code', 'prose'], MoE layers [0, 1, 2, 3], experts [16, 16, 16, 16], top-k 2
    >>> from reapkit import plot
    >>> figures = Figures(P.figures_dir)
    >>> _ = figures.save(plot.saliency_heatmap(scores), "saliency_heatmap")   # PNG + PDF
    >>> [path.name for path in figures.saved]
    ['saliency_heatmap.png', 'saliency_heatmap.pdf']
    >>> write_table(results, P.output_dir, "results")   # results.csv, whole or not at all
    PosixPath('.../runs/01_saliency/results.csv')

`sync_notebooks()` (``python -m reapkit.run.notebook sync``) writes each ``notebooks/*.py`` source
back with its generated parameters cell, and its paired ``.ipynb``.

A cell calls one or two of these and shows the result; the logic lives here, where it is tested.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from reapkit.errors import InvalidInput, Mismatch, ParameterError
from reapkit.model.demo import resolve_name
from reapkit.run.parameters import PARAMETERS, parameters_cell

__all__ = [
    "DEMO_NOTEBOOKS",
    "NOTEBOOKS_DIR",
    "calibrate",
    "notebook_statistics",
    "add_weight_statistics",
    "held_out",
    "plans_beside",
    "moe_layers",
    "load_model",
    "pruned_copy",
    "Figures",
    "write_table",
    "read_results",
    "DEFAULT_PROMPTS",
    "sync_notebooks",
]

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
#: The notebooks `reapkit demo` runs, in order (04 reads 05's tables).
DEMO_NOTEBOOKS = ("01_saliency", "02_clusters", "03_pruning", "05_study", "04_paper_figures")


def load_model(name, *, device_map=None, **kwargs):
    """`reapkit.model.loading.load_model`, passing `device_map` only when it is set."""
    from reapkit.model.loading import load_model as load

    if device_map is not None:
        kwargs["device_map"] = device_map
    return load(name, **kwargs)


def calibrate(P, *, progress: bool = True, model_needed: bool = False) -> SimpleNamespace:
    """Load `P.model` and observe it on `P.calibration` (cached in `P.cache_dir`): the first step of notebooks 1-5.

    >>> from reapkit.run.parameters import check_parameters
    >>> P = check_parameters({"model": "demo", "calibration": "code:8"}, "01_saliency")   # the notebook's parameters
    >>> run = calibrate(P)        # run.model, run.tokenizer, run.obs, run.layers (MoE layers to draw), run.batches
    domains ['code'], MoE layers [0, 1, 2, 3], experts [16, 16, 16, 16], top-k 2

    With `P.observations` (saved elsewhere, e.g. by `reapkit import`) nothing is observed; the model is
    loaded only when `model_needed` (then checked against the observations), else run.model is None.
    """
    from reapkit.data import calibration_batches
    from reapkit.observe.recorder import observe_cached

    if getattr(P, "observations", None) is not None:
        from reapkit.observe.observations import Observations

        obs = Observations.load(P.observations)
        source = (obs.meta.get("source") or {}).get("tool", "reapkit")
        model = tokenizer = None
        if model_needed:
            model, tokenizer = load_model(P.model, device_map=getattr(P, "device_map", None))
            obs.check_model(model)
        used = "the calibration parameters are not used" if model_needed else "the model parameters are not used"
        print(f"observations {P.observations} (from {source}; {used})")
        print(f"domains {obs.domains}, MoE layers {obs.layers}, experts {obs.num_experts}, top-k {obs.top_k}")
        return SimpleNamespace(
            model=model, tokenizer=tokenizer, obs=obs, layers=moe_layers(obs, getattr(P, "layers", None)), batches=None
        )
    model, tokenizer = load_model(P.model, device_map=getattr(P, "device_map", None))
    batches = calibration_batches(
        P.calibration, tokenizer, batch_size=P.batch_size, max_length=P.max_length, seed=P.seed
    )
    obs = observe_cached(
        model,
        batches,
        P.cache_dir or f"{P.output_dir}/cache",
        statistics=notebook_statistics(P),
        progress=progress,
        calibration={"spec": P.calibration, "max_length": P.max_length, "seed": P.seed},
    )
    from reapkit.observe.statistics import FROM_WEIGHTS
    from reapkit.select.criteria import statistics_of

    criteria = getattr(P, "criteria", None) or []
    if any(n in FROM_WEIGHTS for c in criteria for n in statistics_of(c)):  # aimer: read the expert weights once
        obs = add_weight_statistics(P, obs)
    layers = moe_layers(obs, getattr(P, "layers", None))
    print(f"domains {obs.domains}, MoE layers {obs.layers}, experts {obs.num_experts}, top-k {obs.top_k}")
    return SimpleNamespace(model=model, tokenizer=tokenizer, obs=obs, layers=layers, batches=batches)


def notebook_statistics(P) -> list[str]:
    """What a notebook observes: every optional statistic (co-selection, output-space distances, any
    criterion), but those that run every expert on every token only for the merge methods it asks for
    (`merges`, `merge_method`), as they cost about E/k times the experts' part of a forward.

    >>> from reapkit.run.parameters import check_parameters
    >>> "all_output_sum" in notebook_statistics(check_parameters({}, "01_saliency"))
    False
    >>> "all_output_sum" in notebook_statistics(check_parameters({}, "05_study"))   # HC-SMoE and Sub-MoE need it
    True
    """
    from reapkit.observe.statistics import ALL_TOKENS, OPTIONAL
    from reapkit.select.merge_methods import merge_method

    merges = [*(getattr(P, "merges", None) or []), *filter(None, [getattr(P, "merge_method", None)])]
    needed = {n for m in merges for n in merge_method(m).statistics}
    return [n for n in OPTIONAL if n not in ALL_TOKENS or n in needed]


def add_weight_statistics(P, obs):
    """`obs` with the expert-weight statistics (`aimer`) of `P.model` when it is a local float checkpoint;
    otherwise `obs` unchanged, with the reason `aimer` cannot be scored in ``obs.meta["missing"]``."""
    from reapkit.observe.statistics import FROM_WEIGHTS
    from reapkit.observe.weights import with_weight_statistics

    source = Path(resolve_name(P.model))
    reason = f"{P.model} is not a local checkpoint folder; aimer reads a model's expert weights from one"
    if (source / "config.json").is_file():
        try:
            return with_weight_statistics(obs, source)
        except InvalidInput as error:  # e.g. quantised weights
            reason = str(error)
    obs.meta["missing"] = {**obs.meta.get("missing", {}), **{n: reason for n in FROM_WEIGHTS}}
    return obs


def pruned_copy(P, plan):
    """`P.model` loaded again with the plan's experts removed; the model a notebook loaded stays unpruned,
    so its cells give the same result when they run again.

    >>> from reapkit.compress.prune import save_pruned
    >>> from reapkit.run.parameters import check_parameters
    >>> P = check_parameters({"model": "demo"}, "03_pruning")
    >>> save_pruned(pruned_copy(P, plan), plan, "runs/pruned", tokenizer=tokenizer)
    PosixPath('runs/pruned')
    """
    from reapkit.compress.prune import remove_experts

    model, _ = load_model(P.model, device_map=getattr(P, "device_map", None))
    return remove_experts(model, plan)


def plans_beside(obs, paths, criteria, *, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Plans saved elsewhere (e.g. by `reapkit import llm-compressor`) beside reapkit's plan of each criterion
    keeping as many experts per layer: ``({(label, ratio): plan}, overlap)``; label = the file's name,
    overlap = `analysis.plan_overlap` of each saved plan with each of reapkit's (columns plan, criterion, ...).

    >>> plans, overlap = plans_beside(obs, ["plan.json"], ["reap", "frequency"])   # plan.json: REAP at 0.5
    >>> overlap.groupby("criterion", sort=False)["overlap"].mean().round(2)      # mean Jaccard over layers
    criterion
    reap         1.00
    frequency    0.46
    Name: overlap, dtype: float64
    """
    from reapkit.select.plan import PruningPlan
    from reapkit.study.tables import plan_overlap

    plans, frames = {}, []
    for path in paths:
        theirs = PruningPlan.load(path)
        shapes = dict(zip(obs.layers, obs.num_experts))
        if any(shapes.get(layer) != n for layer, n in theirs.num_experts.items()):
            raise Mismatch(
                f"plan {path} prunes layers {theirs.num_experts} (layer: experts), but the observations hold "
                f"{shapes}; compare plans made for the model the observations come from"
            )
        total = sum(theirs.num_experts.values())
        ratio = theirs.ratio if theirs.ratio is not None else round(1 - theirs.total_kept / total, 4)
        label = Path(path).stem
        plans[(label, ratio)] = theirs
        for criterion in criteria:
            counts = {layer: len(kept) for layer, kept in theirs.kept.items()}
            ours = PruningPlan.from_observations(obs, criterion, counts=counts, seed=seed)
            plans[(criterion, ratio)] = ours
            overlap = plan_overlap(theirs, ours)
            frames.append(
                pd.concat(
                    [
                        pd.DataFrame({"plan": label, "criterion": criterion, "ratio": ratio}, index=overlap.index),
                        overlap,
                    ],
                    axis=1,
                )
            )
    return plans, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def held_out(P, tokenizer):
    """The evaluation batches of `P.evaluation` (validation split), as every notebook that measures cost builds them."""
    from reapkit.data import calibration_batches

    return calibration_batches(
        P.evaluation, tokenizer, batch_size=P.batch_size, max_length=P.max_length, split="validation", seed=P.seed
    )


def moe_layers(obs, layers=None) -> list[int]:
    """The MoE layers (decoder indices) to show: all of `obs.layers`, or `layers` after checking them."""
    if layers is None:
        return list(obs.layers)
    unknown = [layer for layer in layers if layer not in obs.layers]
    if unknown:
        raise ParameterError(
            f"parameter 'layers' = {list(layers)!r}: layer(s) {unknown} are not MoE layers of this model; "
            f"its MoE layers are {obs.layers}"
        )
    return list(layers)


# --------------------------------------------------------------------------------------------
# Figures and tables
# --------------------------------------------------------------------------------------------


class Figures:
    """Saves figures of one run into `folder` as PNG and PDF (see `reapkit.plot.save_figure`).

    `close=True` closes each figure after saving (scripts); in a notebook leave it False so the
    inline backend shows the figure below the cell.
    """

    def __init__(self, folder, *, close: bool = False):
        self.folder = Path(folder)
        self.close = close
        self.saved: list[Path] = []

    def save(self, fig, name: str):
        from reapkit.plot import save_figure

        self.saved += save_figure(fig, self.folder, name, close=self.close)
        return fig


def write_table(frame: pd.DataFrame, folder, name: str = "results") -> Path:
    """Write `frame` as `folder/name.csv` (temporary sibling, then rename)."""
    from reapkit.atomic import atomic_write_text

    return atomic_write_text(Path(folder) / f"{name}.csv", frame.to_csv(index=False))


def read_results(patterns, *, name: str = "results.csv") -> pd.DataFrame:
    """Concatenate the results tables matching `patterns` (paths, folders or glob patterns); adds a
    `source` column (the file's folder). Missing patterns are skipped; no match gives an empty frame."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    files = []
    for pattern in patterns:
        pattern = str(pattern)
        if Path(pattern).is_dir():
            pattern = str(Path(pattern) / name)
        files += sorted(glob.glob(pattern, recursive=True))
    frames = []
    for f in dict.fromkeys(files):
        frame = pd.read_parquet(f) if f.endswith(".parquet") else pd.read_csv(f)
        if "source" not in frame.columns:
            frame.insert(0, "source", str(Path(f).parent))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["source", "ratio", "criterion", "domain", "loss"])
    return pd.concat(frames, ignore_index=True)


#: Prompts for greedy samples before and after pruning, one per built-in domain.
DEFAULT_PROMPTS = {
    "code": "def fibonacci(n):\n    ",
    "prose": "The history of the city",
    "tools": "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n",
    "math": "Question: Ava has 12 apples and gives 5 to Ben. How many apples does Ava have now?\nAnswer:",
}


# --------------------------------------------------------------------------------------------
# Notebook sources: notebooks/NN_name.py (jupytext percent format) paired with NN_name.ipynb
# --------------------------------------------------------------------------------------------


def _paired(path: Path):
    """The notebook of a percent-format source, its parameters cell regenerated from :data:`PARAMETERS`,
    outputs cleared and cell ids numbered (so the .ipynb is the same on every machine)."""
    import jupytext

    nb = jupytext.read(str(path), fmt="py:percent")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if path.stem in PARAMETERS and len(tagged) == 1:
        tagged[0].source = parameters_cell(path.stem)
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index:02d}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    # the kernel `make lab` registers (reapkit.run.lab.KERNEL); batch runs name theirs (run_notebook: python3)
    nb.metadata["kernelspec"] = {"display_name": "reapkit", "language": "python", "name": "reapkit"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def sync_notebooks(folder=NOTEBOOKS_DIR, *, check: bool = False) -> list[Path]:
    """Write each `folder/*.py` notebook source back with its generated parameters cell, and its paired
    `.ipynb` from it; returns the files that changed (`check=True`: changes nothing, returns the files
    that are out of date)."""
    import jupytext
    import nbformat

    changed = []
    for source in sorted(Path(folder).glob("[0-9]*.py")):
        nb = _paired(source)
        outputs = {
            source: jupytext.writes(nb, fmt="py:percent"),
            source.with_suffix(".ipynb"): nbformat.writes(nb) + "\n",
        }
        for path, text in outputs.items():
            if not path.is_file() or path.read_text() != text:
                changed.append(path)
                if not check:
                    from reapkit.atomic import atomic_write_text

                    atomic_write_text(path, text)
    return changed


if __name__ == "__main__":  # python -m reapkit.run.notebook sync [--check]
    import sys

    args = sys.argv[1:]
    if not args or args[0] != "sync":
        sys.exit("usage: python -m reapkit.run.notebook sync [--check]   (notebooks/*.py -> paired .ipynb)")
    stale = sync_notebooks(check="--check" in args)
    for path in stale:
        print(("out of date: " if "--check" in args else "wrote ") + str(path))
    sys.exit(1 if stale and "--check" in args else 0)


def cores() -> int:
    """The CPU cores this process may run on (its affinity; the count of all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
