"""Score a model, or a plan applied to it in memory, with lm-evaluation-harness: no checkpoint is written.

    >>> rows = lm_eval(model, plan, ["reapkit_heldout", "reapkit_continuation"],
    ...                tokenizer=tokenizer, include_path=write_demo_tasks("runs/tasks"))
    >>> rows[["criterion", "ratio", "domain", "metric", "value", "stderr"]]
      criterion  ratio                 domain         metric   value  stderr
    0      reap    0.5        reapkit_heldout  bits_per_byte  1.9437     NaN
    1      reap    0.5   reapkit_continuation            acc  0.6250  0.1830

The plan is applied with `reapkit.compress.prune.mask_experts`, which gives the logits of the pruned
checkpoint, so the scores equal those of `save_pruned` + a stock reload. Device-mapped models (accelerate,
disk offload included) work: token ids go to `reapkit.model.loading.input_device`. The rows are the long form of
reapkit's results schema (`reapkit.study.tables`): plan provenance, `domain` = the lm-eval task, `metric`,
`value`, `stderr` and the normal 95% interval `value_lo` / `value_hi` (value +- 1.96 stderr, where lm-eval
gives a stderr). `reapkit.measure.schema.wide_results` turns them into the columns the figures read.

lm-eval is an optional extra (`pip install -e '.[eval]'`); this module imports it on first use.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

from reapkit.errors import InvalidInput, MissingDependency, MissingInput
from reapkit.measure.schema import (
    CRITERION,
    DOMAIN,
    LABEL,
    METHOD,
    METRIC,
    RATIO,
    SEED,
    STDERR,
    UNPRUNED,
    VALUE,
    hi,
    lo,
)

__all__ = [
    "lm_eval",
    "lm_eval_plans",
    "find_tasks",
    "offline",
    "result_rows",
    "write_demo_tasks",
    "task_folder",
    "DEMO_TASKS",
    "DEMO_SUITE",
    "INSTALL_HINT",
]

INSTALL_HINT = "pip install -e '.[eval]'"
#: z of the normal 95% interval drawn around an lm-eval score from its stderr
Z95 = 1.959963984540054
#: the demo task suite of `write_demo_tasks`: held-out text (rolling log-likelihood), and which continuation
DEMO_TASKS = ("reapkit_heldout", "reapkit_continuation")


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise MissingDependency(
            f"scoring with lm-evaluation-harness needs the optional `eval` extra ({error}); "
            f"install it with `{INSTALL_HINT}`"
        ) from None
    return lm_eval, HFLM, TaskManager


_OFFLINE = {
    "huggingface_hub.constants": ("HF_HUB_OFFLINE",),
    "datasets.config": ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"),
}


@contextlib.contextmanager
def offline():
    """Inside: the Hugging Face hub is off limits (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1), also for
    huggingface_hub and datasets already imported (they read the variables once, at import)."""
    import datasets.config  # noqa: F401 - imported before the switch, so leaving it restores them
    import huggingface_hub.constants  # noqa: F401

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    saved = [
        (module, name, getattr(module, name))
        for module_name, names in _OFFLINE.items()
        if (module := sys.modules.get(module_name)) is not None
        for name in names
        if hasattr(module, name)
    ]
    try:
        for module, name, _ in saved:
            setattr(module, name, True)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def find_tasks(tasks, include_path=None):
    """An lm-eval TaskManager that knows every task of `tasks`, or InvalidInput naming the unknown ones.

        >>> find_tasks(["reapkit_heldout"], "runs/lm_eval_tasks")

    With `include_path` the tasks are looked up in that folder of task YAML files only; without it,
    among lm-eval's own tasks (indexing their ~14,000 YAML files takes ~10 s).
    """
    *_, TaskManager = _import_lm_eval()
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise InvalidInput(f"no lm-eval task was given ({tasks!r}); name at least one (tasks=[...], --tasks T1,T2)")
    if include_path is not None and not Path(include_path).is_dir():
        raise MissingInput(
            f"task folder {include_path} does not exist; pass a folder of lm-eval task YAML files "
            "(e.g. one written by reapkit.measure.harness.write_demo_tasks)"
        )
    if include_path is None:
        manager = TaskManager()
    else:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
    known = set(manager.all_tasks)
    unknown = [task for task in tasks if task not in known]
    if unknown:
        where = f"the task folder {include_path}" if include_path is not None else "lm-eval's own tasks"
        if Path(include_path or "").name == DEMO_FOLDER and Path(include_path).parent.name.startswith(SCRATCH):
            where = f"reapkit's demo suite (--include-path {DEMO_SUITE})"
        hint = (
            f"its tasks are {', '.join(sorted(known)) or 'none'}; drop the include path to use lm-eval's own tasks"
            if include_path is not None
            else "see `lm-eval ls tasks`, or pass the folder of your task YAML files (include_path / --include-path)"
        )
        raise InvalidInput(f"unknown lm-eval task(s) {', '.join(unknown)} in {where}; {hint}")
    return manager


def provenance_columns(plan=None) -> dict:
    """The results-schema columns that say which plan a score belongs to (the unpruned model: ratio 0,
    method, criterion and label "unpruned"); `ratio` of a plan made with keep= or counts= is the fraction of all experts removed."""
    if plan is None:
        return {METHOD: UNPRUNED, CRITERION: UNPRUNED, LABEL: UNPRUNED, RATIO: 0.0, SEED: None, "observations": None}
    origin = plan.provenance.get("observations") or {}
    removed = 1 - plan.total_kept / sum(plan.num_experts.values())
    return {
        METHOD: "prune",
        CRITERION: plan.criterion,
        LABEL: plan.criterion,
        RATIO: plan.ratio if plan.ratio is not None else removed,
        SEED: plan.provenance.get("seed"),
        "observations": origin.get("router_sha256") if isinstance(origin, dict) else origin,
    }


def result_rows(output: dict, plan=None) -> pd.DataFrame:
    """Long-form results rows of the dict `lm_eval.simple_evaluate` returns: one row per task and metric.

    A metric computed under an lm-eval filter other than "none" is named `<metric>/<filter>`.
    """
    rows = []
    for task, values in output["results"].items():
        samples = (output.get("n-samples") or {}).get(task, {}).get("effective")
        for key, value in values.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else math.nan
            value = float(value)
            rows.append(
                {
                    **provenance_columns(plan),
                    DOMAIN: task,
                    METRIC: metric if filter_name == "none" else f"{metric}/{filter_name}",
                    VALUE: value,
                    STDERR: stderr,
                    lo(VALUE): value - Z95 * stderr,
                    hi(VALUE): value + Z95 * stderr,
                    "samples": samples,
                }
            )
    return pd.DataFrame(rows)


def lm_eval(
    model,
    plan=None,
    tasks=(),
    *,
    tokenizer=None,
    include_path=None,
    limit: int | float | None = None,
    batch_size: int = 8,
    offline_hub: bool | None = None,
    **lm_eval_kwargs,
) -> pd.DataFrame:
    """Score `model` (with `plan` masked in, when given) on lm-eval `tasks`; long-form results rows.

    `tasks`: lm-eval task names, found in the folder `include_path` (task YAML files) or, without it,
    among lm-eval's own tasks. `tokenizer`: the model's (default: loaded from `model.name_or_path`).
    `limit`: documents per task (a fraction: a share of them); `task_manager`: one from `find_tasks`.
    `batch_size`: documents per forward. `offline_hub`: nothing
    is fetched from the Hugging Face hub (HF_HUB_OFFLINE): by default when the tasks come from
    `include_path`, whose YAML files then read local data (`dataset_path: json` with `data_files`);
    lm-eval's own tasks download their data sets. Other keywords go to `lm_eval.simple_evaluate`
    (e.g. `num_fewshot`, `bootstrap_iters`).
    """
    from reapkit.compress.prune import check_plan, mask_experts
    from reapkit.model.loading import input_device, load_tokenizer

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if plan is not None:
        check_plan(model, plan)  # a plan for another model stops here, before lm-eval starts
    if tokenizer is None:
        tokenizer = load_tokenizer(getattr(model, "name_or_path", "") or "")
        if tokenizer is None:
            raise InvalidInput("the model's folder has no tokenizer; pass tokenizer= (lm-eval needs one)")
    offline_hub = include_path is not None if offline_hub is None else offline_hub
    hub = offline() if offline_hub else contextlib.nullcontext()
    with hub:
        harness, HFLM, _ = _import_lm_eval()
        manager = lm_eval_kwargs.pop("task_manager", None) or find_tasks(tasks, include_path)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        lm._device = input_device(model)  # HFLM takes model.device: `meta` for a model offloaded to disk
        masked = mask_experts(model, plan) if plan is not None else contextlib.nullcontext()
        with masked:
            output = harness.simple_evaluate(
                model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False, **lm_eval_kwargs
            )
    return result_rows(output, plan)


def lm_eval_plans(model, plans: dict, tasks, **kwargs) -> pd.DataFrame:
    """`lm_eval` of the unpruned model and of each plan of {(criterion, ratio): PruningPlan} (masked in
    turn), as one long-form results frame; keywords as `lm_eval`.

        >>> lm_eval_plans(model, plans, DEMO_TASKS, tokenizer=tokenizer, include_path=folder, limit=8)
    """
    manager = kwargs.pop("task_manager", None)
    with offline():  # indexing task files reads no data set
        manager = manager or find_tasks(tasks, kwargs.get("include_path"))
    frames = [lm_eval(model, plan, tasks, task_manager=manager, **kwargs) for plan in (None, *plans.values())]
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# The demo task suite
# --------------------------------------------------------------------------------------------

_HELDOUT_YAML = """\
# Written by reapkit.measure.harness.write_demo_tasks from reapkit's held-out (validation) texts.
task: reapkit_heldout
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""

_CONTINUATION_YAML = """\
# Written by reapkit.measure.harness.write_demo_tasks from reapkit's held-out (validation) texts.
task: reapkit_continuation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


#: The include path that names reapkit's demo task suite (written by :func:`write_demo_tasks`).
DEMO_SUITE = "demo"
#: Where `task_folder` writes the demo suite (inside `scratch`), and the prefix of the CLI's scratch folder.
DEMO_FOLDER, SCRATCH = "lm_eval_tasks", "reapkit-tasks-"


def task_folder(include_path, scratch):
    """The folder of task YAML files `include_path` names: "demo" writes the demo suite into `scratch`.

        >>> task_folder("demo", "runs/03")       # Path('runs/03/lm_eval_tasks'), the demo suite
        >>> task_folder("my_tasks", "runs/03")   # 'my_tasks', as it is (None: lm-eval's own tasks)

    A folder that is really called ``demo`` is taken as it is.
    """
    if include_path == DEMO_SUITE and not Path(include_path).is_dir():
        return write_demo_tasks(Path(scratch) / DEMO_FOLDER)
    return include_path


def write_demo_tasks(folder, *, per_domain: int = 4, chars: int = 240) -> Path:
    """Write reapkit's demo lm-eval task suite into `folder` and return it (usable as `include_path`).

        >>> write_demo_tasks("runs/lm_eval_tasks")        # reapkit_heldout.yaml, reapkit_continuation.yaml + jsonl

    Both tasks are made from the held-out (validation) texts of the built-in domains, `per_domain` texts
    of each, cut to `chars` characters: `reapkit_heldout` scores them as documents (rolling
    log-likelihood: bits per byte); `reapkit_continuation` shows a text's first half
    and asks which of four second halves (its own, and those of texts of the other domains) follows
    (accuracy). Deterministic; nothing is downloaded.
    """
    from reapkit.atomic import atomic_directory
    from reapkit.data import DOMAINS, domain_texts

    texts = {d: [t[:chars] for t in domain_texts(d, "validation")[:per_domain]] for d in DOMAINS}
    heldout = [{"text": t, "domain": d} for d, items in texts.items() for t in items]
    choices = []
    domains = list(texts)
    for i, domain in enumerate(domains):
        for j, text in enumerate(texts[domain]):
            cut = len(text) // 2
            others = [texts[d][j % len(texts[d])] for d in domains[i + 1 :] + domains[:i]][:3]
            endings = [text[cut:]] + [o[len(o) // 2 :] for o in others]
            label = (i + j) % len(endings)  # the right ending moves around
            endings.insert(label, endings.pop(0))
            choices.append({"context": text[:cut], "choices": endings, "label": label, "domain": domain})
    folder = Path(folder)
    with atomic_directory(folder, force=True) as tmp:
        for name, records, template in (
            ("reapkit_heldout", heldout, _HELDOUT_YAML),
            ("reapkit_continuation", choices, _CONTINUATION_YAML),
        ):
            data = folder.resolve() / f"{name}.jsonl"
            (tmp / data.name).write_text("".join(json.dumps(r) + "\n" for r in records))
            (tmp / f"{name}.yaml").write_text(template.format(data=json.dumps(str(data))))
    return folder
