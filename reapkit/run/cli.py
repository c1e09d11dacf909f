"""The `reapkit` command line (also `python -m reapkit`).

reapkit observe MODEL --data code:128,tools:64 --out runs/obs
reapkit combine runs/obs-shard0 runs/obs-shard1 --out runs/obs      # observations add up
reapkit scores runs/obs --criterion reap --csv scores.csv
reapkit prune MODEL --observations runs/obs --criterion reap --ratio 0.25 --out pruned/
reapkit prune MODEL_DIR ... --out pruned/     # a local folder streams shard by shard (--in-memory to load)
reapkit import reap-observer observations.pt --out runs/imported   # saliency from other tools
reapkit evaluate MODEL --observations runs/obs --ratio 0.5 --tasks T1,T2 --include-path tasks/   # lm-eval, in memory
reapkit demo                      # notebooks on the bundled demo model, figures in figures/
reapkit sweep sweeps/study.yaml   # papermill runs over a parameter grid
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from reapkit.atomic import check_new_output, check_separate, terminate_as_interrupt
from reapkit.model.loading import load_model
from reapkit.run.plugins import load_plugins


def _check_output(out, force: bool, *inputs, file: bool = False) -> None:
    """Before any work: the output is new (or --force), writable, and apart from every input; with `file`,
    not an existing folder (a file cannot replace one)."""
    check_separate(out, *inputs, what="output")
    check_new_output(out, force=force)
    if file and Path(out).is_dir():
        raise ValueError(
            f"output {out} is a folder; this command writes one file: give a file path inside or beside it"
        )


def _check_model_name(name: str) -> None:
    path = Path(name).expanduser()
    if name == "demo":
        return
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{name} is not a model folder (no config.json in it); pass a folder written by "
                "save_pretrained, a hub name (org/name) or `demo`"
            )
    elif name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise FileNotFoundError(
            f"model folder {name} does not exist; check the path, or pass a hub name (org/name) or `demo`"
        )


def _load(args, device="cpu"):
    """`load_model` with the placement options (--device-map, --max-memory, --offload-folder), and one clear
    line for a path that is no model or a hub name that cannot be fetched."""
    from reapkit.model.loading import parse_max_memory

    _check_model_name(args.model)
    try:
        return load_model(
            args.model,
            dtype=args.dtype,
            device=device,
            device_map=args.device_map,
            max_memory=parse_max_memory(args.max_memory),
            offload_folder=args.offload_folder,
        )
    except OSError as error:
        if isinstance(error, (FileNotFoundError, PermissionError)) and getattr(error, "filename", None):
            raise
        offline = (
            " (HF_HUB_OFFLINE is set, so nothing is downloaded)"
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
            else ""
        )
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot load model {args.model!r} from a local folder or the Hugging Face hub{offline}: {reason} "
            "Pass a local checkpoint folder, `demo`, or a hub name you can download"
        ) from None


def cmd_observe(args):
    import torch

    from reapkit.data import DEFAULT_SPEC, calibration_batches, parse_spec
    from reapkit.model.loading import load_tokenizer, resolve_name
    from reapkit.observe.distributed import all_reduce_observations, local_device, my_share, process_group
    from reapkit.observe.recorder import observe
    from reapkit.observe.resume import ObserveCheckpoint

    args.data = DEFAULT_SPEC if args.data is None else args.data
    items = parse_spec(args.data)  # a bad spec is refused before the model loads
    if args.sequential and (args.device_map or args.max_memory or args.offload_folder):
        raise ValueError(
            "--sequential loads one layer at a time onto --device; drop --device-map, --max-memory and --offload-folder"
        )
    if not args.sequential and (args.group_size is not None or args.spill_dir):
        raise ValueError("--group-size and --spill-dir only apply to layer-by-layer calibration; add --sequential")
    resumable = bool(args.checkpoint_every or args.resume)
    if resumable and args.sequential:
        raise ValueError("--checkpoint-every and --resume apply to in-memory observe; drop them or drop --sequential")
    if args.statistics and args.sequential:
        raise ValueError("--statistics applies to in-memory observe for now; drop it or drop --sequential")
    _check_output(args.out, args.force, args.model, *(i.source for i in items if i.kind != "builtin"))
    checkpoint = ObserveCheckpoint(f"{args.out}.checkpoint", every=args.checkpoint_every, resume=args.resume)
    checkpoint.check()
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
            raise ValueError(
                "--checkpoint-every and --resume run in one process; under torchrun, shard the data "
                "and `reapkit combine` the shards instead"
            )
        if args.sequential:
            from transformers import AutoConfig

            from reapkit.observe.sequential import checkpoint_shards, observe_sequential

            folder = resolve_name(args.model)
            checkpoint_shards(folder)  # a folder without safetensors stops here, before any work
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
            model, tokenizer = _load(args, device)
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
                checkpoint=checkpoint if resumable else None,
            )
        obs = all_reduce_observations(obs, batches)
        if rank == 0:
            obs.save(args.out, force=args.force)
            checkpoint.remove()
            tokens = sum(obs.meta["calibration"]["tokens"].values())
            print(
                f"observed {tokens} tokens in {len(obs.domains)} domain(s) {obs.domains} over {len(obs.layers)} MoE layers"
                f"{f' in {world} processes' if world > 1 else ''} -> {args.out}"
            )


def cmd_combine(args):
    from functools import reduce

    from reapkit.observe.observations import Observations

    _check_output(args.out, args.force, *args.observations)
    total = reduce(lambda a, b: a + b, [Observations.load(path) for path in args.observations])
    total.save(args.out, force=args.force)
    tokens = {d: int(total.stats[d]["tokens"][0]) for d in total.domains}
    print(f"combined {len(args.observations)} observations: tokens per domain {tokens} -> {args.out}")


def cmd_scores(args):
    from reapkit.observe.observations import Observations
    from reapkit.select.criteria import scores_frame

    check_separate(args.csv, args.observations, what="--csv")
    obs = Observations.load(args.observations)
    frame = scores_frame(obs, [args.criterion])[["layer", "expert", "domain", "value"]]
    if args.csv:
        from reapkit.atomic import atomic_write_text

        atomic_write_text(args.csv, frame.to_csv(index=False))
        print(f"wrote {len(frame)} rows to {args.csv}")
    pooled = frame[frame.domain == "all"].pivot(index="layer", columns="expert", values="value")
    print(f"{args.criterion} scores (pooled over {obs.domains}), layers x experts:")
    print(pooled.round(4).to_string())


def _plan(args, obs):
    from reapkit.select.plan import PruningPlan

    domains = args.domains.split(",") if args.domains else None
    return PruningPlan.from_observations(
        obs,
        args.criterion,
        ratio=args.ratio if args.keep is None else None,
        keep=args.keep,
        domains=domains,
        seed=args.seed,
    )


def cmd_prune(args):
    from reapkit.observe.observations import Observations

    start = time.perf_counter()
    _check_output(args.out, args.force, args.model, args.observations)
    _check_model_name(args.model)
    obs = Observations.load(args.observations)
    plan = _plan(args, obs)  # a bad ratio, criterion or domain is refused before the model loads
    plan.provenance["source_model"] = args.model
    streaming = Path(args.model).is_dir() and not args.in_memory and args.device_map is None
    if streaming:  # a local checkpoint folder: tensor by tensor, the model is never built
        from reapkit.compress.stream import stream_prune

        if args.dtype != "auto":
            raise ValueError(
                f"streaming prune keeps the stored dtypes, so --dtype {args.dtype} does nothing; "
                "drop it, or add --in-memory to load, convert and save the model"
            )
        stream_prune(args.model, plan, args.out, force=args.force)
    else:
        from reapkit.compress.prune import remove_experts, save_pruned

        model, tokenizer = _load(args)
        if any(p.device.type == "meta" for p in model.parameters()):
            raise ValueError(
                "prune cannot slice weights offloaded to disk; give --max-memory room for the whole model "
                "or prune the checkpoint folder without --device-map (it streams tensor by tensor)"
            )
        obs.check_model(model)
        remove_experts(model, plan)
        save_pruned(model, plan, args.out, tokenizer=tokenizer, force=args.force)
    kept = {layer: len(k) for layer, k in plan.kept.items()}
    how = "streamed tensor by tensor" if streaming else "in memory"
    print(
        f"pruned with {plan.criterion} ({how}): experts per layer {plan.num_experts} -> {kept}; "
        f"saved to {args.out} in {time.perf_counter() - start:.1f}s"
    )


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
        raise ValueError(f"{', '.join(misplaced)} does not apply to `reapkit import {args.format}`; drop it")
    if not reap_observer and (args.model is None) == (args.num_experts is None):
        raise ValueError(
            "an llm-compressor report does not say how many experts each layer had; "
            "pass --model MODEL (also checks the layers) or --num-experts N, one of the two"
        )
    _check_output(args.out, args.force, args.file, *([args.model] if args.model else []), file=not reap_observer)
    model = _load(args)[0] if args.model else None
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
    print(f"imported a plan keeping {kept} of {plan.num_experts} experts per layer -> {args.out}")


def cmd_evaluate(args):
    from reapkit.measure.harness import SCRATCH, task_folder

    with tempfile.TemporaryDirectory(prefix=SCRATCH) as scratch:
        _evaluate(args, task_folder(args.include_path, scratch))


def _evaluate(args, include_path):
    from reapkit.measure.harness import find_tasks, lm_eval, offline

    if args.out:
        _check_output(args.out, args.force, args.model, args.observations, args.include_path, file=True)
    _check_model_name(args.model)
    plan = obs = None
    if args.observations:
        from reapkit.observe.observations import Observations

        obs = Observations.load(args.observations)
        args.criterion = args.criterion or "reap"
        args.ratio = 0.25 if args.ratio is None and args.keep is None else args.ratio
        plan = _plan(args, obs)  # a bad ratio or criterion stops here, before the model loads
        plan.provenance["source_model"] = args.model
    elif args.criterion or args.ratio is not None or args.keep is not None or args.domains:
        raise ValueError("--criterion, --ratio, --keep and --domains make a plan; add --observations OBS to prune")
    try:
        with offline():
            manager = find_tasks(args.tasks.split(","), include_path)  # unknown tasks stop here too
    except ImportError as error:  # the optional `eval` extra is not installed: one line, with the command
        raise ValueError(str(error)) from None
    model, tokenizer = _load(args)
    if obs is not None:
        obs.check_model(model)
    start = time.perf_counter()
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    rows = lm_eval(
        model,
        plan,
        args.tasks.split(","),
        tokenizer=tokenizer,
        include_path=include_path,
        limit=limit,
        batch_size=args.batch_size,
        task_manager=manager,
        num_fewshot=args.num_fewshot,
    ).assign(model=args.model)
    shown = rows[["criterion", "ratio", "domain", "metric", "value", "stderr"]].rename(columns={"domain": "task"})
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        from reapkit.atomic import atomic_write_text

        atomic_write_text(args.out, rows.to_csv(index=False))
    print(
        f"scored {len(rows)} metric(s) in {time.perf_counter() - start:.1f}s"
        + (f"; wrote them to {args.out}" if args.out else "")
    )


def cmd_demo(args):
    from reapkit.run.sweep import run_demo

    run_demo(figures_dir=args.figures, runs_dir=args.runs)


def cmd_sweep(args):
    import yaml

    from reapkit.run.sweep import run_sweep

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected PARAMETER=VALUE (VALUE in YAML, e.g. ratios=[0.5])")
        overrides[key] = yaml.safe_load(value)
    runs = run_sweep(args.params, jobs=args.jobs, overrides=overrides, limit=args.limit, resume=args.resume)
    failed = runs[runs.status != "ok"]
    print(f"{len(runs) - len(failed)} of {len(runs)} runs succeeded; see runs.csv and results.csv beside them")
    if len(failed):
        raise ValueError(
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


def placement_args(p):
    """--device-map, --max-memory, --offload-folder: accelerate's big-model loading."""
    p.add_argument("--device-map", help="load straight onto devices: auto, balanced, cpu, cuda:0, ... (accelerate)")
    p.add_argument("--max-memory", help="with --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    p.add_argument("--offload-folder", help="with --device-map: weights that fit on no device are offloaded here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reapkit", description="Observe, score and prune the experts of MoE language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("model", help="model folder or hub name; `demo` for the bundled demo model")
        p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")

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
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="save the running statistics to OUT.checkpoint every N batches (resumable with --resume)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.checkpoint")
    p.add_argument(
        "--statistics",
        nargs="+",
        metavar="NAME",
        help="optional statistics to record besides the defaults, e.g. coselect output_sum, or all",
    )
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
    p.add_argument(
        "--in-memory",
        action="store_true",
        help="load the whole model to prune it (default for a local folder: stream its safetensors "
        "tensor by tensor, never building the model; hub names and `demo` always load)",
    )
    placement_args(p)
    p.set_defaults(func=cmd_prune)

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
    p.add_argument("--force", action="store_true", help="replace an existing output")
    placement_args(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "evaluate", help="score the model, or a plan masked into it, with lm-evaluation-harness (no checkpoint written)"
    )
    model_args(p)
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument(
        "--include-path",
        help="folder of lm-eval task YAML files, where --tasks are looked up; demo: reapkit's demo suite "
        "(reapkit_heldout, reapkit_continuation); default: lm-eval's own tasks",
    )
    p.add_argument("--observations", help="observations to make the plan from (none: the unpruned model)")
    p.add_argument("--criterion", help="criterion of the plan (default with --observations: reap)")
    p.add_argument("--ratio", type=float, help="fraction of each layer's experts to remove (default 0.25)")
    p.add_argument("--keep", type=int, help="experts to keep per layer (instead of --ratio)")
    p.add_argument("--domains", help="comma-separated calibration domains to score on (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=float, help="documents per task (below 1: a fraction of them)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per document (default: each task's own)")
    p.add_argument("--out", help="write the results rows (CSV) here")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    placement_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="run the notebooks on the bundled demo model and write figures")
    p.add_argument("--figures", default="figures")
    p.add_argument("--runs", default="runs/demo")
    p.set_defaults(func=cmd_demo)

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
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("architectures", help="list the MoE model types of transformers and which reapkit supports")
    p.add_argument("--markdown", action="store_true", help="print the README's table")
    p.set_defaults(func=cmd_architectures)
    for p in sub.choices.values():
        p.add_argument(
            "--plugin",
            action="append",
            default=[],
            metavar="MODULE_OR_FILE",
            help="import this module or .py file first (it may register criteria or architectures)",
        )
    return parser


_DISK_FULL = (errno.EFBIG, errno.ENOSPC, errno.EDQUOT)


def user_error(error: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (shown with its traceback)."""
    text = str(error.args[0]) if isinstance(error, (ValueError, OSError)) and len(error.args) == 1 else str(error)
    if type(error).__name__ == "SafetensorError" or (isinstance(error, OSError) and error.errno in _DISK_FULL):
        if isinstance(error, OSError) or any(
            k in text for k in ("FileTooLarge", "StorageFull", "No space", "File too large")
        ):
            where = f" {error.filename}" if getattr(error, "filename", None) else ""
            return (
                f"could not write{where}: the disk is full or a file-size limit (ulimit -f) was reached; "
                "free space or write elsewhere and run again (nothing half-written was left)"
            )
        return None
    if isinstance(error, OSError) and error.strerror and len(error.args) != 1:
        return (
            f"{error.strerror}: {error.filename or ''}; check that the path exists and that you may read / write it"
        ).replace(": ;", ";")
    if isinstance(error, (ValueError, OSError)):
        return " ".join(text.split("\n"))
    return None


def _release_quietly(error: BaseException) -> None:
    """Free the frames an interrupt cut short, and with them objects it left half-built (e.g. a progress
    bar stopped inside its constructor), without the noise their finalisers print ("Exception ignored")."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        while error is not None:
            error.__traceback__, error = None, error.__context__
        gc.collect()
    finally:
        sys.unraisablehook = hook


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = terminate_as_interrupt()  # SIGTERM cleans up like Ctrl-C: temporary outputs are removed
    try:
        load_plugins(args.plugin)
        args.func(args)
    except KeyboardInterrupt as error:
        reason = str(error) or "Ctrl-C"
        _release_quietly(error)
        print(
            f"reapkit {args.command}: interrupted ({reason}); outputs not finished were removed, "
            "nothing half-written is left",
            file=sys.stderr,
        )
        return 130
    except Exception as error:
        message = user_error(error)
        if message is None:
            raise
        print(f"reapkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
