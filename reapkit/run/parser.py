"""The command line's arguments: one sub-parser per command, each bound to its `cmd_<name>`.

    >>> args = build_parser().parse_args(["plan", "runs/obs", "--ratio", "0.5", "--out", "plan.json"])
    >>> args.func.__name__, args.ratio
    ('cmd_plan', 0.5)

Options that mean one thing mean it in every command that has them: the model and its placement
(`model_args`, `placement_args`), the options that make a pruning plan (`plan_args`), --force.
"""

from __future__ import annotations

import argparse

from reapkit.run import ablate, commands, plans, recover

__all__ = ["build_parser"]


def model_args(p):
    p.add_argument("model", help="model folder or hub name; `demo` for the bundled demo model")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")


def placement_args(p):
    """--device-map, --max-memory, --offload-folder: accelerate's big-model loading."""
    p.add_argument("--device-map", help="load straight onto devices: auto, balanced, cpu, cuda:0, ... (accelerate)")
    p.add_argument("--max-memory", help="with --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    p.add_argument("--offload-folder", help="with --device-map: weights that fit on no device are offloaded here")


def plan_args(p):
    """The options that make a pruning plan from observations (`reapkit.run.plans.plan_from_observations`)."""
    p.add_argument("--criterion", help="saliency criterion (default: reap; --plugin adds your own)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--ratio", type=float, help="fraction of each layer's experts to remove (default 0.25)")
    size.add_argument("--keep", type=int, help="experts to keep per layer (instead of --ratio)")
    size.add_argument(
        "--global-budget",
        type=float,
        metavar="RATIO",
        help="keep as many experts in all as a uniform plan at RATIO, spread over the layers by score (non-uniform)",
    )
    p.add_argument("--margin", type=int, help="with --global-budget: every layer keeps at least top-k + MARGIN experts")
    p.add_argument(
        "--budget-search",
        metavar="HOW",
        help="with --global-budget: how the budget is spread over the layers: global (by normalised score, the "
        "default), water (water-filling of each layer's saliency share) or evolution (searched on the model; prune only)",
    )
    p.add_argument("--domains", help="comma-separated calibration domains to score on (default: all)")
    p.add_argument(
        "--protect-super-experts",
        action="store_true",
        default=None,
        help="never prune REAP's super experts (observe with --statistics max_signed)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion")


def search_args(p):
    """The options of `--budget-search evolution` (`reapkit.measure.budget_search.evolve_counts`)."""
    p.add_argument("--generations", type=int, help="with --budget-search evolution: generations (default 8)")
    p.add_argument(
        "--population", type=int, help="with --budget-search evolution: candidates per generation (default 8)"
    )
    p.add_argument("--fitness", help="with --budget-search evolution: kl (default), agreement or acceptance")
    p.add_argument(
        "--search-data",
        metavar="SPEC",
        help=f"with --budget-search evolution: the tokens candidates are scored on (split train; default {plans.SEARCH_DATA})",
    )


def force_arg(p, what="output"):
    p.add_argument("--force", action="store_true", help=f"replace an existing {what}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reapkit", description="Observe, score, plan, prune and merge the experts of MoE language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("observe", help="record per-expert statistics over calibration data")
    model_args(p)
    p.add_argument(
        "--data", help="calibration spec, e.g. code:128,prose:64 or tokens.jsonl (default: the built-in mix)"
    )
    p.add_argument("--out", required=True, help="observations folder to write")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:1, ... (under torchrun `cuda` is each process's own GPU)"
    )
    placement_args(p)
    p.add_argument(
        "--sequential",
        action="store_true",
        help="layer by layer from the safetensors shards, for models larger than memory (peak: one layer)",
    )
    p.add_argument(
        "--group-size", type=int, help="with --sequential: batches whose hidden states move together (default 8)"
    )
    p.add_argument("--spill-dir", help="with --sequential: keep hidden states in files here instead of memory")
    force_arg(p, "output folder")
    p.add_argument(
        "--save-every",
        type=int,
        metavar="N",
        help=f"save the running sums to OUT{commands.PARTIAL_SUFFIX} every N batches (resumable with --resume)",
    )
    p.add_argument(
        "--resume", action="store_true", help=f"continue an interrupted run from OUT{commands.PARTIAL_SUFFIX}"
    )
    p.add_argument(
        "--statistics",
        nargs="+",
        metavar="NAME",
        help="optional statistics to record besides the defaults, e.g. coselect output_sum, or all",
    )
    p.add_argument(
        "--all-token-outputs",
        action="store_true",
        help="also run every expert on every token and record the sums of their outputs (all_output_sum, for "
        "HC-SMoE merging; costs about E/k times the experts' part of a forward)",
    )
    p.set_defaults(func=commands.cmd_observe)

    p = sub.add_parser("combine", help="add observations of the same model made on different data shards")
    p.add_argument("observations", nargs="+")
    p.add_argument("--out", required=True)
    force_arg(p, "output folder")
    p.set_defaults(func=commands.cmd_combine)

    p = sub.add_parser("scores", help="expert saliency from saved observations")
    p.add_argument("observations", help="observations folder; a checkpoint folder for a weight-only criterion (aimer)")
    p.add_argument("--criterion", default="reap")
    p.add_argument("--csv", help="write the tidy table (layer, expert, domain, value) here")
    p.set_defaults(func=commands.cmd_scores)

    p = sub.add_parser(
        "plan", help="write a pruning plan (which experts each layer keeps) as JSON, for prune / evaluate --plan"
    )
    p.add_argument(
        "observations", help="observations folder (reapkit observe, combine or import); a checkpoint folder for aimer"
    )
    plan_args(p)
    p.add_argument("--out", required=True, help="plan .json to write")
    force_arg(p)
    p.set_defaults(func=plans.cmd_plan)

    p = sub.add_parser("prune", help="remove the lowest-scoring experts (or a plan's) and save a stock checkpoint")
    model_args(p)
    p.add_argument("--observations", help="observations to make the plan from (with the plan options below)")
    p.add_argument(
        "--plan",
        help="a pruning plan .json instead (reapkit plan, import llm-compressor, a pruned folder's "
        "pruning_plan.json); merge plans are applied by `reapkit merge`",
    )
    plan_args(p)
    search_args(p)
    p.add_argument("--out", required=True)
    force_arg(p, "output folder")
    p.add_argument(
        "--in-memory",
        action="store_true",
        help="load the whole model to prune it (default for a local folder: stream its safetensors "
        "tensor by tensor, never building the model; hub names and `demo` always load)",
    )
    placement_args(p)
    p.set_defaults(func=plans.cmd_prune)

    p = sub.add_parser(
        "merge",
        help="merge each layer's experts into fewer (M-SMoE / HC-SMoE style) and save a stock checkpoint "
        "with its merge_plan.json",
        description="Merging averages each group of experts into one (weighted by routed tokens) in the slot and "
        "router row of the group's representative; `prune` only removes experts. Plan the merge from observations "
        "(--observations, --method, --keep or --ratio) or apply a saved one (--plan merge_plan.json). The output "
        "folder holds the merged stock checkpoint and its merge_plan.json. `prune --plan` refuses merge plans; "
        "`evaluate --plan merge_plan.json` scores a merge in memory without writing it.",
    )
    model_args(p)
    p.add_argument("--observations", help="observations of this model to plan the merge from")
    p.add_argument(
        "--method",
        help="a registered merge method: m_smoe, hc_smoe, hc_smoe_faithful, m_smoe_faithful, ream, submoe, ... "
        "(see reapkit.select.merge_methods)",
    )
    p.add_argument(
        "--option",
        action="append",
        metavar="NAME=VALUE",
        help="one of the method's own options, repeatable (ream: group_size; submoe: layers_per_block, rank, split)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--keep", type=int, help="experts each layer keeps after merging (a non-uniform method: on average)"
    )
    size.add_argument("--ratio", type=float, help="fraction of each layer's experts merged away")
    p.add_argument(
        "--rule", help="how a group's members are weighted: frequency, average, reap or ream (default: the method's)"
    )
    p.add_argument(
        "--align",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="align each member's neurons to its group's representative before averaging (default: the method's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan", help="a merge_plan.json written by an earlier `reapkit merge`, applied as it is")
    p.add_argument("--out", required=True, help="folder of the merged checkpoint")
    force_arg(p, "output folder")
    placement_args(p)
    p.set_defaults(func=plans.cmd_merge)

    p = sub.add_parser(
        "recover",
        help="retrain only the routers of a pruned checkpoint to match the unpruned model (router KD)",
        description="Distils the unpruned model's next-token distribution into the pruned checkpoint by training "
        "its routers alone (KL(teacher || pruned) on calibration tokens, Adam); every other weight is kept. "
        "Writes a stock checkpoint whose pruning_plan.json records the recovery.",
    )
    p.add_argument("pruned", help="a checkpoint folder written by `reapkit prune` (with its pruning_plan.json)")
    p.add_argument("--out", required=True, help="folder of the recovered checkpoint")
    p.add_argument("--teacher", help="the unpruned model (default: the source model pruning_plan.json records)")
    p.add_argument("--data", help="calibration spec, e.g. code:64,prose:64 or tokens.jsonl (default: the built-in mix)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, help="optimizer steps of one batch each (default: one pass over the data)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order the batches are visited in")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (both models)")
    force_arg(p, "output folder")
    p.set_defaults(func=recover.cmd_recover)

    p = sub.add_parser("import", help="bring saliency from other tools: REAP observer state, llm-compressor report")
    p.add_argument(
        "format",
        choices=["reap-observer", "llm-compressor"],
        help="reap-observer: the .pt state CerebrasResearch/reap saves (-> observations folder); "
        "llm-compressor: the report_path .json of its REAPPruningModifier (-> pruning plan .json)",
    )
    p.add_argument("file", help="the file to import (never modified)")
    p.add_argument("--out", required=True, help="observations folder (reap-observer) or plan .json (llm-compressor)")
    p.add_argument("--model", help="the model the file was made on: attach its fingerprint, check layers and experts")
    p.add_argument("--dtype", default="auto", help="with --model: auto, float32, bfloat16, float16")
    p.add_argument("--domain", help="reap-observer: the calibration domain the file becomes (default: calibration)")
    p.add_argument("--num-experts", type=int, help="llm-compressor without --model: experts per layer before pruning")
    p.add_argument("--top-k", type=int, help="experts per token, when neither --model nor the file tells")
    force_arg(p)
    placement_args(p)
    p.set_defaults(func=commands.cmd_import)

    p = sub.add_parser(
        "evaluate",
        help="score the model, or a plan applied to it in memory, with lm-evaluation-harness (no checkpoint written)",
    )
    model_args(p)
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument(
        "--include-path",
        help="folder of lm-eval task YAML files, where --tasks are looked up; demo: reapkit's demo suite "
        "(reapkit_heldout, reapkit_continuation); default: lm-eval's own tasks",
    )
    p.add_argument("--observations", help="observations to make the plan from (none: the unpruned model)")
    p.add_argument("--plan", help="a pruning plan .json (masked in) or a merge_plan.json (merged in memory) instead")
    p.add_argument(
        "--router",
        choices=("representative", "tied"),
        help="with a merge_plan.json: representative (as saved: the smaller model) or tied (as the REAP code "
        "evaluates: router unchanged, every member holds its merged expert)",
    )
    plan_args(p)
    p.add_argument("--limit", type=float, help="documents per task: a whole number, or a fraction of them in (0, 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per document (default: each task's own)")
    p.add_argument("--out", help="write the results rows (CSV) here")
    force_arg(p, "--out file")
    placement_args(p)
    p.set_defaults(func=plans.cmd_evaluate)

    p = sub.add_parser(
        "ablate",
        help="ground truth for criteria: the loss change from masking each expert alone, or a plan's removed "
        "experts together against the sum of their single costs (CSV)",
    )
    model_args(p)
    p.add_argument(
        "--data",
        help=f"held-out spec (built-in domains from their validation split), e.g. code:8,math:8 or tokens.jsonl "
        f"(default: {ablate.HELD_OUT}, the notebooks' evaluation data)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--limit", type=int, help="use the first batches holding at least this many tokens")
    p.add_argument("--layers", help="comma-separated MoE layers (decoder indices) to ablate (default: all)")
    p.add_argument("--plan", help="a pruning plan .json: its removed experts together, per layer and in all")
    p.add_argument("--out", required=True, help="the table to write (CSV)")
    force_arg(p, "--out file")
    placement_args(p)
    p.set_defaults(func=ablate.cmd_ablate)

    p = sub.add_parser("demo", help="run the notebooks on the bundled demo model and write figures")
    p.add_argument("--figures", default="figures")
    p.add_argument("--runs", default="runs/demo")
    p.set_defaults(func=commands.cmd_demo)

    p = sub.add_parser("sweep", help="execute a notebook over a parameter grid with papermill")
    p.add_argument("params", help="sweep YAML file")
    p.add_argument("--jobs", type=int)
    p.add_argument(
        "--set",
        action="append",
        metavar="PARAMETER=VALUE",
        help="override a parameter for every run (YAML value; a grid parameter takes that one value)",
    )
    p.add_argument("--limit", type=int, help="run only the first N runs of the grid (a quick check)")
    p.add_argument("--resume", action="store_true", help="skip runs that already finished with the same parameters")
    p.set_defaults(func=commands.cmd_sweep)

    p = sub.add_parser("architectures", help="list the MoE model types of transformers and which reapkit supports")
    p.add_argument("--markdown", action="store_true", help="print the README's table")
    p.set_defaults(func=commands.cmd_architectures)
    for p in sub.choices.values():
        p.add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="MODULE_OR_FILE",
            help="import this module or .py file first (it may register criteria or architectures)",
        )
    return parser
