"""Running: notebook parameters, papermill sweeps, plugins and the command line.

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "sweep": ["run_notebook", "run_sweep", "run_demo"],
    "plugins": ["load_plugins"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
