"""Running: notebook parameters, papermill sweeps, plugins and the command line.

    >>> from reapkit.run import check_parameters
    >>> check_parameters({"ratios": [0.5]}, "03_pruning").ratios   # a notebook's parameters, checked
    [0.5]

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "execute": ["run_notebook"],
    "sweep": ["run_sweep"],
    "demo": ["run_demo"],
    "parameters": ["check_parameters", "PARAMETERS"],
    "plugins": ["load_plugins"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
