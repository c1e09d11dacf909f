"""`reapkit import`: the REAP observer's saved state and llm-compressor's REAP report, built here
following their documented formats (see reapkit/observe/importers.py), read back as Observations and plans."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_checkpoint

from reapkit.data import pad_batches
from reapkit.errors import InvalidInput, Mismatch
from reapkit.observe.importers import read_reap_observer
from reapkit.observe.observations import Observations
from reapkit.observe.recorder import observe
from reapkit.run.cli import main
from reapkit.select.criteria import score, usable_criteria
from reapkit.select.imported import read_llmcompressor_report
from reapkit.select.plan import PruningPlan, super_experts

TOP_K = 2


@torch.no_grad()
def observer_state(model, batches, *, pruning_only=False) -> dict:
    """What the REAP observer saves, recomputed per token the way it does: every expert runs on every
    token, tokens are routed to the top-k router logits, g = softmax probability (qwen3_moe does not
    renormalise the top-k), sums in float64, means in float32, one dict per decoder layer."""
    captured = {}
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda m, a, out, i=i: captured.setdefault(i, []).append((a[0], out[0])))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        for batch in batches:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    state = {}
    for i, calls in captured.items():
        experts = model.model.layers[i].mlp.experts
        x = torch.cat([c[0] for c in calls]).reshape(-1, model.config.hidden_size)
        logits = torch.cat([c[1] for c in calls])
        E, T = logits.shape[1], x.shape[0]
        probs = logits.float().softmax(-1)
        chosen = logits.topk(TOP_K, dim=-1).indices
        ones = torch.ones(T, 1)
        outputs = torch.stack([experts(x, torch.full((T, 1), j), ones) for j in range(E)])  # [E, T, H]
        row = {
            k: torch.zeros(E, dtype=torch.float64)
            for k in ("ean_sum", "weighted_ean_sum", "weighted_expert_frequency_sum")
        }
        row["expert_frequency"] = torch.zeros(E, dtype=torch.long)
        row["max_activations"] = torch.zeros(E)
        routed_mean = torch.zeros(E, x.shape[1])
        for j in range(E):
            routed = (chosen == j).any(-1)
            norms = outputs[j, routed].double().norm(dim=-1)
            g = probs[routed, j].double()
            row["expert_frequency"][j] = int(routed.sum())
            row["ean_sum"][j] = norms.sum()
            row["weighted_ean_sum"][j] = (norms * g).sum()
            row["weighted_expert_frequency_sum"][j] = g.sum()
            row["max_activations"][j] = max(0.0, outputs[j, routed].max()) if routed.any() else 0.0  # starts at 0
            routed_mean[j] = outputs[j, routed].mean(0) if routed.any() else 0.0
        freq = row["expert_frequency"].clamp_min(1).double()
        row["ean_mean"] = (row["ean_sum"] / freq).float()
        row["reap"] = (row["weighted_ean_sum"] / freq).float()
        row["total_tokens"] = torch.tensor(T, dtype=torch.long)
        row["pairwise_expert_frequency"] = row["expert_frequency"][:, None] + row["expert_frequency"][None, :]
        if not pruning_only:
            row["routed_characteristic_activation"] = routed_mean
            row["ttm_similarity_matrix"] = torch.rand(E, E)
            row["characteristic_activation"] = outputs.mean(1)  # over all tokens (the batches are unpadded)
            distance, tokens = torch.zeros(E, E, dtype=torch.float64), 0
            for _, z in calls:  # per batch: 1 - cos of the logit columns, weighted by the batch's tokens
                z = z.double()
                distance += len(z) * (1 - torch.nn.functional.cosine_similarity(z.T[:, None], z.T[None], dim=-1))
                tokens += len(z)
            row["router_logit_similiarity"] = (distance / tokens).float()
        state[i] = row
    return state


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny qwen3_moe checkpoint, reapkit's observations of unpadded batches and the observer's state of them."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("import")
    folder, spec = tiny_checkpoint(root)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(0)
    batches = pad_batches([torch.randint(3, 96, (10,), generator=g).tolist() for _ in range(6)], "code", 3)
    obs = observe(
        model, batches, progress=False, statistics=["output_sum", "max_signed", "all_output_sum", "router_distance_sum"]
    )
    state = observer_state(model, batches)
    path = root / "observations_1024_cosine.pt"
    torch.save(state, path)
    return {"root": root, "model": model, "folder": folder, "spec": spec, "obs": obs, "state": state, "path": path}


def test_imported_statistics_equal_reapkits_own(case):
    imported = read_reap_observer(case["path"], domain="code")
    mine, theirs = case["obs"].stats["code"], imported.stats["code"]
    for name in ("count", "norm_sum", "reap_sum", "gate_sum", "tokens"):
        torch.testing.assert_close(theirs[name], mine[name], rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(theirs["output_sum"], mine["output_sum"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(theirs["all_output_sum"], mine["all_output_sum"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(theirs["router_distance_sum"], mine["router_distance_sum"], rtol=1e-5, atol=1e-4)
    # max_activations is max_signed: the largest signed element over routed tokens, from 0
    torch.testing.assert_close(theirs["max_signed"], mine["max_signed"], rtol=1e-5, atol=1e-7)
    assert super_experts(imported, include_last_layers=True) == super_experts(case["obs"], include_last_layers=True)
    assert imported.layers == case["obs"].layers and imported.num_experts == [8, 8]
    assert imported.top_k == TOP_K  # read from expert_frequency / total_tokens
    assert imported.meta["fingerprint"] is None and imported.meta["architecture"] is None
    assert sorted(imported.meta["missing"]) == [
        "coselect",
        "max_activation",
        "prob_sum",
        "router_gram",
        "sq_norm_sum",
    ]
    assert set(imported.meta["source"]["unmapped"]) == {
        "pairwise_expert_frequency",
        "ttm_similarity_matrix",
    }
    for criterion in ("reap", "frequency", "ean_mean", "ean_sum", "weighted_ean_sum"):
        np.testing.assert_allclose(score(imported, criterion), score(case["obs"], criterion), rtol=1e-5, atol=1e-9)
    file_reap = np.stack([case["state"][i]["reap"].double().numpy() for i in imported.layers])
    np.testing.assert_allclose(score(imported, "reap"), file_reap, rtol=1e-6)
    assert imported.meta["source"]["reap_max_relative_difference"] < 1e-6


def test_missing_statistics_are_refused_by_name(case, tmp_path):
    from reapkit.select.geometry import output_vectors

    state = {
        i: {k: v for k, v in row.items() if k in ("expert_frequency", "reap", "ean_mean")}
        for i, row in case["state"].items()
    }
    torch.save(state, tmp_path / "pruning_only.pt")
    imported = read_reap_observer(tmp_path / "pruning_only.pt", top_k=TOP_K)  # no total_tokens: top-k given
    np.testing.assert_allclose(score(imported, "reap"), score(case["obs"], "reap"), rtol=1e-5)
    torch.testing.assert_close(imported.stats["calibration"]["tokens"], case["obs"].stats["code"]["tokens"])
    with pytest.raises(
        ValueError,
        match=(
            r"^criterion 'soft_frequency' needs the statistic 'prob_sum' \(the router probability summed over every "
            r"token.*\), which observations imported from the REAP observer \(CerebrasResearch/reap\) do not hold; "
            r"observe the model with reapkit \(`reapkit observe`\) to record it$"
        ),
    ):
        score(imported, "soft_frequency")
    with pytest.raises(ValueError, match="criterion 'max_activation' needs the statistic 'max_activation' .*signed"):
        score(imported, "max_activation")
    with pytest.raises(
        ValueError, match="the 'output' space .* needs the statistic 'output_sum' .*record_pruning_metrics_only"
    ):
        output_vectors(imported, 1)
    with pytest.raises(ValueError, match="co-selection counts needs the statistic 'coselect'"):
        imported.coselection()
    assert usable_criteria(imported, ["reap", "soft_frequency", "ean_mean"]) == ["reap", "ean_mean"]


def test_model_attaches_fingerprint_and_checks_shapes(case, tmp_path):
    from reapkit.select.merge import plan_merge

    imported = read_reap_observer(case["path"], model=case["model"])
    assert imported.meta["fingerprint"] == case["obs"].meta["fingerprint"]
    assert imported.meta["architecture"] == "qwen3_moe" and imported.top_k == TOP_K
    imported.check_model(case["model"])
    plan_merge(case["model"], imported, method="hc_smoe", keep=4)  # output_sum came with the file
    for method in ("hc_smoe_faithful", "m_smoe_faithful"):  # the observer's all-token means: the same merges
        ours = plan_merge(case["model"], case["obs"], method=method, keep=4)
        assert plan_merge(case["model"], imported, method=method, keep=4).groups == ours.groups
    with pytest.raises(ValueError, match="merging with 'hc_smoe' needs the statistic 'output_sum'"):
        plan_merge(
            case["model"],
            read_reap_observer(_without(case, tmp_path, "routed_characteristic_activation")),
            method="hc_smoe",
            keep=4,
        )
    wrong = {0: case["state"][0]}  # one MoE layer of two
    torch.save(wrong, tmp_path / "one_layer.pt")
    with pytest.raises(
        Mismatch, match=r"holds MoE layers \[0\] with \[8\] experts, but the model has MoE layers \[0, 1\]"
    ):
        read_reap_observer(tmp_path / "one_layer.pt", model=case["model"])
    unknown = read_reap_observer(tmp_path / "one_layer.pt")  # without the model: only shapes are checked later
    with pytest.raises(ValueError, match=r"observations hold MoE layers \[0\] with \[8\] experts, but the model"):
        unknown.check_model(case["model"])


def _without(case, tmp_path, key):
    path = tmp_path / f"without_{key}.pt"
    torch.save({i: {k: v for k, v in row.items() if k != key} for i, row in case["state"].items()}, path)
    return path


def test_unfingerprinted_plan_is_checked_against_the_checkpoint(case, tmp_path):
    from reapkit.compress.stream import stream_prune

    imported = read_reap_observer(case["path"])
    plan = PruningPlan.from_observations(imported, "reap", ratio=0.5)
    assert plan.provenance["observations"] is None
    assert plan.kept == PruningPlan.from_observations(case["obs"], "reap", ratio=0.5).kept
    stream_prune(case["folder"], plan, tmp_path / "pruned", progress=False)
    wide = PruningPlan(plan.kept, {layer: 16 for layer in plan.kept}, "reap", 0.5, {}, plan.provenance)
    with pytest.raises(InvalidInput, match="made for 16 experts in layer 0 but the model has 8"):
        stream_prune(case["folder"], wide, tmp_path / "pruned_wide", progress=False)
    assert not (tmp_path / "pruned_wide").exists()


def test_llmcompressor_report_becomes_the_retained_plan(case, tmp_path):
    from reapkit.study.tables import plan_overlap

    retained = {"model.layers.0.mlp": [0, 2, 3, 5], "model.layers.1.mlp": [1, 2, 6, 7]}
    report = tmp_path / "reap_report.json"
    report.write_text(json.dumps(retained))
    plan = read_llmcompressor_report(report, num_experts=8)
    assert plan.kept == {0: [0, 2, 3, 5], 1: [1, 2, 6, 7]} and plan.num_experts == {0: 8, 1: 8}
    assert plan.ratio == 0.5 and plan.provenance["observations"] is None
    with_model = read_llmcompressor_report(report, model=case["model"])
    assert with_model.kept == plan.kept and with_model.provenance["observations"] == case["obs"].meta["fingerprint"]
    ours = PruningPlan.from_observations(case["obs"], "reap", ratio=0.5)
    overlap = plan_overlap(plan, ours)
    assert list(overlap.layer) == [0, 1] and set(overlap.columns) >= {"shared", "overlap", "overlap_chance"}
    for layer, row in overlap.set_index("layer").iterrows():
        shared = len(set(plan.kept[layer]) & set(ours.kept[layer]))
        assert row.shared == shared and row.overlap == pytest.approx(shared / (8 - shared))
    same = read_llmcompressor_report(_report(tmp_path, ours), num_experts=8)
    assert (plan_overlap(same, ours).overlap == 1).all()


def _report(tmp_path, plan):
    path = tmp_path / "ours.json"
    path.write_text(json.dumps({f"model.layers.{layer}.mlp": kept for layer, kept in plan.kept.items()}))
    return path


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "reapkit", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_cli_round_trips(case, tmp_path, capsys):
    source = case["path"].read_bytes()
    done = _cli("import", "reap-observer", case["path"], "--out", tmp_path / "obs", "--domain", "code", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "lacks prob_sum, coselect, max_activation" in done.stdout
    loaded = Observations.load(tmp_path / "obs")
    np.testing.assert_allclose(score(loaded, "reap"), score(case["obs"], "reap"), rtol=1e-5)
    assert loaded.meta["missing"] and case["path"].read_bytes() == source  # the source is never modified
    assert main(["scores", str(tmp_path / "obs"), "--criterion", "soft_frequency"]) == 2
    assert (
        main(["import", "reap-observer", str(case["path"]), "--out", str(tmp_path / "obs2"), "--domain", "prose"]) == 0
    )
    assert main(["combine", str(tmp_path / "obs"), str(tmp_path / "obs2"), "--out", str(tmp_path / "both")]) == 0
    assert Observations.load(tmp_path / "both").domains == ["code", "prose"]  # one file per category, then combined
    assert "needs the statistic 'prob_sum'" in capsys.readouterr().err
    ours = PruningPlan.from_observations(case["obs"], "frequency", ratio=0.25)
    out = tmp_path / "plan.json"
    assert (
        main(["import", "llm-compressor", str(_report(tmp_path, ours)), "--out", str(out), "--num-experts", "8"]) == 0
    )
    plan = PruningPlan.load(out)
    assert plan.kept == ours.kept and plan.ratio == 0.25


@pytest.mark.parametrize(
    "kind, content, extra, message",
    [
        ("reap-observer", b"not a torch file", [], "is not a torch.save file"),
        ("reap-observer", "pickled", [], "needs pickled Python objects to load"),
        ("reap-observer", {"a": {}}, [], "key 'a' is not a decoder layer index"),
        ("reap-observer", {0: {"reap": torch.ones(8)}}, [], "layer 0 has no expert_frequency"),
        (
            "reap-observer",
            {
                0: {
                    "expert_frequency": torch.ones(8, dtype=torch.long),
                    "weighted_ean_sum": torch.ones(8),
                    "reap": torch.ones(4),
                }
            },
            ["--top-k", "2"],
            "layer 0 reap is not a tensor",
        ),
        (
            "reap-observer",
            {
                0: {
                    "expert_frequency": torch.ones(8, dtype=torch.long),
                    "weighted_ean_sum": torch.ones(8),
                    "reap": 2 * torch.ones(8),
                }
            },
            ["--top-k", "2"],
            r"its reap differs from weighted_ean_sum / expert_frequency by up to 1 \(relative\)",
        ),
        (
            "reap-observer",
            {0: {"expert_frequency": torch.ones(8), "reap": torch.ones(8)}},
            [],
            "cannot tell .* --top-k K",
        ),
        ("reap-observer", "state", ["--domain", "all"], "domain 'all' must be a name"),
        (
            "reap-observer",
            "state",
            ["--num-experts", "8"],
            "--num-experts does not apply to `reapkit import reap-observer`",
        ),
        (
            "reap-observer",
            "one_layer",
            ["--model", "MODEL"],
            r"holds MoE layers \[1\] with \[8\] experts, but the model",
        ),
        ("llm-compressor", b"{not json", ["--num-experts", "8"], "is not an llm-compressor REAP report"),
        ("llm-compressor", {"model.layers.0.mlp": [0, 9]}, ["--num-experts", "8"], "not distinct experts of 0..7"),
        ("llm-compressor", {"model.layers.0.mlp": [1, 2]}, [], "pass --model MODEL .* or --num-experts N"),
        ("llm-compressor", {"model.layers.5.mlp": [0, 1]}, ["--model", "MODEL"], "not an MoE layer of the model"),
    ],
    ids=lambda v: None,
)
def test_bad_inputs_one_line_exit_2_nothing_written(case, tmp_path, capsys, kind, content, extra, message):
    source = tmp_path / ("in.pt" if kind == "reap-observer" else "in.json")
    if isinstance(content, bytes):
        source.write_bytes(content)
    elif content == "pickled":
        torch.save({0: {"expert_frequency": torch.ones(8), "tracker": Observations({}, {})}}, source)
    elif content == "state":
        source.write_bytes(case["path"].read_bytes())
    elif content == "one_layer":
        torch.save({1: case["state"][1]}, source)
    elif kind == "reap-observer":
        torch.save(content, source)
    else:
        source.write_text(json.dumps(content))
    before = source.read_bytes()
    extra = [str(case["folder"]) if a == "MODEL" else a for a in extra]
    assert main(["import", kind, str(source), "--out", str(tmp_path / "out"), *extra]) == 2  # as test_cli: in process
    stderr = capsys.readouterr().err  # a loaded --model may add progress bars before the message
    assert [line for line in stderr.splitlines() if "error" in line] == [stderr.splitlines()[-1]]
    assert "Traceback" not in stderr and re.search(message, stderr.splitlines()[-1]), stderr
    assert not (tmp_path / "out").exists() and source.read_bytes() == before


def _run_notebook(name: str, params: dict, folder: Path) -> tuple[list, str]:
    """Run notebooks/<name> with papermill; its outputs (none an error) and the text it printed."""
    import nbformat

    from reapkit.run.sweep import run_notebook

    out = run_notebook(Path(__file__).resolve().parents[2] / f"notebooks/{name}.ipynb", params, folder)
    outputs = [o for c in nbformat.read(str(out), as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs, "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


@pytest.mark.slow
def test_notebook_shows_imported_saliency_and_plans(case, tmp_path):
    """Notebook 1 on observations imported from the REAP observer (no model loaded) and a plan from llm-compressor:
    criteria and figures that need what the import lacks are skipped with the reason, the rest show inline."""
    import pandas as pd

    state = {
        i: {k: v for k, v in row.items() if k != "routed_characteristic_activation"} for i, row in case["state"].items()
    }
    torch.save(state, tmp_path / "observer.pt")
    read_reap_observer(tmp_path / "observer.pt", domain="code").save(tmp_path / "obs")
    retained = {"model.layers.0.mlp": [0, 2, 3, 5], "model.layers.1.mlp": [1, 2, 6, 7]}
    (tmp_path / "llmcompressor.json").write_text(json.dumps(retained))
    read_llmcompressor_report(tmp_path / "llmcompressor.json", num_experts=8).save(tmp_path / "llmc_plan.json")
    params = {
        "observations": str(tmp_path / "obs"),
        "plans": [str(tmp_path / "llmc_plan.json")],
        "model": "no/such-model",  # never loaded: the observations are enough
        "ratios": [0.5],
        "criteria": ["reap", "frequency", "soft_frequency"],
    }
    outputs, text = _run_notebook("01_saliency", params, tmp_path / "run")
    assert "skipped: criterion 'soft_frequency' needs the statistic 'prob_sum'" in text
    assert "skipped: domain experts need several calibration domains" in text
    figures = sorted(p.stem for p in (tmp_path / "run/figures").glob("*.png"))
    assert figures == [
        "criterion_agreement",
        "expert_usage",
        "kept_mass",
        "plans_beside",
        "saliency_curves",
        "saliency_heatmaps",
    ]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= len(figures)
    overlap = pd.read_csv(tmp_path / "run/plan_overlap.csv")
    assert set(overlap.criterion) == {"reap", "frequency"} and set(overlap.plan) == {"llmc_plan"}
    ours = PruningPlan.from_observations(case["obs"], "reap", ratio=0.5)
    row = overlap[(overlap.criterion == "reap") & (overlap.layer == 0)].iloc[0]
    assert row.shared == len(set(ours.kept[0]) & {0, 2, 3, 5})


@pytest.mark.slow
def test_notebook_03_prunes_and_evaluates_from_imported_saliency(case, tmp_path):
    """Notebook 3 with observations imported from the REAP observer: the model is loaded to evaluate, nothing is
    observed, criteria the import cannot score are skipped, and the saved checkpoint follows the imported reap."""
    import pandas as pd

    imported = read_reap_observer(case["path"], domain="code", model=case["model"])
    imported.save(tmp_path / "obs")
    params = {
        "model": str(case["folder"]),
        "observations": str(tmp_path / "obs"),
        "evaluation": case["spec"],
        "max_length": 12,
        "criteria": ["reap", "soft_frequency"],
        "ratios": [0.5],
        "max_new_tokens": 0,
        "cache_dir": str(tmp_path / "cache"),
    }
    outputs, text = _run_notebook("03_pruning", params, tmp_path / "run")
    assert "skipped: criterion 'soft_frequency' needs the statistic 'prob_sum'" in text
    assert not (tmp_path / "cache").exists()  # nothing was observed
    figures = list((tmp_path / "run/figures").glob("*.png"))
    assert len(figures) >= 3 and sum("image/png" in o.get("data", {}) for o in outputs) >= len(figures)
    results = pd.read_csv(tmp_path / "run/results.csv")
    assert set(results.criterion) == {"unpruned", "reap"}
    saved = json.loads((tmp_path / "run/pruned_checkpoint/pruning_plan.json").read_text())
    expected = PruningPlan.from_observations(imported, "reap", ratio=0.5).kept
    assert {int(k): v for k, v in saved["kept"].items()} == expected


def test_readme_block_runs_as_written(tmp_path, monkeypatch, capsys):
    """README "Bring saliency from other tools", line by line (in process), on files made for the demo model."""
    from doc_blocks import readme_block

    from reapkit.model.loading import load_model

    demo, _ = load_model("demo")
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, layer in enumerate(demo.model.layers):
        E = layer.mlp.experts.num_experts
        frequency = torch.randint(1, 50, (E,), generator=g)
        weighted = torch.rand(E, generator=g, dtype=torch.float64) * frequency
        state[i] = {
            "expert_frequency": frequency,
            "total_tokens": frequency.sum() // 2,  # top-2
            "weighted_ean_sum": weighted,
            "ean_sum": weighted * 3,
            "reap": (weighted / frequency).float(),
        }
    torch.save(state, tmp_path / "observations_1024_cosine.pt")
    (tmp_path / "reap_report.json").write_text(
        json.dumps({f"model.layers.{i}.mlp": list(range(0, 16, 2)) for i in state})
    )
    monkeypatch.chdir(tmp_path)
    lines = readme_block("## Bring saliency from other tools")
    assert len(lines) == 4
    for line in lines:
        words = shlex.split(line, comments=True)
        assert words[0] == "reapkit" and main(words[1:]) == 0, capsys.readouterr().err
    imported = Observations.load("runs/imported")
    assert imported.meta["fingerprint"] is not None and imported.domains == ["code"]
    np.testing.assert_allclose(score(imported, "reap"), np.stack([state[i]["reap"].numpy() for i in state]), rtol=1e-6)
    pruned = json.loads(Path("pruned-imported/pruning_plan.json").read_text())
    assert pruned["provenance"]["observations"] == imported.meta["fingerprint"]
    assert PruningPlan.load("runs/llmc_plan.json").kept[3] == list(range(0, 16, 2))
