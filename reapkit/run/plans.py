"""Plans on the command line: make one, read one, check it against the model, apply it.

    reapkit plan runs/obs --criterion reap --ratio 0.25 --out plan.json
    reapkit prune MODEL --plan plan.json --out pruned/              # also a plan from `reapkit import llm-compressor`
    reapkit evaluate MODEL --plan plan.json --tasks T1,T2           # masked in memory, scored by lm-eval
    reapkit merge MODEL --observations runs/obs --method hc_smoe --keep 8 --out merged/

A pruning plan (`reapkit.select.plan.PruningPlan`) says which experts stay; `prune` removes the
others and `evaluate` masks them. A merge plan (`reapkit.select.merge.MergePlan`) says which experts
are averaged into one; only `merge` applies it (and `evaluate` scores it), and it writes the merged
checkpoint with its `merge_plan.json`, which `merge --plan` applies again. Every plan is checked
against the model before any work: its MoE layers and expert counts, and the router fingerprint of
the observations it was made from.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from reapkit.errors import InvalidInput, Mismatch, MissingInput
from reapkit.run.inputs import check_limit, check_model_name, check_output, from_weights, load, read_observations

__all__ = [
    "PLAN_OPTIONS",
    "MERGE_PLAN_FILE",
    "plan_from_observations",
    "check_budget_search",
    "read_plan",
    "check_fits",
    "cmd_plan",
    "cmd_prune",
    "cmd_merge",
    "cmd_evaluate",
]

#: The options that make a pruning plan from observations (attribute names of the parsed arguments).
PLAN_OPTIONS = (
    "criterion",
    "ratio",
    "keep",
    "global_budget",
    "margin",
    "domains",
    "protect_super_experts",
    "budget_search",
)
#: The options of `--budget-search evolution` (attribute names of the parsed arguments).
SEARCH_OPTIONS = ("generations", "population", "fitness", "search_data")
#: The tokens an evolutionary budget search scores its candidates on, by default (split `train`:
#: apart from the `calibration` split observations use and the `validation` split evaluations use).
SEARCH_DATA = "code:8,prose:8,tools:8,math:8"
#: The file beside a merged checkpoint that says how it was merged (`reapkit merge --plan` reads it).
MERGE_PLAN_FILE = "merge_plan.json"
DEFAULT_RATIO = 0.25
STREAM_HINT = " or prune the checkpoint folder without --device-map (it streams tensor by tensor)"


def _flags(args, names) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name, None) is not None]


def check_budget_search(args) -> str | None:
    """The --budget-search of `args` (None: none given), refused when unknown or without --global-budget,
    and the evolution options refused without `--budget-search evolution`; nothing is loaded."""
    from reapkit.select.budget import check_search

    search = getattr(args, "budget_search", None)
    if search is not None:
        check_search(search)
        if args.global_budget is None:
            raise InvalidInput(
                "--budget-search spreads a global budget; add --global-budget RATIO or drop --budget-search"
            )
    extra = _flags(args, SEARCH_OPTIONS)
    if extra and search != "evolution":
        raise InvalidInput(f"{', '.join(extra)} apply to --budget-search evolution; add it or drop them")
    if getattr(args, "fitness", None) is not None:
        from reapkit.measure.budget_search import FITNESS

        if args.fitness not in FITNESS:
            raise InvalidInput(f"unknown --fitness {args.fitness!r}; choose one of {', '.join(FITNESS)}")
    return search


def plan_from_observations(args, obs, *, model=None, tokenizer=None):
    """The `PruningPlan` the options ask for: --criterion (reap) with --ratio (0.25), --keep or
    --global-budget (same total as a uniform plan at that ratio, spread by --budget-search: global, by score,
    the default; water, water-filling; evolution, searched on `model`; --margin), scored over --domains."""
    from reapkit.select.criteria import check_ratio
    from reapkit.select.plan import PruningPlan, pruned_count

    criterion = args.criterion or "reap"
    domains = args.domains.split(",") if args.domains else None
    search = check_budget_search(args) or "global"
    if args.global_budget is None:
        if args.margin is not None:
            raise InvalidInput("--margin applies to a global budget; add --global-budget RATIO or drop --margin")
        ratio = None if args.keep is not None else (DEFAULT_RATIO if args.ratio is None else args.ratio)
        return PruningPlan.from_observations(
            obs,
            criterion,
            ratio=ratio,
            keep=args.keep,
            domains=domains,
            seed=args.seed,
            protect_super_experts=bool(getattr(args, "protect_super_experts", None)),
        )
    if getattr(args, "protect_super_experts", None):
        raise InvalidInput("--protect-super-experts applies to uniform plans (--ratio or --keep), not --global-budget")
    ratio = check_ratio(args.global_budget, "--global-budget")
    total = sum(n - pruned_count(n, ratio) for n in obs.num_experts)
    margin = args.margin or 0
    if search == "water":
        from reapkit.select.budget import water_plan

        return water_plan(obs, criterion, total=total, margin=margin, domains=domains, seed=args.seed)
    if search == "evolution":
        return _evolved_plan(
            args, obs, model, tokenizer, criterion=criterion, total=total, margin=margin, domains=domains
        )
    return PruningPlan.from_global_budget(obs, criterion, total=total, margin=margin, domains=domains, seed=args.seed)


def _evolved_plan(args, obs, model, tokenizer, **options):
    """The plan of `--budget-search evolution`, searched on `model` over --search-data (split train)."""
    if model is None:
        raise InvalidInput(
            "--budget-search evolution scores plans on the model; use it with `reapkit prune MODEL --observations OBS "
            "--global-budget R --budget-search evolution`, or choose --budget-search water"
        )
    from reapkit.data import calibration_batches
    from reapkit.measure.budget_search import evolve_counts
    from reapkit.observe.observations import fingerprint_differences

    diff = fingerprint_differences(obs.meta["fingerprint"], model)
    if diff:
        raise Mismatch(
            f"the observations were made on a different model (differences: {diff}); observe this model first"
        )
    batches = calibration_batches(
        args.search_data or SEARCH_DATA, tokenizer, batch_size=8, max_length=128, split="train", seed=args.seed,
        vocab_size=model.get_input_embeddings().num_embeddings,
    )  # fmt: skip
    search = evolve_counts(
        model, obs, batches, options["criterion"], total=options["total"], margin=options["margin"],
        domains=options["domains"], fitness=args.fitness or "kl", generations=args.generations or 8,
        population=args.population or 8, seed=args.seed,
    )  # fmt: skip
    return search.plan(obs, domains=options["domains"], seed=args.seed)


def read_plan(path):
    """The `PruningPlan` or `MergePlan` saved at `path`, told apart by the format the file declares."""
    from reapkit.select.merge import FORMAT as MERGE_FORMAT
    from reapkit.select.merge import MergePlan
    from reapkit.select.plan import FORMAT as PLAN_FORMAT
    from reapkit.select.plan import PruningPlan

    path = Path(path)
    if path.is_dir():
        raise InvalidInput(
            f"plan {path} is a folder; pass the plan file in it (pruning_plan.json or {MERGE_PLAN_FILE})"
        )
    if not path.is_file():
        raise MissingInput(
            f"plan {path} does not exist; write one with `reapkit plan` or `reapkit import llm-compressor`"
        )
    try:
        declared = json.loads(path.read_text()).get("format")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        declared = None
    kinds = {PLAN_FORMAT: PruningPlan, MERGE_FORMAT: MergePlan}
    if declared not in kinds:
        raise InvalidInput(
            f"{path} is not a reapkit plan (its format is not {PLAN_FORMAT!r} or {MERGE_FORMAT!r}); write one "
            f"with `reapkit plan` or `reapkit import llm-compressor`, or use the {MERGE_PLAN_FILE} of `reapkit merge`"
        )
    return kinds[declared].load(path)


def check_fits(model, plan) -> None:
    """Refuse a plan made for another model: its MoE layers and expert counts, and the router
    fingerprint of the observations it was made from (plans imported without the model carry none)."""
    from reapkit.compress.prune import check_plan
    from reapkit.observe.observations import fingerprint_differences
    from reapkit.select.merge import MergePlan

    pruning = plan.to_pruning_plan() if isinstance(plan, MergePlan) else plan
    check_plan(model, pruning)
    expected = pruning.provenance.get("observations")
    if not expected:
        return
    diff = fingerprint_differences(expected, model)
    if diff:
        raise Mismatch(
            f"the plan was made from observations of a different model (differences, plan vs model: {diff}); "
            "plan again from observations of this model, or load it as it was observed (same --dtype)"
        )


def _plan_of(args, *, required: bool, merges: bool):
    """The plan of --plan, or the one --observations and the plan options make; None when neither is given
    and none is `required`. Refused before the model loads: both given, or a merge plan where none applies."""
    from reapkit.observe.observations import Observations
    from reapkit.select.merge import MergePlan

    options = _flags(args, PLAN_OPTIONS)
    if args.plan is not None:
        extra = (["--observations"] if args.observations else []) + options
        if extra:
            raise InvalidInput(f"--plan is a finished plan; drop {', '.join(extra)} (or drop --plan to plan anew)")
        plan = read_plan(args.plan)
        if isinstance(plan, MergePlan) and not merges:
            raise InvalidInput(
                f"{args.plan} is a merge plan; merge with `reapkit merge {args.model} --plan {args.plan} --out DIR`"
            )
        return plan
    if args.observations is None and from_weights(args.criterion):  # aimer: scored from the model's own weights
        plan = plan_from_observations(args, read_observations(args.model, args.criterion))
        plan.provenance["source_model"] = args.model
        return plan
    if args.observations is None:
        if required:
            raise InvalidInput("give --observations OBS (with --criterion, --ratio, ...) or --plan plan.json")
        if options:
            raise InvalidInput(f"{', '.join(options)} make a plan; add --observations OBS, or give --plan plan.json")
        return None
    plan = plan_from_observations(args, Observations.load(args.observations))  # a bad ratio stops here
    plan.provenance["source_model"] = args.model
    return plan


def _refuse_offloaded(model, command: str, hint: str = "") -> None:
    if any(p.device.type == "meta" for p in model.parameters()):
        raise InvalidInput(
            f"{command} cannot change weights offloaded to disk; give --max-memory room for the whole model{hint}"
        )


def _kept(plan) -> dict:
    return {layer: len(kept) for layer, kept in plan.kept.items()}


def cmd_plan(args):
    check_output(args.out, args.force, args.observations, file=True)
    plan = plan_from_observations(args, read_observations(args.observations, args.criterion))
    plan.save(args.out)
    search = plan.provenance.get("budget_search", "global")
    how = f"a global budget of {plan.total_kept} experts, {search}" if args.global_budget is not None else "per layer"
    print(
        f"planned with {plan.criterion} ({how}): experts per layer {plan.num_experts} -> {_kept(plan)} -> {args.out} "
        "(apply it with `reapkit prune MODEL --plan` or `reapkit evaluate MODEL --plan`)"
    )


def cmd_prune(args):
    if str(args.model).endswith(".gguf"):  # a GGUF file: sliced byte for byte, no model built (reapkit.compress.gguf)
        from reapkit.compress.gguf import prune_command

        return print(
            prune_command(
                args,
                lambda obs: plan_from_observations(args, obs) if obs else _plan_of(args, required=True, merges=False),
            )
        )
    start = time.perf_counter()
    check_output(args.out, args.force, args.model, args.observations, args.plan)
    check_model_name(args.model)
    if check_budget_search(args) == "evolution":  # the search needs the model: load it, then plan
        return _prune_searched(args, start)
    plan = _plan_of(args, required=True, merges=False)
    streaming = Path(args.model).is_dir() and not args.in_memory and args.device_map is None
    note = ""
    if streaming:  # a local checkpoint folder: tensor by tensor, the model is never built (the plan is checked first)
        from reapkit.compress.stream import stream_prune

        if args.dtype != "auto":
            raise InvalidInput(
                f"streaming prune keeps the stored dtypes, so --dtype {args.dtype} does nothing; "
                "drop it, or add --in-memory to load, convert and save the model"
            )
        stream_prune(args.model, plan, args.out, force=args.force)
    else:
        from reapkit.compress.prune import remove_experts, save_non_uniform

        model, tokenizer = load(args)
        _refuse_offloaded(model, "prune", STREAM_HINT)
        check_fits(model, plan)
        remove_experts(model, plan)
        save_non_uniform(model, plan, args.out, tokenizer=tokenizer, force=args.force)  # a uniform plan: stock
        if not plan.is_uniform:
            note = "; per-layer expert counts: load it with reapkit.compress.prune.load_pruned"
    how = "streamed tensor by tensor" if streaming else "in memory"
    print(
        f"pruned with {plan.criterion} ({how}): experts per layer {plan.num_experts} -> {_kept(plan)}; "
        f"saved to {args.out} in {time.perf_counter() - start:.1f}s{note}"
    )


def _prune_searched(args, start):
    """`prune --budget-search evolution`: load the model, search the per-layer counts on it, remove and save."""
    from reapkit.compress.prune import remove_experts, save_non_uniform
    from reapkit.observe.observations import Observations

    if args.plan is not None or args.observations is None:
        raise InvalidInput("--budget-search evolution plans from observations; give --observations OBS, not --plan")
    obs = Observations.load(args.observations)
    model, tokenizer = load(args)
    _refuse_offloaded(model, "prune", STREAM_HINT)
    plan = plan_from_observations(args, obs, model=model, tokenizer=tokenizer)
    plan.provenance["source_model"] = args.model
    check_fits(model, plan)
    remove_experts(model, plan)
    save_non_uniform(model, plan, args.out, tokenizer=tokenizer, force=args.force)
    name, value = next(iter(plan.provenance["fitness"].items()))
    print(
        f"pruned with {plan.criterion} (a global budget of {plan.total_kept} experts, searched by evolution, "
        f"{name} {value:.3f} on the search tokens): experts per layer {plan.num_experts} -> {_kept(plan)}; saved to {args.out} "
        f"in {time.perf_counter() - start:.1f}s; load it with reapkit.compress.prune.load_pruned"
    )


def _merge_plan(args, model):
    """The `MergePlan` of --plan (checked against `model`), or the one --observations, --method and --keep / --ratio make."""
    from reapkit.observe.observations import Observations
    from reapkit.select.merge import MergePlan, plan_merge
    from reapkit.select.plan import pruned_count

    if args.plan is not None:
        plan = read_plan(args.plan)
        if not isinstance(plan, MergePlan):
            raise InvalidInput(f"{args.plan} is a pruning plan; apply it with `reapkit prune {args.model} --plan`")
        check_fits(model, plan)
        return plan
    obs = Observations.load(args.observations)
    keep = args.keep
    if keep is None:
        counts = {n - pruned_count(n, args.ratio) for n in obs.num_experts}
        if len(counts) > 1:
            raise InvalidInput(
                f"the MoE layers have different numbers of experts ({obs.num_experts}), and merging reduces every "
                "layer to one count; give --keep N instead of --ratio"
            )
        keep = counts.pop()
    plan = plan_merge(  # checks obs against the model
        model,
        obs,
        method=args.method,
        keep=keep,
        seed=args.seed,
        rule=args.rule,
        align=args.align,
        options=merge_options(args.option),
    )
    plan.provenance["source_model"] = args.model
    return plan


def merge_options(given) -> dict:
    """``--option NAME=VALUE`` as a dict; VALUE read as JSON (``16``, ``null``, ``"blocks"``), else as text."""
    import json

    options = {}
    for item in given or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidInput(f"--option {item!r}: write NAME=VALUE, e.g. --option group_size=8")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value
    return options


def _check_merge_options(args) -> None:
    from reapkit.select.criteria import check_ratio
    from reapkit.select.merge import METHODS
    from reapkit.select.merge_methods import check_rule

    making = _flags(args, ("method", "keep", "ratio", "rule", "align", "option"))
    if args.plan is not None:
        if args.observations or making:
            extra = (["--observations"] if args.observations else []) + making
            raise InvalidInput(f"--plan is a finished merge plan; drop {', '.join(extra)}")
        return
    if args.observations is None:
        raise InvalidInput("give --observations OBS with --method and --keep (or --ratio), or --plan merge_plan.json")
    if args.method not in METHODS:
        given = f"--method {args.method}" if args.method else "no --method"
        raise InvalidInput(f"{given}: choose one of {', '.join(METHODS)}")
    if args.rule is not None:
        check_rule(METHODS[args.method], args.rule)
    if args.keep is None and args.ratio is None:
        raise InvalidInput("say how many experts each layer keeps: --keep N or --ratio R (the fraction merged away)")
    if args.ratio is not None:
        check_ratio(args.ratio)


def cmd_merge(args):
    from reapkit.atomic import atomic_directory
    from reapkit.compress.merge import apply_merge
    from reapkit.compress.prune import save_non_uniform, save_pruned

    start = time.perf_counter()
    check_output(args.out, args.force, args.model, args.observations, args.plan)
    check_model_name(args.model)
    _check_merge_options(args)
    model, tokenizer = load(args)
    _refuse_offloaded(model, "merge")
    plan = _merge_plan(args, model)
    apply_merge(model, plan)
    pruning = plan.to_pruning_plan()
    save = save_pruned if pruning.is_uniform else save_non_uniform  # per-layer counts: reapkit's own format
    with atomic_directory(args.out, force=args.force) as tmp:  # the checkpoint and how it was merged, together
        save(model, pruning, tmp, tokenizer=tokenizer, force=True)
        if pruning.is_uniform:
            (tmp / "pruning_plan.json").unlink()  # it would prune, not merge, if applied again
        plan.save(tmp / MERGE_PLAN_FILE)
    note = "; a stock config.json cannot say per-layer counts, so it is saved in reapkit's per-layer format: "
    note = "" if pruning.is_uniform else f"{note}load it with reapkit.compress.prune.load_pruned (vLLM: its plugin)"
    print(
        f"merged with {plan.method} (rule {plan.rule}{', aligned' if plan.align else ''}): experts per layer "
        f"{plan.num_experts} -> {plan.kept_per_layer}; saved to {args.out} (with {MERGE_PLAN_FILE}) in "
        f"{time.perf_counter() - start:.1f}s{note}"
    )


def cmd_evaluate(args):
    import tempfile

    from reapkit.measure.harness import SCRATCH, task_folder

    check_limit(args.limit)  # before the demo suite is written or lm-eval is imported
    with tempfile.TemporaryDirectory(prefix=SCRATCH) as scratch:
        _evaluate(args, task_folder(args.include_path, scratch))


def _merge_columns(plan, router: str = "representative") -> dict:
    """The results-schema columns of scores of a merged model: method "merge", the merge method as criterion
    (labelled ``METHOD:tied`` when evaluated with the router tied)."""
    from reapkit.measure.harness import provenance_columns
    from reapkit.measure.schema import CRITERION, LABEL, METHOD

    label = plan.method if router == "representative" else f"{plan.method}:{router}"
    return {**provenance_columns(plan.to_pruning_plan()), METHOD: "merge", CRITERION: plan.method, LABEL: label}


def _evaluate(args, include_path):
    from reapkit.errors import MissingDependency
    from reapkit.measure.harness import find_tasks, lm_eval, offline
    from reapkit.select.merge import MergePlan

    limit = check_limit(args.limit)
    if args.out:
        check_output(args.out, args.force, args.model, args.observations, args.plan, args.include_path, file=True)
    check_model_name(args.model)
    plan = _plan_of(args, required=False, merges=True)  # a bad ratio or criterion stops here, before the model loads
    if getattr(args, "router", None) and not isinstance(plan, MergePlan):
        raise InvalidInput("--router applies to a merge plan; give --plan merge_plan.json, or drop --router")
    try:
        with offline():
            manager = find_tasks(args.tasks.split(","), include_path)  # unknown tasks stop here too
    except ImportError as error:  # the optional `eval` extra is not installed: one line, with the command
        raise MissingDependency(str(error)) from None
    model, tokenizer = load(args)
    columns = {}
    if plan is not None:
        check_fits(model, plan)
    if isinstance(plan, MergePlan):
        from reapkit.compress.merge import apply_merge

        _refuse_offloaded(model, "merge")
        router = args.router or plan.router
        apply_merge(model, plan, router=router)  # this process's copy of the model only; nothing is written
        plan, columns = None, _merge_columns(plan, router)
    start = time.perf_counter()
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
    ).assign(**columns, model=args.model)
    shown = rows[["criterion", "ratio", "domain", "metric", "value", "stderr"]].rename(columns={"domain": "task"})
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        from reapkit.atomic import atomic_write_text

        atomic_write_text(args.out, rows.to_csv(index=False))
    print(
        f"scored {len(rows)} metric(s) in {time.perf_counter() - start:.1f}s"
        + (f"; wrote them to {args.out}" if args.out else "")
    )
