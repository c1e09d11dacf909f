"""What the notebooks in `notebooks/` share: their parameters (declared once), model loading, figures, tables.

    >>> P = check_parameters(globals(), "01_saliency")   # the cell after `parameters`
    >>> model, tokenizer = load_model(P.model, device_map=P.device_map)
    >>> figures = Figures(P.figures_dir)
    >>> figures.save(plot.saliency_heatmaps(scores), "saliency_heatmaps")   # PNG + PDF
    >>> write_table(results, P.output_dir, "results")   # results.csv, whole or not at all

Each notebook parameter is declared once, in :data:`PARAMETERS` (name, default, check, one line of
help). The notebook's cell tagged `parameters` is generated from it (`python -m reapkit.run.notebook
sync`; a test checks they agree), `check_parameters` checks the values a run gets, and sweep files
are checked against it before any run starts. A wrong value stops the notebook at the checking
cell with a `ParameterError` naming the parameter, what it should be and what it was. Numbers are
never converted from strings: ``ratio="0.25"`` (papermill ``-r``, or a quoted YAML value) is an
error that says to pass the number (papermill ``-p ratio 0.25``).

Relative output paths (`output_dir`, `figures_dir`, `cache_dir`, `results`) are resolved against
the project root (the nearest folder above the working directory holding `pyproject.toml` and
`notebooks/`), so a kernel started in `notebooks/` (JupyterLab's default) writes where the README
says.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from reapkit.errors import ParameterError
from reapkit.select.criteria import DEFAULT_CRITERIA, STUDY_CRITERIA, check_ratio

__all__ = [
    "ParameterError",
    "Parameter",
    "PARAMETERS",
    "NOTEBOOKS_DIR",
    "check_parameters",
    "parameters_cell",
    "notebook_defaults",
    "project_root",
    "resolve_path",
    "calibrate",
    "held_out",
    "plans_beside",
    "moe_layers",
    "load_model",
    "Figures",
    "write_table",
    "read_results",
    "DEFAULT_PROMPTS",
    "sync_notebooks",
]

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"


# --------------------------------------------------------------------------------------------
# Checks: each returns the normalised value or raises ValueError(what was expected)
# --------------------------------------------------------------------------------------------


def _number_in_string(value) -> str:
    """A hint for numbers passed as text (papermill -r, quoted YAML)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f"; got the string {value!r}: pass the number without quotes (papermill -p, not -r)"
    return ""


def _text(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def _path(value):
    return _text(str(value) if isinstance(value, Path) else value)


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError("expected True or False")
    return value


def _integer(low=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(
                "expected an integer" + (f" >= {low}" if low is not None else "") + _number_in_string(value)
            )
        if low is not None and value < low:
            raise ValueError(f"expected an integer >= {low}")
        return int(value)

    return check


def _fraction_removed(value):
    try:
        return check_ratio(value)
    except ValueError:
        raise ValueError(
            "expected a fraction of experts removed, a number in [0, 1)" + _number_in_string(value)
        ) from None


def _list_of(item, *, allow_empty=False):
    def check(value):
        if not isinstance(value, (list, tuple)):
            value = [value]
        if not value and not allow_empty:
            raise ValueError("expected a non-empty list")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except ValueError as error:
                raise ValueError(f"item {i} ({v!r}): {error}") from None
        return out

    return check


def _or_none(check):
    return lambda value: None if value is None else check(value)


def _criterion(value):
    from reapkit.select.criteria import CRITERIA_NAMES

    if value not in CRITERIA_NAMES:
        raise ValueError(f"unknown criterion; choose from {', '.join(CRITERIA_NAMES)}")
    return value


def _space(value):
    from reapkit.select.geometry import SPACES

    if value not in SPACES:
        raise ValueError(f"unknown space; choose from {', '.join(SPACES)}")
    return value


def _merge_method(value):
    from reapkit.select.merge import METHODS

    if value not in METHODS:
        raise ValueError(f"unknown merge method; choose from {', '.join(METHODS)}")
    return value


def _spec(value):
    from reapkit.data import parse_spec

    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, (str, dict)):
        raise ValueError("expected a calibration spec string such as 'code:32,tools:32,prose:32,math:32'")
    try:
        parse_spec(value)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise ValueError(str(error)) from None
    return value


def _prompts(value):
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("expected None or a dict {name: prompt text}")
    return value


def _paths(value):
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, (str, Path)) for v in items):
        raise ValueError("expected a path or glob pattern (or a list of them)")
    return [str(v) for v in items]


def _device_map(value):
    if value is None or isinstance(value, dict) or (isinstance(value, str) and value.strip()):
        return value
    raise ValueError('expected None, a device map name such as "auto", or a dict {module: device}')


def _plugins(value):
    """Import each plugin (a module name or a .py file) now, so that the criteria it registers pass the checks below."""
    from reapkit.run.plugins import load_plugins

    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, Path)) for v in items):
        raise ValueError("expected a list of module names or .py files")
    items = [resolve_path(v) if str(v).endswith(".py") else str(v) for v in items]
    load_plugins(items)
    return items


def _tasks_folder(value):
    """None (lm-eval's own tasks), "demo" (`reapkit.measure.harness.write_demo_tasks`) or a folder, resolved like other paths."""
    return value if value in (None, "demo") else str(resolve_path(_path(value)))


def _global_budget(value):
    return value if isinstance(value, bool) else _criterion(value)


# --------------------------------------------------------------------------------------------
# The declarations
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One notebook parameter: ``Parameter("seed", 0, _integer(0), "random seed")``.

    `check` returns the normalised value or raises ValueError saying what it expected (a type such
    as ``int`` works too). `path=True` resolves a relative value against the project root. `demo`
    is the value `reapkit demo` gives it, a template with ``{runs}``, ``{figures}`` and
    ``{notebook}`` (None: the default).
    """

    name: str
    default: Any
    check: Callable | type
    help: str
    path: bool = False
    demo: str | None = None


def _model_parameters(*, layers=True, interactive=True, calibration_help="calibration spec (built-in domains, files)"):
    out = [
        Parameter("plugins", [], _plugins, "modules or .py files imported first (e.g. criteria they register)"),
        Parameter("model", "demo", _text, '"demo" (the bundled model), a local checkpoint or a hub name'),
        Parameter(
            "device_map", None, _device_map, 'None: load on the CPU; "auto" or a dict spreads the model (accelerate)'
        ),
        Parameter("calibration", "code:16,tools:16,prose:16,math:16", _spec, calibration_help),
        Parameter("max_length", 128, _integer(8), "tokens per calibration sample"),
        Parameter("batch_size", 8, _integer(1), "sequences per forward"),
    ]
    if layers:
        out.append(
            Parameter(
                "layers", None, _or_none(_list_of(_integer(0))), "MoE layers (decoder indices) to draw; None: all"
            )
        )
    out += [
        Parameter("seed", 0, _integer(0), "seed of calibration sampling and random baselines"),
        Parameter(
            "cache_dir",
            "runs/cache",
            _or_none(_path),
            "observations are reused for the same model and tokens",
            path=True,
            demo="{runs}/cache",
        ),
    ]
    if interactive:
        out.append(Parameter("interactive", False, _bool, "True: show the ipywidgets explorer (needs a live kernel)"))
    return out


def _outputs(notebook: str):
    return [
        Parameter(
            "output_dir", f"runs/{notebook}", _path, "tables and executed outputs", path=True, demo="{runs}/{notebook}"
        ),
        Parameter(
            "figures_dir", f"figures/{notebook}", _path, "figures (PNG and PDF)", path=True, demo="{figures}/{notebook}"
        ),
    ]


_EVALUATION = Parameter(
    "evaluation", "code:8,tools:8,prose:8,math:8", _spec, "held-out data (validation split of built-in domains)"
)

_OBSERVATIONS = Parameter(
    "observations",
    None,
    _or_none(_path),
    "saved observations to use instead of calibrating (e.g. `reapkit import`)",
    path=True,
)

#: Every parameter of every notebook, in the order of its parameters cell.
PARAMETERS: dict[str, tuple[Parameter, ...]] = {
    "01_saliency": (
        *_model_parameters(),
        _OBSERVATIONS,
        Parameter("criteria", list(DEFAULT_CRITERIA), _list_of(_criterion), "saliency criteria to compare"),
        Parameter(
            "ratios", [0.25, 0.5], _list_of(_fraction_removed), "fractions of experts removed (cut-offs, agreement)"
        ),
        Parameter(
            "plans",
            [],
            _list_of(_path, allow_empty=True),
            "plan .json files made elsewhere, compared with reapkit's",
            path=True,
        ),
        *_outputs("01_saliency"),
    ),
    "02_clusters": (
        *_model_parameters(),
        Parameter("spaces", ["weights", "output", "router"], _list_of(_space), "spaces in which experts are compared"),
        Parameter("n_clusters", 4, _integer(1), "clusters per layer"),
        Parameter("criterion", "reap", _criterion, "saliency overlaid on the clusters"),
        Parameter("ratio", 0.5, _fraction_removed, "experts a plan at this ratio prunes are marked"),
        *_outputs("02_clusters"),
    ),
    "03_pruning": (
        *_model_parameters(),
        _OBSERVATIONS,
        Parameter("criteria", list(DEFAULT_CRITERIA), _list_of(_criterion), "criteria of the plans"),
        Parameter("ratios", [0.25, 0.5], _list_of(_fraction_removed), "fractions of experts removed"),
        _EVALUATION,
        Parameter(
            "save_criterion", "reap", _or_none(_criterion), "the plan saved as a checkpoint (None: save nothing)"
        ),
        Parameter("save_ratio", 0.5, _fraction_removed, "ratio of the saved plan"),
        Parameter("prompts", None, _prompts, "{name: prompt} for greedy samples; None: one per built-in domain"),
        Parameter("max_new_tokens", 24, _integer(0), "tokens of each greedy sample (0: no samples)"),
        Parameter(
            "lm_eval_tasks", None, _or_none(_list_of(_text)), "lm-eval tasks scored for every plan; None: no lm-eval"
        ),
        Parameter(
            "lm_eval_include",
            "demo",
            _tasks_folder,
            "folder of lm-eval task YAMLs; \"demo\": reapkit's demo tasks; None: lm-eval's own",
        ),
        Parameter("lm_eval_limit", None, _or_none(_integer(1)), "lm-eval documents per task; None: all"),
        *_outputs("03_pruning"),
    ),
    "04_paper_figures": (
        *_model_parameters(interactive=False),
        Parameter(
            "results",
            ["runs/05_study/results.csv", "runs/study/results.csv"],
            _paths,
            "tidy results of the study and its sweeps (paths, globs)",
            path=True,
            demo="{runs}/05_study/results.csv",
        ),
        Parameter(
            "layer_sensitivity",
            "runs/05_study/layer_sensitivity.csv",
            _path,
            "per-layer sensitivity table (notebook 5)",
            path=True,
            demo="{runs}/05_study/layer_sensitivity.csv",
        ),
        Parameter("criterion", "reap", _criterion, "criterion of the per-expert figures and the global budget"),
        Parameter("ratio", 0.5, _fraction_removed, "ratio of the per-expert figures"),
        *_outputs("04_paper_figures"),
    ),
    "05_study": (
        *_model_parameters(layers=False, calibration_help="calibration spec; its domains are the sets of study (b)"),
        dataclasses.replace(_EVALUATION, default="code:16,tools:16,prose:16,math:16"),
        Parameter(
            "ratios", [0, 0.125, 0.25, 0.375, 0.5, 0.625], _list_of(_fraction_removed), "fractions of experts removed"
        ),
        Parameter("criteria", list(STUDY_CRITERIA), _list_of(_criterion), "pruning criteria"),
        Parameter(
            "random_seeds",
            [0, 1, 2],
            _list_of(_integer(0), allow_empty=True),
            "random pruning, one run per seed ([]: none)",
        ),
        Parameter(
            "merges", ["m_smoe", "hc_smoe"], _list_of(_merge_method, allow_empty=True), "merging baselines ([]: none)"
        ),
        Parameter(
            "global_budget",
            True,
            _global_budget,
            "non-uniform plan with the same total (True: REAP scores; a criterion; False: none)",
        ),
        Parameter("margin", 0, _integer(0), "global budget: every layer keeps at least top-k + margin experts"),
        Parameter("sensitivity", True, _bool, "run study (b), calibration sensitivity"),
        Parameter("sensitivity_ratio", 0.5, _fraction_removed, "ratio of study (b)"),
        Parameter("sensitivity_criterion", "reap", _criterion, "criterion of study (b)"),
        Parameter(
            "layer_sensitivity", True, _bool, "prune sensitivity_ratio of one layer at a time (notebook 4 draws it)"
        ),
        *_outputs("05_study"),
    ),
}


def _declared(notebook) -> tuple[Parameter, ...]:
    if notebook not in PARAMETERS:
        raise KeyError(f"no parameters declared for notebook {notebook!r}; known: {', '.join(PARAMETERS)}")
    return PARAMETERS[notebook]


def notebook_defaults(notebook: str) -> dict:
    """{name: default} of a notebook's parameters."""
    return {p.name: p.default for p in _declared(notebook)}


def _literal(value) -> str:
    """Python source of a default, strings in double quotes: ``["reap", "frequency"]``."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def parameters_cell(notebook: str) -> str:
    """The source of the notebook's cell tagged `parameters`: one line per parameter, default and help."""
    lines = [f"{p.name} = {_literal(p.default)}" for p in _declared(notebook)]
    width = min(max(len(line) for line in lines), 34) + 2
    return "\n".join(f"{line:<{max(width, len(line) + 2)}}# {p.help}" for line, p in zip(lines, _declared(notebook)))


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------


def project_root(start=None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding `pyproject.toml`
    and `notebooks/`; `start` itself when there is none."""
    start = Path(start or os.getcwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return start


def resolve_path(value: str, root=None) -> str:
    """`value` unchanged when absolute, else joined to :func:`project_root`."""
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else project_root(root) / path)


def _check_one(parameter: Parameter, value):
    check = parameter.check
    if isinstance(check, type):
        if check is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, check) or (check is int and isinstance(value, bool)):
            raise ParameterError(
                f"parameter {parameter.name!r} must be of type {check.__name__}, got {value!r} ({type(value).__name__})"
            )
        return value
    try:
        value = check(value)
    except ValueError as error:
        raise ParameterError(f"parameter {parameter.name!r} = {value!r}: {error}") from None
    if parameter.path and value is not None:
        value = [resolve_path(v) for v in value] if isinstance(value, list) else resolve_path(value)
    return value


def check_parameters(params: dict, notebook) -> SimpleNamespace:
    """Check a notebook's parameters and return them (normalised) as a namespace.

    `notebook` is a name in :data:`PARAMETERS`, or a dict {name: check} (a check is a type or a
    function returning the normalised value). `params` may be ``globals()``: only declared names are
    read; a declared parameter that is absent takes its default (a dict schema has none: absent is
    an error). Raises :class:`ParameterError` naming the first bad parameter.
    """
    if isinstance(notebook, dict):
        declared = [Parameter(name, dataclasses.MISSING, check, "") for name, check in notebook.items()]
    else:
        declared = _declared(notebook)
    values = {}
    for parameter in declared:
        value = params.get(parameter.name, parameter.default)
        if value is dataclasses.MISSING:
            raise ParameterError(
                f"parameter {parameter.name!r} is missing; define it in the notebook's parameters cell"
            )
        values[parameter.name] = _check_one(parameter, value)
    _check_outputs(values)
    return SimpleNamespace(**values)


def check_run(notebook: str, parameters: dict) -> None:
    """Check the parameters of one run (a sweep's) against the declaration: unknown names and bad values
    raise :class:`ParameterError`. Notebooks without a declaration are not checked."""
    if notebook not in PARAMETERS:
        return
    known = [p.name for p in PARAMETERS[notebook]]
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ParameterError(
            f"notebook {notebook} has no parameter(s) {unknown}; its parameters are {', '.join(known)}"
        )
    check_parameters(parameters, notebook)


def demo_parameters(notebook: str, *, runs, figures) -> dict:
    """The parameters `reapkit demo` passes a notebook: each declared `demo` template, filled in."""
    return {
        p.name: p.demo.format(runs=runs, figures=figures, notebook=notebook)
        for p in _declared(notebook)
        if p.demo is not None
    }


def load_model(name, *, device_map=None, **kwargs):
    """`reapkit.model.loading.load_model`, passing `device_map` only when it is set."""
    from reapkit.model.loading import load_model as load

    if device_map is not None:
        kwargs["device_map"] = device_map
    return load(name, **kwargs)


def calibrate(P, *, progress: bool = True, model_needed: bool = False) -> SimpleNamespace:
    """Load `P.model` and observe it on `P.calibration` (cached in `P.cache_dir`): the first step of notebooks 1-5.

    >>> run = calibrate(P)        # run.model, run.tokenizer, run.obs, run.layers (MoE layers to draw)

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
            model=model, tokenizer=tokenizer, obs=obs, layers=moe_layers(obs, getattr(P, "layers", None))
        )
    model, tokenizer = load_model(P.model, device_map=getattr(P, "device_map", None))
    batches = calibration_batches(
        P.calibration, tokenizer, batch_size=P.batch_size, max_length=P.max_length, seed=P.seed
    )
    obs = observe_cached(
        model,
        batches,
        P.cache_dir or f"{P.output_dir}/cache",
        statistics="all",  # the notebooks draw co-selection, output-space distances, merges and any criterion
        progress=progress,
        calibration={"spec": P.calibration, "max_length": P.max_length, "seed": P.seed},
    )
    layers = moe_layers(obs, getattr(P, "layers", None))
    print(f"domains {obs.domains}, MoE layers {obs.layers}, experts {obs.num_experts}, top-k {obs.top_k}")
    return SimpleNamespace(model=model, tokenizer=tokenizer, obs=obs, layers=layers)


def plans_beside(obs, paths, criteria, *, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """Plans saved elsewhere (e.g. by `reapkit import llm-compressor`) beside reapkit's plan of each criterion
    keeping as many experts per layer: ``({(label, ratio): plan}, overlap)``; label = the file's name,
    overlap = `analysis.plan_overlap` of each saved plan with each of reapkit's (columns plan, criterion, ...).

    >>> plans, overlap = plans_beside(run.obs, ["runs/llmc_plan.json"], ["reap", "frequency"])
    """
    from reapkit.select.plan import PruningPlan
    from reapkit.study.tables import plan_overlap

    plans, frames = {}, []
    for path in paths:
        theirs = PruningPlan.load(path)
        shapes = dict(zip(obs.layers, obs.num_experts))
        if any(shapes.get(layer) != n for layer, n in theirs.num_experts.items()):
            raise ValueError(
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


def _check_outputs(values: dict) -> None:
    """Output, figure and cache folders must lie apart from the model folder they read."""
    from reapkit.atomic import check_separate

    model = values.get("model")
    if model == "demo":
        from reapkit.model.demo import DEMO_PATH

        model = DEMO_PATH
    for name in ("output_dir", "figures_dir", "cache_dir"):
        try:
            check_separate(values.get(name), model, what=f"parameter {name!r} =")
        except ValueError as error:
            raise ParameterError(str(error)) from None


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
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
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
