"""Load a researcher's own code (criteria, architectures) into reapkit before a command or notebook runs.

    >>> modules = load_plugins(["my_lab.criteria", "experiments/my_criterion.py"])  # doctest: +SKIP

A plugin is an importable module name or the path of a ``.py`` file; importing it runs its
``reapkit.register_criterion(...)`` / ``reapkit.register_architecture(...)`` calls. On the
command line: ``reapkit scores runs/obs --criterion mine --plugin my_criterion.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from reapkit.errors import InvalidInput, MissingInput

__all__ = ["load_plugins"]


def load_plugins(plugins) -> list[ModuleType]:
    """Import each plugin (module name or ``.py`` path) once per process; return the modules."""
    if isinstance(plugins, (str, Path)):
        plugins = [plugins]
    return [_load(str(p)) for p in plugins or []]


def _load(plugin: str) -> ModuleType:
    if plugin.endswith(".py") or "/" in plugin or "\\" in plugin:
        path = Path(plugin).resolve()
        if not path.is_file():
            raise MissingInput(f"plugin file {plugin} does not exist; pass a .py file or an importable module name")
        name = f"reapkit_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return sys.modules[name]
    try:
        return importlib.import_module(plugin)
    except ModuleNotFoundError as error:
        if error.name and plugin.startswith(error.name):
            raise InvalidInput(
                f"plugin module {plugin!r} cannot be imported; pass a .py file path or put the module on PYTHONPATH"
            ) from None
        raise
