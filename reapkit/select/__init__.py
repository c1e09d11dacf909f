"""Selecting: criteria from observations, pruning plans, merge plans, expert geometry.

    >>> from reapkit.select import PruningPlan, score
    >>> score(obs, "reap").shape, len(PruningPlan.from_observations(obs, "reap", ratio=0.25).kept[0])
    ((4, 16), 12)

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "criteria": ["CRITERIA_NAMES", "DEFAULT_CRITERIA", "register_criterion", "score", "scores_frame"],
    "plan": ["PruningPlan"],
    "merge": ["MergePlan", "plan_merge"],
    "geometry": ["angular_distances", "cluster"],
    "imported": ["read_llmcompressor_report"],
    "budget": ["water_fill", "water_plan"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
