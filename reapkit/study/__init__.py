"""The study: compression and calibration experiments, their tables, findings and readings.

    >>> from reapkit.study import layer_sensitivity
    >>> layer_sensitivity(model, obs, eval_batches, progress=False).layer.unique().tolist()
    [0, 1, 2, 3]

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "experiments": ["compression_study"],
    "sensitivity": ["calibration_sensitivity", "layer_sensitivity"],
    "recovery": ["recovery_study", "recovery_reading"],
    "budget": ["budget_comparison", "budget_reading"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
