"""Each user mistake is refused with its `ReapkitError` class and one line naming the fix.

`REFUSALS` holds one real call for each refusal in the converted modules that no other test reaches
in process (tiny qwen3_moe, files written here); the command line's cases are in tests/acceptance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import zipfile
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from fixtures.tiny_tokenizer import tiny_tokenizer
from tiny_models import tiny_model

import reapkit.model.demo
from reapkit import atomic, data
from reapkit.data import domains
from reapkit.errors import (
    InvalidInput,
    Mismatch,
    MissingDependency,
    MissingInput,
    MissingStatistic,
    OutputExists,
    OutputUnwritable,
    ReapkitError,
    UnknownArchitectureError,
    user_message,
)
from reapkit.measure import evaluate, harness
from reapkit.model import loading, records
from reapkit.model.discover import architecture_for
from reapkit.observe.importers import read_reap_observer
from reapkit.observe.observations import Observations
from reapkit.observe.recorder import observe
from reapkit.plot import theme, widgets
from reapkit.select import criteria, geometry
from reapkit.select.imported import read_llmcompressor_report
from reapkit.select.merge import MergePlan, plan_merge
from reapkit.select.plan import PruningPlan
from reapkit.study import experiments, findings, sensitivity, tables

E, H, TOP_K = 8, 64, 2  # tiny qwen3_moe: 2 MoE layers of 8 experts, hidden 64, top-2


def observer_state(**changes) -> dict:
    """A REAP observer state for the tiny model, {layer: {name: tensor}}; `changes` replace keys of layer 0
    (None removes one)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for layer in (0, 1):
        count = 2 * torch.randint(1, 10, (E,), generator=g)  # an even sum: exactly TOP_K experts per token
        state[layer] = {
            "expert_frequency": count,
            "weighted_ean_sum": torch.rand(E, generator=g, dtype=torch.float64) * count,
            "routed_characteristic_activation": torch.rand(E, H, generator=g),
            "total_tokens": count.sum() // TOP_K,
        }
    state[0].update(changes)
    return {k: {n: v for n, v in row.items() if v is not None} for k, row in state.items()}


def one_layer_plan(kept, total) -> PruningPlan:
    return PruningPlan({0: kept}, {0: total}, "reap", None, {}, {})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refusals")
    model = tiny_model("qwen3_moe")
    g = torch.Generator().manual_seed(0)
    batches = data.pad_batches([torch.randint(3, 96, (n,), generator=g).tolist() for n in (9, 6, 12)], "code", 2)
    torch.save(observer_state(), tmp / "observer.pt")
    (tmp / "folder").mkdir()
    (tmp / "notes.txt").write_text("not data\n")
    (tmp / "plan.json").write_text("{not json")
    one_layer_plan([0, 1], E).save(tmp / "pruning_plan.json")
    with zipfile.ZipFile(tmp / "not_torch.pt", "w") as archive:
        archive.writestr("readme.txt", "a zip, not a torch.save file")
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(tmp / "empty.parquet")
    (tmp / "empty.json").write_text("[]")
    (tmp / "broken.jsonl").write_text('{"text": "a"}\n{broken\n')
    return SimpleNamespace(
        tmp=tmp,
        model=model,
        batches=batches,
        obs=observe(model, batches, progress=False),
        imported=read_reap_observer(tmp / "observer.pt"),
    )


def observer(w, name: str, state, **options):
    """`read_reap_observer` of `state` saved as NAME.pt."""
    torch.save(state, w.tmp / f"{name}.pt")
    return read_reap_observer(w.tmp / f"{name}.pt", **options)


def report(w, content: dict, **options):
    """`read_llmcompressor_report` of `content` saved as JSON."""
    text = json.dumps(content, sort_keys=True)
    path = w.tmp / f"report-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    path.write_text(text)
    return read_llmcompressor_report(path, **options)


def enter(context) -> None:
    with context:
        pass


def dense_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )


def truncated_reference(w):
    reference = evaluate.reference_outputs(w.model, w.batches, progress=False)
    short = dataclasses.replace(reference, log_probs=[lp[:-1] for lp in reference.log_probs])
    return evaluate.sequence_metrics(w.model, w.batches, reference=short, progress=False)


def reference_of_another_vocabulary(w):
    reference = evaluate.reference_outputs(w.model, w.batches, progress=False)
    return evaluate.sequence_metrics(tiny_model("qwen3_moe", vocab_size=128), w.batches, reference=reference)


def domain_with_one_text(m):
    m.setitem(domains.BUILTIN_DOMAINS, "one_text", lambda: ["a single text lands in a single split"])
    return domains.domain_texts("one_text", "validation")


def without_lm_eval(m):
    m.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets when the extra is not installed
    return harness.find_tasks(["reapkit_heldout"])


def missing_demo(w, m):
    m.setattr(reapkit.model.demo, "DEMO_PATH", w.tmp / "no_demo")
    return loading.resolve_name("demo")


def lm_eval_without_tokenizer(w, m):
    m.chdir(w.tmp / "folder")  # the tiny model's name_or_path is "": its folder is the working directory
    return harness.lm_eval(w.model, None, ["reapkit_heldout"])


def grouped(obs) -> Observations:
    return Observations(obs.stats, {**obs.meta, "n_group": 2})


def figure_as_bmp(w):
    fig = plt.figure()
    try:
        return theme.save_figure(fig, w.tmp / "figures", "f", formats=("bmp",))
    finally:
        plt.close(fig)


L0 = "model.layers.0.mlp"
STATE = observer_state()
NARROW = {k: {**row, "routed_characteristic_activation": torch.ones(E, 32)} for k, row in STATE.items()}

# (id, class, fragment of the message, call(world, monkeypatch))
REFUSALS = [
    # atomic
    ("existing-output", OutputExists, "already exists", lambda w, m: enter(atomic.atomic_directory(w.tmp))),
    ("existing-file", OutputExists, "--force", lambda w, m: atomic.check_new_output(w.tmp / "notes.txt")),
    ("under-a-file", OutputUnwritable, "not a folder", lambda w, m: atomic.check_new_output(w.tmp / "notes.txt/o")),
    ("in-proc", OutputUnwritable, "nothing can be created", lambda w, m: atomic.check_new_output("/proc/reapkit-o")),
    # data
    ("unknown-split", InvalidInput, "unknown split", lambda w, m: data.calibration_batches("code:2", split="x")),
    ("no-token-file", MissingInput, "token file", lambda w, m: data.read_token_file(w.tmp / "none.jsonl")),
    ("empty-split", InvalidInput, "no texts in split", lambda w, m: domain_with_one_text(m)),
    ("no-data-file", MissingInput, "pass an existing", lambda w, m: data.load_records(w.tmp / "none.jsonl")),
    ("data-suffix", InvalidInput, "use a .json", lambda w, m: data.load_records(w.tmp / "notes.txt")),
    ("hub-name", InvalidInput, "org/name#config#split", lambda w, m: data.load_records("a#b#c#d")),
    ("empty-table", InvalidInput, "at least one record", lambda w, m: data.load_records(w.tmp / "empty.parquet")),
    ("no-records", InvalidInput, "corresponds to no data", lambda w, m: data.load_records(w.tmp / "empty.json")),
    ("bad-record", InvalidInput, "JSON parse error", lambda w, m: data.load_records(w.tmp / "broken.jsonl")),
    ("chat-not-list", InvalidInput, "list of chat messages", lambda w, m: data.to_sample({"messages": 5})),
    ("spec-at", InvalidInput, "around '@'", lambda w, m: data.parse_spec("evol@")),
    ("spec-no-name", InvalidInput, "empty domain", lambda w, m: data.parse_spec([data.SpecItem(" ", "code")])),
    ("spec-empty-list", InvalidInput, "empty calibration spec", lambda w, m: data.parse_spec([])),
    # measure
    ("no-batches", InvalidInput, "no batches", lambda w, m: evaluate.sequence_metrics(w.model, [])),
    ("reference-vocab", Mismatch, "vocabulary of 96", lambda w, m: reference_of_another_vocabulary(w)),
    (
        "reference-top-k",
        InvalidInput,
        "top_k must be",
        lambda w, m: evaluate.reference_outputs(w.model, w.batches, top_k=0),
    ),
    (
        "reference-model-vocab",
        Mismatch,
        "share one tokenizer",
        lambda w, m: evaluate.sequence_metrics(w.model, w.batches, reference=tiny_model("qwen3_moe", vocab_size=128)),
    ),
    ("reference-positions", Mismatch, "belong to other batches", lambda w, m: truncated_reference(w)),
    (
        "reconstruction-layers",
        Mismatch,
        "different decoder layers",
        lambda w, m: evaluate.reconstruction_error(tiny_model("qwen3_moe", num_hidden_layers=3), w.model, w.batches),
    ),
    (
        "generate-tokenizer",
        Mismatch,
        "own tokenizer",
        lambda w, m: evaluate.generate_samples(w.model, tiny_tokenizer(), {"code": "def f(x): return x"}),
    ),
    ("no-lm-eval", MissingDependency, "optional `eval` extra", lambda w, m: without_lm_eval(m)),
    ("no-tasks", InvalidInput, "no lm-eval task", lambda w, m: harness.find_tasks([])),
    ("no-task-folder", MissingInput, "task folder", lambda w, m: harness.find_tasks(["x"], w.tmp / "no_tasks")),
    ("unknown-task", InvalidInput, "unknown lm-eval task", lambda w, m: harness.find_tasks(["x"], w.tmp / "folder")),
    ("no-tokenizer", InvalidInput, "no tokenizer", lambda w, m: lm_eval_without_tokenizer(w, m)),
    # model
    ("config-unknown", UnknownArchitectureError, "not its config", lambda w, m: architecture_for(dense_model().config)),
    ("dense-model", UnknownArchitectureError, "no fused experts", lambda w, m: architecture_for(dense_model())),
    ("demo-missing", MissingInput, "demo model is missing", lambda w, m: missing_demo(w, m)),
    ("dtype", InvalidInput, "unknown dtype", lambda w, m: loading.torch_dtype("float12")),
    (
        "registered",
        InvalidInput,
        "already registered",
        lambda w, m: records.register_architecture(records.ARCHITECTURES["qwen3_moe"]),
    ),
    (
        "scoring",
        InvalidInput,
        "scoring must be one of",
        lambda w, m: records.register_architecture(records.Architecture("my_moe", scoring="tanh")),
    ),
    # observe/importers
    ("no-state", MissingInput, "REAP observer saved", lambda w, m: read_reap_observer(w.tmp / "none.pt")),
    ("zip-not-torch", InvalidInput, "not a torch.save file", lambda w, m: read_reap_observer(w.tmp / "not_torch.pt")),
    ("state-list", InvalidInput, "expected a dict", lambda w, m: observer(w, "list", [1, 2])),
    (
        "no-saliency",
        InvalidInput,
        "neither weighted_ean_sum nor reap",
        lambda w, m: observer(w, "bare", {0: {"expert_frequency": torch.ones(E, dtype=torch.long)}}),
    ),
    ("layer-twice", InvalidInput, "repeat", lambda w, m: observer(w, "twice", {0: STATE[0], "0": STATE[0]})),
    (
        "observer-max-activations",
        InvalidInput,
        "holds max_activations (3,) but 8 experts",
        lambda w, m: observer(w, "peaks", observer_state(max_activations=torch.ones(3))),
    ),
    (
        "counts-2d",
        InvalidInput,
        "1-D tensor",
        lambda w, m: observer(w, "counts2d", observer_state(expert_frequency=torch.ones(2, 4, dtype=torch.long))),
    ),
    (
        "stat-shape",
        InvalidInput,
        "values for weighted_ean_sum but 8 experts",
        lambda w, m: observer(w, "short", observer_state(weighted_ean_sum=torch.ones(3, dtype=torch.float64))),
    ),
    (
        "mean-not-tensor",
        InvalidInput,
        "reap is a list, not a tensor",
        lambda w, m: observer(w, "list_reap", observer_state(weighted_ean_sum=None, reap=[1.0] * E)),
    ),
    (
        "sum-int",
        InvalidInput,
        "expected a float tensor",
        lambda w, m: observer(w, "int_sum", observer_state(weighted_ean_sum=torch.ones(E, dtype=torch.long))),
    ),
    ("output-width", Mismatch, "hidden size is 64", lambda w, m: observer(w, "narrow", NARROW, model=w.model)),
    (
        "top-k-model",
        Mismatch,
        "disagrees with the model",
        lambda w, m: observer(w, "k3", observer_state(), model=w.model, top_k=3),
    ),
    ("top-k-zero", InvalidInput, "positive number", lambda w, m: observer(w, "k0", observer_state(), top_k=0)),
    # plot
    ("figure-format", InvalidInput, "unsupported figure format", lambda w, m: figure_as_bmp(w)),
    ("explorer-view", InvalidInput, "unknown view", lambda w, m: widgets.SaliencyExplorer(w.obs, views=["pie"])),
    (
        "explorer-metrics",
        InvalidInput,
        "none of the metrics",
        lambda w, m: widgets.StudyExplorer(pd.DataFrame({"domain": ["all"], "ratio": [0.5]})),
    ),
    # select
    (
        "no-usable-criterion",
        MissingStatistic,
        "can be scored from these observations",
        lambda w, m: criteria.usable_criteria(w.imported, ["soft_frequency"]),
    ),
    ("vectors-space", InvalidInput, "'weights' or 'router'", lambda w, m: geometry.model_vectors(w.model, 0, "output")),
    ("no-labels", InvalidInput, "no cluster labels", lambda w, m: geometry.cluster(np.ones((3, 3))).members()),
    ("no-report", MissingInput, "REAPPruningModifier", lambda w, m: read_llmcompressor_report(w.tmp / "none.json")),
    ("report-empty", InvalidInput, "module name", lambda w, m: report(w, {}, num_experts=E)),
    ("report-shape", InvalidInput, "not both", lambda w, m: report(w, {L0: [0, 1]})),
    ("report-experts", InvalidInput, "--num-experts must be", lambda w, m: report(w, {L0: [0, 1]}, num_experts=0)),
    ("report-layer", InvalidInput, "no layer number", lambda w, m: report(w, {"mlp": [0, 1]}, num_experts=E)),
    (
        "report-twice",
        InvalidInput,
        "appears twice",
        lambda w, m: report(w, {"layers.0.mlp": [0, 1], L0: [0, 1]}, num_experts=E),
    ),
    ("report-indices", InvalidInput, "list of expert indices", lambda w, m: report(w, {L0: "0,1"}, num_experts=E)),
    ("report-top-k", InvalidInput, "fewer than top-k", lambda w, m: report(w, {L0: [0]}, num_experts=E, top_k=TOP_K)),
    (
        "merge-keep",
        InvalidInput,
        "keep must be an integer",
        lambda w, m: plan_merge(w.model, w.obs, method="m_smoe", keep=2.5),
    ),
    (
        "plan-how-many",
        InvalidInput,
        "exactly one of",
        lambda w, m: PruningPlan.from_scores(np.ones((1, E)), [0], [E], top_k=TOP_K),
    ),
    (
        "budget-groups",
        InvalidInput,
        "routing groups",
        lambda w, m: PruningPlan.from_global_budget(grouped(w.obs), total=8),
    ),
    ("budget-range", InvalidInput, "budget of 1 experts", lambda w, m: PruningPlan.from_global_budget(w.obs, total=1)),
    ("no-plan", MissingInput, "PruningPlan.save", lambda w, m: PruningPlan.load(w.tmp / "none.json")),
    ("plan-not-json", InvalidInput, "not JSON", lambda w, m: PruningPlan.load(w.tmp / "plan.json")),
    ("merge-plan-format", InvalidInput, "merge plan", lambda w, m: MergePlan.load(w.tmp / "pruning_plan.json")),
    # study
    (
        "sensitivity-tokenizer",
        InvalidInput,
        "needs a tokenizer",
        lambda w, m: sensitivity.calibration_sensitivity(w.model, None, w.batches, progress=False),
    ),
    (
        "sensitivity-domains",
        InvalidInput,
        "none of the domains",
        lambda w, m: sensitivity.calibration_sensitivity(
            w.model, None, w.batches, calibration=w.obs, domains=["math"], progress=False
        ),
    ),
    ("no-ratios", InvalidInput, "ratios must be", lambda w, m: experiments.study_jobs(w.obs, ratios=[])),
    ("summarise-frame", InvalidInput, "per-sequence", lambda w, m: findings.summarise(pd.DataFrame({"loss": [1.0]}))),
    (
        "overlap-experts",
        Mismatch,
        "plans disagree",
        lambda w, m: tables.plan_overlap(one_layer_plan([0, 1], 8), one_layer_plan([0], 4)),
    ),
]


@pytest.mark.parametrize("cid, cls, fragment, call", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_refusal_is_its_reapkit_error(world, monkeypatch, cid, cls, fragment, call):
    with pytest.raises(ReapkitError) as caught:
        call(world, monkeypatch)
    assert isinstance(caught.value, cls), f"{type(caught.value).__name__}: {caught.value}"
    message = user_message(caught.value)
    assert fragment in message and "\n" not in message, message
