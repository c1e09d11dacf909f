"""Measuring: what compression costs (loss, agreement, KL, lm-eval), bootstrap intervals, the results schema.

    >>> from reapkit.measure.evaluate import evaluate
    >>> evaluate(model, eval_batches, progress=False).domain.tolist()   # each with 95% intervals
    ['code', 'prose', 'tools', 'math', 'all']

Names load lazily on first use.
"""

from reapkit.lazy import lazy_exports

_EXPORTS = {
    "evaluate": ["reference_outputs", "sequence_metrics", "evaluate_plans"],
    "harness": ["lm_eval", "lm_eval_plans"],
    "stats": ["bootstrap"],
    "budget_search": ["evolve_counts"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
