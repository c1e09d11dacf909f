"""Helpers the notebooks in `notebooks/` call: parameter checks, model loading, figure saving, tables.

    >>> P = check_parameters(globals(), "01_saliency")   # first cell after `parameters`
    >>> model, tokenizer = load_model(P.model)           # "demo", a local checkpoint or a hub name
    >>> figures = Figures(P.figures_dir)
    >>> figures.save(plot.saliency_heatmaps(scores), "saliency_heatmaps")   # PNG + PDF
    >>> write_table(results, P.output_dir, "results")   # results.csv, whole or not at all

A wrong parameter stops the notebook at the checking cell with a `ParameterError` that names the
parameter, what it should be and what it was.
"""
from __future__ import annotations

import glob
import math
import numbers
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from .loading import load_model  # noqa: F401  (re-exported: notebooks load models through here)

__all__ = ["ParameterError", "SCHEMAS", "check_parameters", "moe_layers", "load_model", "Figures", "write_table", "read_results",
           "DEFAULT_PROMPTS"]


class ParameterError(ValueError):
    """A notebook parameter has the wrong type or value."""


# --------------------------------------------------------------------------------------------
# Validators: each returns the normalised value or raises ValueError(what was expected)
# --------------------------------------------------------------------------------------------

def _str(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def _path_or_none(value):
    return None if value is None else _str(str(value) if isinstance(value, Path) else value)


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError("expected True or False")
    return value


def _int(low=None, high=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError("expected an integer" + (f" >= {low}" if low is not None else ""))
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"expected an integer in [{low}, {high if high is not None else 'inf'}]")
        return int(value)
    return check


def _ratio(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < 1) or math.isnan(value):
        raise ValueError("expected a fraction of experts removed, a number in [0, 1)")
    return float(value)


def _list_of(item, *, allow_empty=False, allow_scalar=True):
    def check(value):
        if allow_scalar and not isinstance(value, (list, tuple)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError("expected a list")
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
    from .saliency import CRITERIA_NAMES

    if value not in CRITERIA_NAMES:
        raise ValueError(f"unknown criterion; choose from {', '.join(CRITERIA_NAMES)}")
    return value


def _space(value):
    from .geometry import SPACES

    if value not in SPACES:
        raise ValueError(f"unknown space; choose from {', '.join(SPACES)}")
    return value


def _spec(value):
    from .data import parse_spec

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


def _results(value):
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, (str, Path)) for v in items):
        raise ValueError("expected a path or glob pattern of results tables (or a list of them)")
    return [str(v) for v in items]


_COMMON = {
    "model": _str,
    "calibration": _spec,
    "seed": _int(0),
    "max_length": _int(8),
    "batch_size": _int(1),
    "layers": _or_none(_list_of(_int(0))),
    "output_dir": _str,
    "figures_dir": _str,
    "cache_dir": _path_or_none,
    "interactive": _bool,
}

def _merge_method(value):
    from .merge import METHODS

    if value not in METHODS:
        raise ValueError(f"unknown merge method; choose from {', '.join(METHODS)}")
    return value


def _global_budget(value):
    return value if isinstance(value, bool) else _criterion(value)


#: Parameter names and checks of each notebook.
SCHEMAS = {
    "01_saliency": {**_COMMON, "criteria": _list_of(_criterion), "ratios": _list_of(_ratio)},
    "02_clusters": {**_COMMON, "spaces": _list_of(_space), "n_clusters": _int(1), "criterion": _criterion,
                    "ratio": _ratio},
    "03_pruning": {**_COMMON, "criteria": _list_of(_criterion), "ratios": _list_of(_ratio), "evaluation": _spec,
                   "save_criterion": _or_none(_criterion), "save_ratio": _or_none(_ratio), "prompts": _prompts,
                   "max_new_tokens": _int(0)},
    "04_paper_figures": {**_COMMON, "results": _results, "criteria": _list_of(_criterion), "ratio": _ratio,
                         "metrics": _list_of(_str)},
    "05_study": {**{k: v for k, v in _COMMON.items() if k != "layers"}, "evaluation": _spec,
                 "ratios": _list_of(_ratio), "criteria": _list_of(_criterion),
                 "random_seeds": _list_of(_int(0), allow_empty=True), "merges": _list_of(_merge_method, allow_empty=True),
                 "global_budget": _global_budget, "margin": _int(0), "sensitivity": _bool,
                 "sensitivity_ratio": _ratio, "sensitivity_criterion": _criterion},
}


def check_parameters(params: dict, schema) -> SimpleNamespace:
    """Check notebook parameters against `schema` and return them (normalised) as a namespace.

    `schema` is a notebook name from :data:`SCHEMAS` or a dict {name: check}, where a check is a
    type (``int``, ``str``, ...) or a function returning the normalised value and raising
    ``ValueError`` with what it expected. `params` may be ``globals()``: only the schema's names
    are read. Raises :class:`ParameterError` naming the first bad or missing parameter.
    """
    if isinstance(schema, str):
        if schema not in SCHEMAS:
            raise KeyError(f"no parameter schema named {schema!r}; known: {', '.join(SCHEMAS)}")
        schema = SCHEMAS[schema]
    values = {}
    for name, check in schema.items():
        if name not in params:
            raise ParameterError(f"parameter {name!r} is missing; define it in the notebook's parameters cell")
        value = params[name]
        if isinstance(check, type):
            if check is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, check) or (check is int and isinstance(value, bool)):
                raise ParameterError(f"parameter {name!r} must be of type {check.__name__}, got {value!r} "
                                     f"({type(value).__name__})")
            values[name] = value
            continue
        try:
            values[name] = check(value)
        except ValueError as error:
            hint = ("; it is a string: write the value without quotes (papermill -p, not -r; YAML 0.25, not '0.25')"
                    if isinstance(value, str) and _looks_numeric(value) else "")
            raise ParameterError(f"parameter {name!r} = {value!r}: {error}{hint}") from None
    _check_outputs(values)
    return SimpleNamespace(**values)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_outputs(values: dict) -> None:
    """Output, figure and cache folders must lie apart from the model folder they read."""
    from .atomic import check_separate

    model = values.get("model")
    if model == "demo":
        from .demo import DEMO_PATH

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
        raise ParameterError(f"parameter 'layers' = {list(layers)!r}: layer(s) {unknown} are not MoE layers of this model; "
                             f"its MoE layers are {obs.layers}")
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
        from .plot import save_figure

        self.saved += save_figure(fig, self.folder, name, close=self.close)
        return fig


def write_table(frame: pd.DataFrame, folder, name: str = "results") -> Path:
    """Write `frame` as `folder/name.csv` (temporary sibling, then rename)."""
    from .atomic import atomic_write_text

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
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["source", "ratio", "criterion", "domain", "loss"])


#: Prompts for greedy samples before and after pruning, one per built-in domain.
DEFAULT_PROMPTS = {
    "code": "def fibonacci(n):\n    ",
    "prose": "The history of the city",
    "tools": '<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n',
    "math": "Question: Ava has 12 apples and gives 5 to Ben. How many apples does Ava have now?\nAnswer:",
}
