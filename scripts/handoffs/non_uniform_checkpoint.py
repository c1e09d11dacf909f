"""A checkpoint pruned with a global budget (a different expert count per layer), in reapkit's format.

    python non_uniform_checkpoint.py demo runs/obs 48 pruned-global    # run by check_handoffs.py, in the project env

The budget keeps the `total` best experts over all MoE layers (`PruningPlan.from_global_budget`);
`save_non_uniform` writes the format that `load_pruned` and reapkit's vLLM plugin read.
"""

import sys

from reapkit.compress.prune import remove_experts, save_non_uniform
from reapkit.model.loading import load_model
from reapkit.observe.observations import Observations
from reapkit.select.plan import PruningPlan


def main(model_name: str, observations: str, total: int, out: str) -> dict:
    obs = Observations.load(observations)
    plan = PruningPlan.from_global_budget(obs, "reap", total=total)
    model, tokenizer = load_model(model_name)
    remove_experts(model, plan)
    save_non_uniform(model, plan, out, tokenizer=tokenizer, force=True)
    return {layer: len(kept) for layer, kept in plan.kept.items()}


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
