"""reapkit: observe, score, plan and prune the experts of Mixture-of-Experts language models.

    >>> from reapkit import PruningPlan, calibration_batches, remove_experts, save_pruned
    >>> from reapkit.model import load_model
    >>> from reapkit.observe import observe
    >>> model, tokenizer = load_model("demo")             # the bundled demo model, or a hub name
    >>> obs = observe(model, calibration_batches("code:16,tools:8", tokenizer))
    >>> plan = PruningPlan.from_observations(obs, "reap", ratio=0.25)
    >>> remove_experts(model, plan).config.num_experts    # in place: 16 -> 12 experts per layer
    12
    >>> save_pruned(model, plan, "pruned/", tokenizer=tokenizer)   # stock from_pretrained loads it
    PosixPath('pruned')

Names load lazily, so `import reapkit.plot` does not import torch. The subpackages follow the
stages of the work, and each imports only from the ones before it:

    model -> data -> observe -> select -> compress -> measure -> study -> plot -> run
"""

from reapkit.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "model.records": ["Architecture", "register_architecture"],
    "model.discover": ["architecture_for"],
    "data": ["Batch", "calibration_batches"],
    "observe.observations": ["Observations"],
    "select.plan": ["PruningPlan"],
    "compress.prune": ["mask_experts", "prune_checkpoint", "remove_experts", "save_pruned"],
    "select.criteria": ["CRITERIA_NAMES", "DEFAULT_CRITERIA", "register_criterion", "score", "scores_frame"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
