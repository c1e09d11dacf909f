"""Observing: record per-expert statistics in one calibration pass, in memory, layer by layer or over processes.

    >>> from reapkit.observe import observe
    >>> observe(model, batches, progress=False).domains
    ['code', 'math', 'prose', 'tools']

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "recorder": ["observe", "observe_cached"],
    "observations": ["Observations"],
    "statistics": ["STATISTICS"],
    "sequential": ["observe_sequential"],
    "importers": ["read_reap_observer"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
