"""Checks of notebook parameter values, and where relative paths point.

    >>> integer(1)(3), fraction_removed(0.25), or_none(criterion)(None)
    (3, 0.25, None)
    >>> integer(1)("3")
    Traceback (most recent call last):
    ...
    reapkit.errors.InvalidInput: expected an integer >= 1; got the string '3': pass the number without quotes (papermill -p, not -r)

Each check returns the normalised value or raises `InvalidInput` saying what it expected;
`reapkit.run.parameters` names the parameter. Numbers are never converted from strings.

Relative paths are resolved against the project root (:func:`project_root`: the nearest folder
above the working directory holding `pyproject.toml` and `notebooks/`), so a kernel started in
`notebooks/` (JupyterLab's default) writes where the README says.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

from reapkit.errors import InvalidInput
from reapkit.measure.harness import DEMO_SUITE
from reapkit.select.criteria import check_ratio

__all__ = [
    "project_root",
    "resolve_path",
    "text",
    "path",
    "boolean",
    "positive",
    "budget_search",
    "integer",
    "fraction_removed",
    "list_of",
    "or_none",
    "criterion",
    "space",
    "merge_method",
    "spec",
    "prompts",
    "paths",
    "device_map",
    "plugins",
    "tasks_folder",
    "global_budget",
]


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


def _number_in_string(value) -> str:
    """A hint for numbers passed as text (papermill -r, quoted YAML)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f"; got the string {value!r}: pass the number without quotes (papermill -p, not -r)"
    return ""


def text(value):
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("expected a non-empty string")
    return value


def path(value):
    return text(str(value) if isinstance(value, Path) else value)


def boolean(value):
    if not isinstance(value, bool):
        raise InvalidInput("expected True or False")
    return value


def integer(low=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidInput(
                "expected an integer" + (f" >= {low}" if low is not None else "") + _number_in_string(value)
            )
        if low is not None and value < low:
            raise InvalidInput(f"expected an integer >= {low}")
        return int(value)

    return check


def positive(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise InvalidInput("expected a positive number" + _number_in_string(value))
    return float(value)


def budget_search(value):
    from reapkit.select.budget import SEARCHES

    if value not in SEARCHES or value == "global":
        raise InvalidInput(f"expected a budget search, one of {', '.join(s for s in SEARCHES if s != 'global')}")
    return value


def fraction_removed(value):
    try:
        return check_ratio(value)
    except ValueError:
        raise InvalidInput(
            "expected a fraction of experts removed, a number in [0, 1)" + _number_in_string(value)
        ) from None


def list_of(item, *, allow_empty=False):
    def check(value):
        if not isinstance(value, (list, tuple)):
            value = [value]
        if not value and not allow_empty:
            raise InvalidInput("expected a non-empty list")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except ValueError as error:
                raise InvalidInput(f"item {i} ({v!r}): {error}") from None
        return out

    return check


def or_none(check):
    return lambda value: None if value is None else check(value)


def criterion(value):
    from reapkit.select.criteria import CRITERIA_NAMES

    if value not in CRITERIA_NAMES:
        raise InvalidInput(f"unknown criterion; choose from {', '.join(CRITERIA_NAMES)}")
    return value


def space(value):
    from reapkit.select.geometry import SPACES

    if value not in SPACES:
        raise InvalidInput(f"unknown space; choose from {', '.join(SPACES)}")
    return value


def merge_method(value):
    from reapkit.select.merge import METHODS

    if value not in METHODS:
        raise InvalidInput(f"unknown merge method; choose from {', '.join(METHODS)}")
    return value


def spec(value):
    from reapkit.data import parse_spec

    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, (str, dict)):
        raise InvalidInput("expected a calibration spec string such as 'code:32,tools:32,prose:32,math:32'")
    try:
        parse_spec(value)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise InvalidInput(str(error)) from None
    return value


def prompts(value):
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidInput("expected None or a dict {name: prompt text}")
    return value


def paths(value):
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, (str, Path)) for v in items):
        raise InvalidInput("expected a path or glob pattern (or a list of them)")
    return [str(v) for v in items]


def device_map(value):
    if value is None or isinstance(value, dict) or (isinstance(value, str) and value.strip()):
        return value
    raise InvalidInput('expected None, a device map name such as "auto", or a dict {module: device}')


def plugins(value):
    """Import each plugin (a module name or a .py file) now, so that the criteria it registers pass the checks below."""
    from reapkit.run.plugins import load_plugins

    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, Path)) for v in items):
        raise InvalidInput("expected a list of module names or .py files")
    items = [resolve_path(v) if str(v).endswith(".py") else str(v) for v in items]
    load_plugins(items)
    return items


def tasks_folder(value):
    """None (lm-eval's own tasks), DEMO_SUITE (`reapkit.measure.harness.write_demo_tasks`) or a folder, resolved like other paths."""
    return value if value in (None, DEMO_SUITE) else str(resolve_path(path(value)))


def global_budget(value):
    return value if isinstance(value, bool) else criterion(value)
