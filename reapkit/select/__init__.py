"""Selecting: criteria from observations, pruning plans, merge plans, expert geometry.

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "criteria": ["CRITERIA_NAMES", "DEFAULT_CRITERIA", "register_criterion", "score", "scores_frame"],
    "plan": ["PruningPlan"],
    "merge": ["MergePlan", "plan_merge"],
    "geometry": ["angular_distances", "cluster"],
    "imported": ["read_llmcompressor_report"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
