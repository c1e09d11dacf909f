"""The `reapkit` command line (also `python -m reapkit`).

    reapkit observe MODEL --data code:128,tools:64 --out runs/obs
    reapkit combine runs/obs-shard0 runs/obs-shard1 --out runs/obs      # observations add up
    reapkit scores runs/obs --criterion reap --csv scores.csv
    reapkit prune MODEL --observations runs/obs --criterion reap --ratio 0.25 --out pruned/
    reapkit demo                      # notebooks on the bundled demo model, figures in figures/
    reapkit sweep sweeps/study.yaml   # papermill runs over a parameter grid
"""
from __future__ import annotations

import argparse
import sys
import time

from .loading import load_model


def cmd_observe(args):
    from .data import DEFAULT_SPEC, calibration_batches
    from .observe import observe

    args.data = args.data or DEFAULT_SPEC
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    batches = calibration_batches(args.data, tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    settings = {"spec": args.data, "batch_size": args.batch_size, "max_length": args.max_length, "model": args.model,
                "dtype": args.dtype, "device": args.device}
    obs = observe(model, batches, calibration=settings)
    obs.save(args.out, force=args.force)
    tokens = sum(obs.meta["calibration"]["tokens"].values())
    print(f"observed {tokens} tokens in {len(obs.domains)} domain(s) {obs.domains} over {len(obs.layers)} MoE layers -> {args.out}")


def cmd_combine(args):
    from functools import reduce

    from .observations import Observations

    total = reduce(lambda a, b: a + b, [Observations.load(path) for path in args.observations])
    total.save(args.out, force=args.force)
    tokens = {d: int(total.stats[d]["tokens"][0]) for d in total.domains}
    print(f"combined {len(args.observations)} observations: tokens per domain {tokens} -> {args.out}")


def cmd_scores(args):
    from .observations import Observations
    from .saliency import scores_frame

    obs = Observations.load(args.observations)
    frame = scores_frame(obs, [args.criterion])[["layer", "expert", "domain", "value"]]
    if args.csv:
        from .atomic import atomic_write_text

        atomic_write_text(args.csv, frame.to_csv(index=False))
        print(f"wrote {len(frame)} rows to {args.csv}")
    pooled = frame[frame.domain == "all"].pivot(index="layer", columns="expert", values="value")
    print(f"{args.criterion} scores (pooled over {obs.domains}), layers x experts:")
    print(pooled.round(4).to_string())


def _plan(args, obs):
    from .plan import PruningPlan

    domains = args.domains.split(",") if args.domains else None
    return PruningPlan.from_observations(obs, args.criterion, ratio=args.ratio if args.keep is None else None,
                                         keep=args.keep, domains=domains, seed=args.seed)


def cmd_prune(args):
    from .observations import Observations
    from .prune import remove_experts, save_pruned

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    obs = Observations.load(args.observations, model=model)
    plan = _plan(args, obs)
    plan.provenance["source_model"] = args.model
    remove_experts(model, plan)
    save_pruned(model, plan, args.out, tokenizer=tokenizer, force=args.force)
    kept = {layer: len(k) for layer, k in plan.kept.items()}
    print(f"pruned with {plan.criterion}: experts per layer {plan.num_experts} -> {kept}; "
          f"saved to {args.out} in {time.perf_counter() - start:.1f}s")


def cmd_demo(args):
    from .sweep import run_demo

    run_demo(figures_dir=args.figures, runs_dir=args.runs)


def cmd_sweep(args):
    from .sweep import run_sweep

    runs = run_sweep(args.params, jobs=args.jobs)
    failed = runs[runs.status != "ok"]
    print(f"{len(runs) - len(failed)} of {len(runs)} runs succeeded; see runs.csv and results.csv beside them")
    if len(failed):
        raise ValueError(f"{len(failed)} run(s) failed: {', '.join(failed.run_id)}")


def cmd_architectures(args):
    from .discover import architecture_rows, architectures_markdown

    rows = architecture_rows()
    if args.markdown:
        print(architectures_markdown(rows), end="")
        return
    header = ("model type", "expert-count key", "router scoring", "groups", "shared", "verified")
    keys = ("model_type", "experts_key", "scoring", "groups", "shared", "verified")
    supported = [r for r in rows if not r["why_not"]]
    widths = [max(len(h), *(len(r[k]) for r in supported)) for h, k in zip(header, keys)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in supported:
        print("  ".join(r[k].ljust(w) for k, w in zip(keys, widths)))
    print("\nnot supported:")
    for r in rows:
        if r["why_not"]:
            print(f"  {r['model_type']}: {r['why_not']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reapkit", description="Observe, score and prune the experts of MoE language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("model", help="model folder or hub name; `demo` for the bundled demo model")
        p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")

    p = sub.add_parser("observe", help="record per-expert statistics over calibration data")
    model_args(p)
    p.add_argument("--data", help="calibration spec, e.g. code:128,prose:64 or tokens.jsonl (default: the built-in mix)")
    p.add_argument("--out", required=True, help="observations folder to write")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_observe)

    p = sub.add_parser("combine", help="add observations of the same model made on different data shards")
    p.add_argument("observations", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("scores", help="expert saliency from saved observations")
    p.add_argument("observations")
    p.add_argument("--criterion", default="reap")
    p.add_argument("--csv", help="write the tidy table (layer, expert, domain, value) here")
    p.set_defaults(func=cmd_scores)

    p = sub.add_parser("prune", help="remove the lowest-scoring experts and save a stock checkpoint")
    model_args(p)
    p.add_argument("--observations", required=True)
    p.add_argument("--criterion", default="reap")
    p.add_argument("--ratio", type=float, default=0.25, help="fraction of each layer's experts to remove")
    p.add_argument("--keep", type=int, help="experts to keep per layer (instead of --ratio)")
    p.add_argument("--domains", help="comma-separated calibration domains to score on (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("demo", help="run the notebooks on the bundled demo model and write figures")
    p.add_argument("--figures", default="figures")
    p.add_argument("--runs", default="runs/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="execute a notebook over a parameter grid with papermill")
    p.add_argument("params", help="sweep YAML file")
    p.add_argument("--jobs", type=int)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("architectures", help="list the MoE model types of transformers and which reapkit supports")
    p.add_argument("--markdown", action="store_true", help="print the README's table")
    p.set_defaults(func=cmd_architectures)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        message = error.args[0] if error.args else str(error)
        print(f"reapkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0
