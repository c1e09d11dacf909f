"""The study: compression and calibration experiments, their tables, findings and readings.

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "experiments": ["compression_study"],
    "sensitivity": ["calibration_sensitivity", "layer_sensitivity"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
