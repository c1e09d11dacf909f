"""The commands that record, read and report: observe, combine, scores, import, demo, sweep, architectures.

    >>> from reapkit.run.parser import build_parser
    >>> cmd_scores(build_parser().parse_args(["scores", "runs/obs", "--csv", "scores.csv"]))   # reapkit scores ...
    wrote 320 rows to scores.csv
    reap scores (pooled over ['code', 'math', 'prose', 'tools']), layers x experts:
    ...

Each `cmd_<name>(args)` takes the parsed arguments of `reapkit <name>` (`reapkit.run.parser`),
checks them before any work and prints one summary line. The commands that make and apply plans
are in `reapkit.run.plans`.
"""

from __future__ import annotations

from reapkit.atomic import check_separate
from reapkit.errors import InvalidInput, SweepError
from reapkit.run.inputs import check_output, load

__all__ = [
    "cmd_observe",
    "cmd_combine",
    "cmd_scores",
    "cmd_import",
    "cmd_demo",
    "cmd_sweep",
    "cmd_architectures",
    "PARTIAL_SUFFIX",
]

#: Where `observe --save-every` keeps its running sums: OUT.partial beside the output.
PARTIAL_SUFFIX = ".partial"


def _check_observe_options(args) -> bool:
    """Refuse options that do not go together; returns whether the run saves partial observations."""
    if args.sequential and (args.device_map or args.max_memory or args.offload_folder):
        raise InvalidInput(
            "--sequential loads one layer at a time onto --device; drop --device-map, --max-memory and --offload-folder"
        )
    if not args.sequential and (args.group_size is not None or args.spill_dir):
        raise InvalidInput("--group-size and --spill-dir only apply to layer-by-layer calibration; add --sequential")
    resumable = bool(args.save_every or args.resume)
    if resumable and args.sequential:
        raise InvalidInput("--save-every and --resume apply to in-memory observe; drop them or drop --sequential")
    if getattr(args, "all_token_outputs", False):
        args.statistics = [*(args.statistics or []), "all_output_sum"]
    if args.statistics and args.sequential:
        flag = "--statistics" if args.statistics != ["all_output_sum"] else "--all-token-outputs"
        raise InvalidInput(f"{flag} applies to in-memory observe for now; drop it or drop --sequential")
    return resumable


def cmd_observe(args):
    import torch

    from reapkit.data import DEFAULT_SPEC, calibration_batches, parse_spec
    from reapkit.model.demo import resolve_name
    from reapkit.model.loading import load_tokenizer
    from reapkit.observe.distributed import all_reduce_observations, local_device, my_share, process_group
    from reapkit.observe.recorder import observe
    from reapkit.observe.resume import PartialObservations

    args.data = DEFAULT_SPEC if args.data is None else args.data
    items = parse_spec(args.data)  # a bad spec is refused before the model loads
    resumable = _check_observe_options(args)
    check_output(args.out, args.force, args.model, *(i.source for i in items if i.kind != "builtin"))
    partial = PartialObservations(f"{args.out}{PARTIAL_SUFFIX}", every=args.save_every, resume=args.resume)
    partial.check()
    device = local_device(args.device)
    settings = {
        "spec": args.data,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "device_map": args.device_map,
        "sequential": args.sequential,
    }
    gpus = args.device_map is not None and torch.cuda.is_available()  # a device-mapped model reduces over NCCL too
    with process_group("cuda" if gpus else device) as (rank, world):
        if resumable and world > 1:
            raise InvalidInput(
                "--save-every and --resume run in one process; under torchrun, shard the data "
                "and `reapkit combine` the shards instead"
            )
        if args.sequential:
            from transformers import AutoConfig

            from reapkit.model.checkpoint import Checkpoint
            from reapkit.observe.sequential import observe_sequential

            folder = resolve_name(args.model)
            Checkpoint.open(folder)  # a folder without complete safetensors shards stops here, before any work
            vocab = AutoConfig.from_pretrained(folder).get_text_config().vocab_size
            batches = calibration_batches(
                args.data,
                load_tokenizer(args.model),
                batch_size=args.batch_size,
                max_length=args.max_length,
                vocab_size=vocab,
            )
            spill = args.spill_dir and (f"{args.spill_dir}/rank-{rank}" if world > 1 else args.spill_dir)
            obs = observe_sequential(
                folder,
                my_share(batches, rank, world),
                dtype=args.dtype,
                device=device,
                group_size=args.group_size or 8,
                spill_dir=spill,
                calibration=settings,
                progress=rank == 0,
            )
        else:
            model, tokenizer = load(args, device)
            vocab = model.get_input_embeddings().num_embeddings
            batches = calibration_batches(
                args.data, tokenizer, batch_size=args.batch_size, max_length=args.max_length, vocab_size=vocab
            )
            obs = observe(
                model,
                my_share(batches, rank, world),
                statistics=args.statistics,
                calibration=settings,
                progress=rank == 0,
                partial=partial if resumable else None,
            )
        obs = all_reduce_observations(obs, batches)
        if rank == 0:
            obs.save(args.out, force=args.force)
            partial.remove()
            tokens = sum(obs.meta["calibration"]["tokens"].values())
            print(
                f"observed {tokens} tokens in {len(obs.domains)} domain(s) {obs.domains} over {len(obs.layers)} MoE layers"
                f"{f' in {world} processes' if world > 1 else ''} -> {args.out}"
            )


def cmd_combine(args):
    from functools import reduce

    from reapkit.observe.observations import Observations

    check_output(args.out, args.force, *args.observations)
    total = reduce(lambda a, b: a + b, [Observations.load(path) for path in args.observations])
    total.save(args.out, force=args.force)
    tokens = {d: int(total.stats[d]["tokens"][0]) for d in total.domains}
    print(f"combined {len(args.observations)} observations: tokens per domain {tokens} -> {args.out}")


def cmd_scores(args):
    from reapkit.run.inputs import read_observations
    from reapkit.select.criteria import scores_frame

    check_separate(args.csv, args.observations, what="--csv")
    obs = read_observations(args.observations, args.criterion)  # a model folder for aimer
    frame = scores_frame(obs, [args.criterion])[["layer", "expert", "domain", "value"]]
    if args.csv:
        from reapkit.atomic import atomic_write_text

        atomic_write_text(args.csv, frame.to_csv(index=False))
        print(f"wrote {len(frame)} rows to {args.csv}")
    pooled = frame[frame.domain == "all"].pivot(index="layer", columns="expert", values="value")
    print(f"{args.criterion} scores (pooled over {obs.domains}), layers x experts:")
    print(pooled.round(4).to_string())


def cmd_import(args):
    from reapkit.observe.importers import read_reap_observer
    from reapkit.select.imported import read_llmcompressor_report

    reap_observer = args.format == "reap-observer"
    misplaced = [
        flag
        for flag, value, allowed in (
            ("--domain", args.domain, reap_observer),
            ("--num-experts", args.num_experts, not reap_observer),
        )
        if value is not None and not allowed
    ]
    if misplaced:
        raise InvalidInput(f"{', '.join(misplaced)} does not apply to `reapkit import {args.format}`; drop it")
    if not reap_observer and (args.model is None) == (args.num_experts is None):
        raise InvalidInput(
            "an llm-compressor report does not say how many experts each layer had; "
            "pass --model MODEL (also checks the layers) or --num-experts N, one of the two"
        )
    check_output(args.out, args.force, args.file, *([args.model] if args.model else []), file=not reap_observer)
    model = load(args)[0] if args.model else None
    if reap_observer:
        obs = read_reap_observer(args.file, domain=args.domain or "calibration", model=model, top_k=args.top_k)
        obs.save(args.out, force=args.force)
        lacking = ", ".join(obs.meta["missing"]) or "nothing"
        print(
            f"imported {len(obs.layers)} MoE layers x {max(obs.num_experts)} experts (top-{obs.top_k}) as domain "
            f"{obs.domains[0]!r}; lacks {lacking} -> {args.out}"
        )
        return
    plan = read_llmcompressor_report(args.file, model=model, num_experts=args.num_experts, top_k=args.top_k)
    plan.save(args.out)
    kept = {layer: len(k) for layer, k in plan.kept.items()}
    print(
        f"imported a plan keeping {kept} of {plan.num_experts} experts per layer -> {args.out} "
        "(apply it with `reapkit prune MODEL --plan` or `reapkit evaluate MODEL --plan`)"
    )


def cmd_demo(args):
    from reapkit.run.demo import run_demo
    from reapkit.run.gallery import default_gallery_dir

    run_demo(figures_dir=args.figures, runs_dir=args.runs, gallery_dir=default_gallery_dir())


def cmd_sweep(args):
    import yaml

    from reapkit.run.sweep import run_sweep

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--set {item!r}: expected PARAMETER=VALUE (VALUE in YAML, e.g. ratios=[0.5])")
        overrides[key] = yaml.safe_load(value)
    runs = run_sweep(args.params, jobs=args.jobs, overrides=overrides, limit=args.limit, resume=args.resume)
    failed = runs[runs.status != "ok"]
    print(f"{len(runs) - len(failed)} of {len(runs)} runs succeeded; see runs.csv and results.csv beside them")
    if len(failed):
        raise SweepError(
            f"{len(failed)} run(s) failed: {', '.join(failed.run_id)}; fix them and run "
            f"`reapkit sweep {args.params} --resume` to redo only those"
        )


def cmd_architectures(args):
    from reapkit.model.discover import architecture_rows, architectures_markdown

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
