"""Every notebook parameter, declared once: name, default, check and one line of help.

    >>> P = check_parameters({"ratios": [0.5]}, "01_saliency")   # in the notebook: check_parameters(globals(), ...)
    >>> P.ratios, P.model                               # what the run got, and the defaults of the rest
    ([0.5], 'demo')

Each notebook parameter is declared once, in :data:`PARAMETERS`. The notebook's cell tagged
`parameters` is generated from it (`parameters_cell`, written by
`reapkit.run.notebook.sync_notebooks`; a test checks they agree), `check_parameters` checks the
values a run gets, and sweep files are checked against it (`check_run`) before any run starts. A
wrong value stops the notebook at the checking cell with a `ParameterError` naming the parameter,
what it should be and what it was. Numbers are never converted from strings: ``ratio="0.25"``
(papermill ``-r``, or a quoted YAML value) is an error that says to pass the number (papermill
``-p ratio 0.25``). Relative output paths (`output_dir`, `figures_dir`, `cache_dir`, `results`) are
resolved against the project root (`reapkit.run.checks.project_root`).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from reapkit.errors import ParameterError
from reapkit.measure.harness import DEMO_SUITE
from reapkit.model.demo import DEMO, resolve_name
from reapkit.run import checks
from reapkit.run.checks import resolve_path
from reapkit.select.criteria import DEFAULT_CRITERIA, STUDY_CRITERIA

__all__ = [
    "ParameterError",
    "Parameter",
    "PARAMETERS",
    "check_parameters",
    "check_run",
    "demo_parameters",
    "notebook_defaults",
    "parameters_cell",
]


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One notebook parameter: ``Parameter("seed", 0, checks.integer(0), "random seed")``.

    `check` returns the normalised value or raises ValueError saying what it expected (`reapkit.run.checks`) (a type such
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


#: The explorer: None shows it in a live JupyterLab session and never under papermill (`reapkit.run.lab.show_explorer`).
_INTERACTIVE = Parameter(
    "interactive",
    None,
    checks.or_none(checks.boolean),
    "explorer: None shows it in JupyterLab, never under papermill; True/False: always/never",
)


def _model_parameters(*, layers=True, calibration_help="calibration spec (built-in domains, files)"):
    out = [
        Parameter("plugins", [], checks.plugins, "modules or .py files imported first (e.g. criteria they register)"),
        Parameter("model", DEMO, checks.text, f'"{DEMO}" (the bundled model), a local checkpoint or a hub name'),
        Parameter(
            "device_map",
            None,
            checks.device_map,
            'None: load on the CPU; "auto" or a dict spreads the model (accelerate)',
        ),
        Parameter("calibration", "code:16,tools:16,prose:16,math:16", checks.spec, calibration_help),
        Parameter("max_length", 128, checks.integer(8), "tokens per calibration sample"),
        Parameter("batch_size", 8, checks.integer(1), "sequences per forward"),
    ]
    if layers:
        out.append(
            Parameter(
                "layers",
                None,
                checks.or_none(checks.list_of(checks.integer(0))),
                "MoE layers (decoder indices) to draw; None: all",
            )
        )
    out += [
        Parameter("seed", 0, checks.integer(0), "seed of calibration sampling and random baselines"),
        Parameter(
            "cache_dir",
            "runs/cache",
            checks.or_none(checks.path),
            "observations are reused for the same model and tokens",
            path=True,
            demo="{runs}/cache",
        ),
    ]
    out.append(_INTERACTIVE)
    return out


def _outputs(notebook: str):
    return [
        Parameter(
            "output_dir",
            f"runs/{notebook}",
            checks.path,
            "tables and executed outputs",
            path=True,
            demo="{runs}/{notebook}",
        ),
        Parameter(
            "figures_dir",
            f"figures/{notebook}",
            checks.path,
            "figures (PNG and PDF)",
            path=True,
            demo="{figures}/{notebook}",
        ),
    ]


_EVALUATION = Parameter(
    "evaluation", "code:8,tools:8,prose:8,math:8", checks.spec, "held-out data (validation split of built-in domains)"
)

_OBSERVATIONS = Parameter(
    "observations",
    None,
    checks.or_none(checks.path),
    "saved observations to use instead of calibrating (e.g. `reapkit import`)",
    path=True,
)

#: Every parameter of every notebook, in the order of its parameters cell.
PARAMETERS: dict[str, tuple[Parameter, ...]] = {
    "01_saliency": (
        *_model_parameters(),
        _OBSERVATIONS,
        Parameter("criteria", list(DEFAULT_CRITERIA), checks.list_of(checks.criterion), "saliency criteria to compare"),
        Parameter(
            "ratios",
            [0.25, 0.5],
            checks.list_of(checks.fraction_removed),
            "fractions of experts removed (cut-offs, agreement)",
        ),
        Parameter(
            "plans",
            [],
            checks.list_of(checks.path, allow_empty=True),
            "plan .json files made elsewhere, compared with reapkit's",
            path=True,
        ),
        Parameter(
            "ablation",
            True,
            checks.boolean,
            "ground truth: mask each expert alone on `evaluation`, rank-correlate every criterion with its cost",
        ),
        _EVALUATION,
        *_outputs("01_saliency"),
    ),
    "02_clusters": (
        *_model_parameters(),
        Parameter(
            "spaces",
            ["weights", "output", "router"],
            checks.list_of(checks.space),
            "spaces in which experts are compared",
        ),
        Parameter("n_clusters", 4, checks.integer(1), "clusters per layer"),
        Parameter("criterion", "reap", checks.criterion, "saliency overlaid on the clusters"),
        Parameter("ratio", 0.5, checks.fraction_removed, "experts a plan at this ratio prunes are marked"),
        Parameter(
            "merge_method",
            "m_smoe_faithful",
            checks.or_none(checks.merge_method),
            "merging at `ratio` shown: alignment and merged against members (None: not shown)",
        ),
        *_outputs("02_clusters"),
    ),
    "03_pruning": (
        *_model_parameters(),
        _OBSERVATIONS,
        Parameter("criteria", list(DEFAULT_CRITERIA), checks.list_of(checks.criterion), "criteria of the plans"),
        Parameter("ratios", [0.25, 0.5], checks.list_of(checks.fraction_removed), "fractions of experts removed"),
        _EVALUATION,
        Parameter(
            "save_criterion",
            "reap",
            checks.or_none(checks.criterion),
            "the plan saved as a checkpoint (None: save nothing)",
        ),
        Parameter("save_ratio", 0.5, checks.fraction_removed, "ratio of the saved plan"),
        Parameter("prompts", None, checks.prompts, "{name: prompt} for greedy samples; None: one per built-in domain"),
        Parameter("max_new_tokens", 24, checks.integer(0), "tokens of each greedy sample (0: no samples)"),
        Parameter(
            "lm_eval_tasks",
            None,
            checks.or_none(checks.list_of(checks.text)),
            "lm-eval tasks scored for every plan; None: no lm-eval",
        ),
        Parameter(
            "lm_eval_include",
            DEMO_SUITE,
            checks.tasks_folder,
            f"folder of lm-eval task YAMLs; \"{DEMO_SUITE}\": reapkit's demo tasks; None: lm-eval's own",
        ),
        Parameter("lm_eval_limit", None, checks.or_none(checks.integer(1)), "lm-eval documents per task; None: all"),
        Parameter(
            "recover_ratios",
            [0.25, 0.5],
            checks.list_of(checks.fraction_removed, allow_empty=True),
            "router recovery after REAP at these ratios ([]: none)",
        ),
        Parameter("recover_epochs", 3, checks.integer(1), "passes over the calibration tokens in router recovery"),
        Parameter("recover_lr", 3e-3, checks.positive, "learning rate of router recovery"),
        Parameter(
            "budget_ratios",
            [0.25, 0.5],
            checks.list_of(checks.fraction_removed, allow_empty=True),
            "non-uniform budgets searched at these ratios ([]: none)",
        ),
        Parameter("search_generations", 8, checks.integer(1), "generations of the evolutionary budget search"),
        Parameter("search_population", 8, checks.integer(2), "candidate plans per generation of that search"),
        *_outputs("03_pruning"),
    ),
    "04_paper_figures": (
        *_model_parameters(),
        Parameter(
            "results",
            ["runs/05_study/results.csv", "runs/study/results.csv"],
            checks.paths,
            "tidy results of the study and its sweeps (paths, globs)",
            path=True,
            demo="{runs}/05_study/results.csv",
        ),
        Parameter(
            "layer_sensitivity",
            "runs/05_study/layer_sensitivity.csv",
            checks.path,
            "per-layer sensitivity table (notebook 5)",
            path=True,
            demo="{runs}/05_study/layer_sensitivity.csv",
        ),
        Parameter("criterion", "reap", checks.criterion, "criterion of the per-expert figures and the global budget"),
        Parameter("ratio", 0.5, checks.fraction_removed, "ratio of the per-expert figures"),
        *_outputs("04_paper_figures"),
    ),
    "05_study": (
        *_model_parameters(layers=False, calibration_help="calibration spec; its domains are the sets of study (b)"),
        dataclasses.replace(_EVALUATION, default="code:16,tools:16,prose:16,math:16"),
        Parameter(
            "ratios",
            [0, 0.125, 0.25, 0.375, 0.5, 0.625],
            checks.list_of(checks.fraction_removed),
            "fractions of experts removed",
        ),
        Parameter(
            "criteria",
            [*STUDY_CRITERIA, "ean_ca", "msan", "aimer"],
            checks.list_of(checks.criterion),
            "pruning criteria (aimer: a local checkpoint's weights)",
        ),
        Parameter(
            "random_seeds",
            [0, 1, 2],
            checks.list_of(checks.integer(0), allow_empty=True),
            "random pruning, one run per seed ([]: none)",
        ),
        Parameter(
            "merges",
            ["hc_smoe_faithful", "m_smoe_faithful", "ream", "submoe"],
            checks.list_of(checks.merge_method, allow_empty=True),
            "merging methods, each evaluated as its reference code does ([]: none)",
        ),
        Parameter(
            "global_budget",
            True,
            checks.global_budget,
            "non-uniform plan with the same total (True: REAP scores; a criterion; False: none)",
        ),
        Parameter("margin", 0, checks.integer(0), "global budget: every layer keeps at least top-k + margin experts"),
        Parameter(
            "budget_searches",
            ["water", "evolution"],
            checks.list_of(checks.budget_search, allow_empty=True),
            "more non-uniform plans with the global budget's total and criterion ([]: none)",
        ),
        Parameter("search_generations", 4, checks.integer(1), "generations of the evolutionary budget search"),
        Parameter("search_population", 6, checks.integer(2), "candidate plans per generation of that search"),
        Parameter("sensitivity", True, checks.boolean, "run study (b), calibration sensitivity"),
        Parameter("sensitivity_ratio", 0.5, checks.fraction_removed, "ratio of study (b)"),
        Parameter("sensitivity_criterion", "reap", checks.criterion, "criterion of study (b)"),
        Parameter(
            "layer_sensitivity",
            True,
            checks.boolean,
            "prune sensitivity_ratio of one layer at a time (notebook 4 draws it)",
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


def _check_outputs(values: dict) -> None:
    """Output, figure and cache folders must lie apart from the model folder they read."""
    from reapkit.atomic import check_separate

    model = values.get("model")
    model = resolve_name(model, must_exist=False) if model is not None else None
    for name in ("output_dir", "figures_dir", "cache_dir"):
        try:
            check_separate(values.get(name), model, what=f"parameter {name!r} =")
        except ValueError as error:
            raise ParameterError(str(error)) from None
