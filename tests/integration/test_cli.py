"""The command line end to end, as a researcher runs it (real subprocesses, real files)."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from tiny_models import tiny_model
from transformers import AutoModelForCausalLM


def reapkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "reapkit", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_model("qwen3_moe").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    (root / "code.jsonl").write_text(
        "\n".join(json.dumps(torch.randint(3, 96, (n,), generator=g).tolist()) for n in (9, 14, 5, 11))
    )
    return root


def test_observe_scores_prune(checkpoint):
    root = checkpoint
    run = reapkit("observe", root / "model", "--data", root / "code.jsonl", "--out", root / "obs", "--batch-size", 2)
    assert run.returncode == 0, run.stderr
    assert "observed 39 tokens" in run.stdout
    run = reapkit("scores", root / "obs", "--criterion", "reap", "--csv", root / "scores.csv")
    assert run.returncode == 0, run.stderr
    frame = pd.read_csv(root / "scores.csv")
    assert list(frame.columns) == ["layer", "expert", "domain", "value"]
    assert set(frame.domain) == {"all", "code"} and len(frame) == 2 * 2 * 8
    run = reapkit(
        "prune",
        root / "model",
        "--observations",
        root / "obs",
        "--criterion",
        "reap",
        "--ratio",
        0.25,
        "--out",
        root / "pruned",
    )
    assert run.returncode == 0, run.stderr
    pruned = AutoModelForCausalLM.from_pretrained(root / "pruned")
    assert pruned.model.layers[0].mlp.experts.num_experts == 6
    assert json.loads((root / "pruned" / "pruning_plan.json").read_text())["criterion"] == "reap"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ratio", "1.5"], "ratio must be in [0, 1)"),
        (["--ratio", "0.9"], "needs at least top-k"),
        (["--criterion", "nope"], "unknown criterion 'nope'"),
    ],
)
def test_prune_bad_input_gets_one_clear_line(checkpoint, args, message):
    root = checkpoint
    if not (root / "obs").exists():
        reapkit("observe", root / "model", "--data", root / "code.jsonl", "--out", root / "obs")
    run = reapkit("prune", root / "model", "--observations", root / "obs", *args, "--out", root / "bad")
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (root / "bad").exists()


def test_mismatched_observations_and_existing_output(checkpoint, tmp_path):
    root = checkpoint
    tiny_model("qwen3_moe", seed=5).save_pretrained(tmp_path / "other")
    if not (root / "obs").exists():
        reapkit("observe", root / "model", "--data", root / "code.jsonl", "--out", root / "obs")
    run = reapkit("prune", tmp_path / "other", "--observations", root / "obs", "--out", tmp_path / "out")
    assert run.returncode == 2 and "different model" in run.stderr
    (tmp_path / "exists").mkdir()
    run = reapkit("prune", root / "model", "--observations", root / "obs", "--out", tmp_path / "exists")
    assert run.returncode == 2 and "--force" in run.stderr


def test_unknown_architecture_is_explained(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(tmp_path / "llama")
    (tmp_path / "t.jsonl").write_text("[1, 2, 3]\n")
    run = reapkit("observe", tmp_path / "llama", "--data", tmp_path / "t.jsonl", "--out", tmp_path / "obs")
    assert run.returncode == 2
    assert "does not know the MoE architecture 'llama'" in run.stderr and "register_architecture" in run.stderr
    assert "qwen3_moe" in run.stderr


def test_combine_shards_equals_one_pass(tmp_path, capsys):
    from reapkit.data import pad_batches
    from reapkit.observe.observations import Observations
    from reapkit.observe.recorder import observe
    from reapkit.run.cli import main

    model = tiny_model("olmoe")
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (6, 9, 4, 8)]
    shards = [pad_batches(seqs[:2], "code", 2), pad_batches(seqs[2:], "code", 2) + pad_batches(seqs[:1], "math", 1)]
    for i, shard in enumerate(shards):
        observe(model, shard, progress=False).save(tmp_path / f"shard{i}")
    assert main(["combine", str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--out", str(tmp_path / "all")]) == 0
    combined, whole = (
        Observations.load(tmp_path / "all", model=model),
        observe(model, shards[0] + shards[1], progress=False),
    )
    for d in whole.domains:
        for k in whole.stats[d]:
            torch.testing.assert_close(combined.stats[d][k], whole.stats[d][k])
    assert main(["combine", str(tmp_path / "shard0"), "--out", str(tmp_path / "all")]) == 2
    assert "--force" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Plans on the command line: plan, prune --plan, merge, evaluate --plan
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def observed(checkpoint):
    """The module's checkpoint with its observations (`obs`) and a model the plans do not fit (`other`)."""
    root = checkpoint
    if not (root / "obs").exists():
        run = reapkit(
            "observe", root / "model", "--data", root / "code.jsonl", "--out", root / "obs", "--batch-size", 2
        )
        assert run.returncode == 0, run.stderr
    if not (root / "other").exists():
        tiny_model("qwen3_moe", seed=5).save_pretrained(root / "other")
    return root


def cli(*args) -> int:
    from reapkit.run.cli import main

    return main([str(a) for a in args])


def tensors(folder) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def logits(model, seed=0):
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_plan_then_prune_with_it_is_prune_from_observations(observed, tmp_path, capsys):
    from reapkit.observe.observations import Observations
    from reapkit.select.plan import PruningPlan

    root = observed
    assert cli("plan", root / "obs", "--criterion", "reap", "--ratio", 0.25, "--out", tmp_path / "plan.json") == 0
    assert "-> {0: 6, 1: 6}" in capsys.readouterr().out
    plan = PruningPlan.load(tmp_path / "plan.json")
    assert plan.kept == PruningPlan.from_observations(Observations.load(root / "obs"), "reap", ratio=0.25).kept
    assert cli("prune", root / "model", "--plan", tmp_path / "plan.json", "--out", tmp_path / "via_plan") == 0
    assert cli("prune", root / "model", "--observations", root / "obs", "--out", tmp_path / "direct") == 0
    via_plan, direct = tensors(tmp_path / "via_plan"), tensors(tmp_path / "direct")
    assert via_plan.keys() == direct.keys() and all(torch.equal(via_plan[k], direct[k]) for k in direct)
    saved = json.loads((tmp_path / "via_plan" / "pruning_plan.json").read_text())
    assert {int(k): v for k, v in saved["kept"].items()} == plan.kept
    # one plan, one way to make it: the plan options beside --plan are refused before any work
    capsys.readouterr()
    assert cli("prune", root / "model", "--plan", tmp_path / "plan.json", "--ratio", 0.5, "--out", tmp_path / "x") == 2
    assert "--plan is a finished plan; drop --ratio" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_protecting_super_experts_needs_max_signed(observed, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert cli("plan", observed / "obs", "--ratio", 0.25, "--protect-super-experts", "--out", out) != 0
    assert "--statistics max_signed" in capsys.readouterr().err and not out.exists()


def test_llm_compressor_plan_is_applied_and_checked_against_the_model(observed, tmp_path, capsys):
    root = observed
    retained = {"model.layers.0.mlp": [0, 2, 3, 5, 6, 7], "model.layers.1.mlp": [1, 2, 3, 4, 5, 6]}
    (tmp_path / "report.json").write_text(json.dumps(retained))
    args = ("import", "llm-compressor", tmp_path / "report.json", "--model", root / "model")
    assert cli(*args, "--out", tmp_path / "imported.json") == 0
    assert cli("prune", root / "model", "--plan", tmp_path / "imported.json", "--out", tmp_path / "pruned") == 0
    saved = json.loads((tmp_path / "pruned" / "pruning_plan.json").read_text())
    assert saved["kept"] == {"0": retained["model.layers.0.mlp"], "1": retained["model.layers.1.mlp"]}
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").config.num_experts == 6
    capsys.readouterr()
    for how in ([], ["--in-memory"]):  # streamed or loaded, a plan made on another model is refused
        assert cli("prune", root / "other", "--plan", tmp_path / "imported.json", *how, "--out", tmp_path / "x") == 2
        assert "different model" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_global_budget_plan_pruned_in_memory_equals_masking(observed, tmp_path, capsys):
    from reapkit.compress.prune import load_pruned, mask_experts
    from reapkit.select.plan import PruningPlan

    root = observed
    assert cli("plan", root / "obs", "--global-budget", 0.625, "--out", tmp_path / "global.json") == 0
    plan = PruningPlan.load(tmp_path / "global.json")
    assert plan.total_kept == 2 * (8 - 5) and plan.provenance["global_budget"] == 6 and not plan.is_uniform
    assert cli("prune", root / "model", "--plan", tmp_path / "global.json", "--in-memory", "--out", tmp_path / "p") == 0
    assert "load it with reapkit.compress.prune.load_pruned" in capsys.readouterr().out
    pruned = load_pruned(tmp_path / "p")
    assert {i: layer.mlp.experts.num_experts for i, layer in enumerate(pruned.model.layers)} == {
        layer: len(kept) for layer, kept in plan.kept.items()
    }
    model = AutoModelForCausalLM.from_pretrained(root / "model").eval()
    with mask_experts(model, plan):
        torch.testing.assert_close(logits(pruned), logits(model))
    # a stock config.json cannot say it, so streaming refuses and leaves nothing behind
    assert cli("prune", root / "model", "--plan", tmp_path / "global.json", "--out", tmp_path / "s") == 2
    assert "different numbers of experts per layer" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert cli("plan", root / "obs", "--ratio", 0.5, "--margin", 1, "--out", tmp_path / "m.json") == 2
    assert "--margin applies to a global budget" in capsys.readouterr().err


def test_merge_writes_the_model_and_its_plan_which_merge_applies_again(observed, tmp_path, capsys):
    from reapkit.compress.merge import apply_merge
    from reapkit.select.merge import MergePlan

    root = observed
    refused = ("merge", root / "model", "--observations", root / "obs", "--method", "hc_smoe", "--keep", 4)
    assert cli(*refused, "--out", tmp_path / "refused") == 2  # default observations hold no mean outputs
    assert "reapkit observe --statistics output_sum" in capsys.readouterr().err
    obs = ("observe", root / "model", "--data", root / "code.jsonl", "--batch-size", 2, "--statistics", "output_sum")
    assert cli(*obs, "--out", tmp_path / "obs") == 0
    args = ("merge", root / "model", "--observations", tmp_path / "obs", "--method", "hc_smoe")
    assert cli(*args, "--keep", 4, "--out", tmp_path / "merged") == 0
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == [
        "config.json",
        "generation_config.json",
        "merge_plan.json",
        "model.safetensors",
    ]
    plan = MergePlan.load(tmp_path / "merged" / "merge_plan.json")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert plan.keep == merged.config.num_experts == 4
    reference = apply_merge(AutoModelForCausalLM.from_pretrained(root / "model").eval(), plan)
    torch.testing.assert_close(logits(merged), logits(reference))
    again = ("merge", root / "model", "--plan", tmp_path / "merged" / "merge_plan.json")
    assert cli(*again, "--out", tmp_path / "again") == 0
    first, second = tensors(tmp_path / "merged"), tensors(tmp_path / "again")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    capsys.readouterr()
    refusals = [
        (("prune", root / "model", "--plan", tmp_path / "merged" / "merge_plan.json"), "is a merge plan; merge with"),
        (("merge", root / "other", "--plan", tmp_path / "merged" / "merge_plan.json"), "different model"),
        ((*args[:-2], "--method", "nope", "--keep", 4), "choose one of m_smoe, hc_smoe"),
        ((*args, "--ratio", 0.5, "--plan", tmp_path / "merged" / "merge_plan.json"), "drop --observations, --method"),
        (args, "--keep N or --ratio R"),
    ]
    for command, message in refusals:
        assert cli(*command, "--out", tmp_path / "x") == 2, command
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_merge_with_ream_takes_its_options_and_refuses_what_it_cannot_do(observed, tmp_path, capsys):
    from reapkit.select.merge import MergePlan

    root = observed
    args = ("merge", root / "model", "--observations", root / "obs", "--method", "ream", "--keep", 4)
    assert cli(*args, "--out", tmp_path / "refused") == 2  # default observations lack REAM's statistics
    assert "reapkit observe --statistics prob_output_sum router_gram" in capsys.readouterr().err
    obs = ("observe", root / "model", "--data", root / "code.jsonl", "--batch-size", 2)
    assert cli(*obs, "--statistics", "prob_output_sum", "router_gram", "--out", tmp_path / "obs") == 0
    args = ("merge", root / "model", "--observations", tmp_path / "obs", "--method", "ream", "--keep", 4)
    assert cli(*args, "--option", "group_size=1", "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "into 4 groups of at most 1 (group_size)" in err and not (tmp_path / "x").exists()
    assert cli(*args, "--option", "group_size", "--out", tmp_path / "x") == 2
    assert "write NAME=VALUE" in capsys.readouterr().err
    assert cli(*args, "--option", "group_size=2", "--out", tmp_path / "merged") == 0
    plan = MergePlan.load(tmp_path / "merged" / "merge_plan.json")
    assert (
        plan.method == "ream"
        and plan.options == {"group_size": 2}
        and all(len(g) <= 2 for groups in plan.groups.values() for g in groups)
    )
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.num_experts == 4


def test_merge_faithful_methods_rules_and_non_uniform_counts(observed, tmp_path, capsys):
    from reapkit.compress.merge import apply_merge
    from reapkit.compress.prune import load_pruned
    from reapkit.select.merge import MergePlan

    root = observed
    faithful = ("merge", root / "model", "--observations", root / "obs", "--keep", 4)
    assert cli(*faithful, "--method", "hc_smoe_faithful", "--out", tmp_path / "refused") == 2
    assert "reapkit observe --all-token-outputs" in capsys.readouterr().err
    assert cli(*faithful, "--method", "m_smoe_faithful", "--out", tmp_path / "refused") == 2
    assert "--statistics router_distance_sum" in capsys.readouterr().err
    obs = ("observe", root / "model", "--data", root / "code.jsonl", "--batch-size", 2, "--all-token-outputs")
    assert cli(*obs, "--statistics", "router_distance_sum", "--out", tmp_path / "obs") == 0
    args = ("merge", root / "model", "--observations", tmp_path / "obs", "--keep", 4)
    assert cli(*args, "--method", "hc_smoe_faithful", "--rule", "reap", "--out", tmp_path / "hc") == 0
    plan = MergePlan.load(tmp_path / "hc" / "merge_plan.json")
    assert (plan.method, plan.rule, plan.align) == ("hc_smoe_faithful", "reap", False)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hc").config.num_experts == 4
    capsys.readouterr()
    assert cli("merge", root / "model", "--observations", tmp_path / "obs", "--method", "m_smoe_faithful",
               "--keep", 6, "--out", tmp_path / "m") == 0  # fmt: skip
    out = capsys.readouterr().out
    plan = MergePlan.load(tmp_path / "m" / "merge_plan.json")
    assert plan.align and plan.kept_per_layer == {0: 7, 1: 5}  # 6 x 2 layers in all, most where most is routed
    assert "reapkit's per-layer format" in out and "load_pruned" in out  # a stock config cannot say it
    merged = load_pruned(tmp_path / "m")
    reference = apply_merge(AutoModelForCausalLM.from_pretrained(root / "model").eval(), plan)
    torch.testing.assert_close(logits(merged), logits(reference))
    refusals = [
        ((*args, "--method", "hc_smoe_faithful", "--rule", "ties"), "merge rule 'ties' is not offered"),
        (("merge", root / "model", "--plan", tmp_path / "hc" / "merge_plan.json", "--no-align"), "drop --align"),
        ((*args[:-2], "--method", "m_smoe_faithful", "--keep", 1), "at least top-k"),
    ]
    for command, message in refusals:
        assert cli(*command, "--out", tmp_path / "x") == 2, command
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_evaluate_takes_a_pruning_plan_or_a_merge_plan(tmp_path, capsys):
    """On the demo model: `--plan plan.json` scores as `--observations ... --ratio` does; `--plan merge_plan.json`
    scores as the merged checkpoint does, labelled as a merge."""
    pytest.importorskip("lm_eval")
    from reapkit.model.demo import DEMO_PATH

    if not (DEMO_PATH / "config.json").is_file():
        pytest.skip("the bundled demo model is not built")
    obs, plan, merged = tmp_path / "obs", tmp_path / "plan.json", tmp_path / "merged"
    assert cli("observe", "demo", "--data", "code:4,prose:4", "--max-length", 32, "--out", obs) == 0
    assert cli("plan", obs, "--ratio", 0.5, "--out", plan) == 0
    assert cli("merge", "demo", "--observations", obs, "--method", "m_smoe", "--ratio", 0.5, "--out", merged) == 0
    scored = {}
    for name, how in {
        "plan": ("demo", "--plan", plan),
        "observations": ("demo", "--observations", obs, "--ratio", 0.5),
        "merge plan": ("demo", "--plan", merged / "merge_plan.json"),
        "merged checkpoint": (merged,),
    }.items():
        out = tmp_path / f"{name}.csv"
        assert (
            cli("evaluate", *how, "--tasks", "reapkit_heldout", "--include-path", "demo", "--limit", 2, "--out", out)
            == 0
        )
        scored[name] = pd.read_csv(out)
    capsys.readouterr()
    value = {name: rows.set_index("metric")["value"] for name, rows in scored.items()}
    pd.testing.assert_series_equal(value["plan"], value["observations"])
    pd.testing.assert_series_equal(value["merge plan"], value["merged checkpoint"], rtol=1e-5)
    merge_rows = scored["merge plan"]
    assert set(merge_rows.method) == {"merge"} and set(merge_rows.criterion) == {"m_smoe"}
    assert set(merge_rows.ratio) == {0.5} and set(scored["plan"].criterion) == {"reap"}
    assert set(scored["merged checkpoint"].criterion) == {"unpruned"}  # a checkpoint scored as it is
    how = ("--tasks", "reapkit_heldout", "--include-path", "demo", "--limit", 2)
    tied = ("evaluate", "demo", "--plan", merged / "merge_plan.json", "--router", "tied", *how)
    assert cli(*tied, "--out", tmp_path / "tied.csv") == 0  # as the REAP code evaluates a merge
    rows = pd.read_csv(tmp_path / "tied.csv")
    assert set(rows.label) == {"m_smoe:tied"} and set(rows.criterion) == {"m_smoe"}
    assert cli("evaluate", "demo", "--plan", plan, "--router", "tied", *how) == 2
    assert "--router applies to a merge plan" in capsys.readouterr().err


def test_a_mistake_is_one_line_and_a_bug_keeps_its_traceback(observed, tmp_path, capsys):
    """A `ReapkitError` (here: a plugin file that is missing) is one line and exit 2; an exception of any other
    kind (here: a criterion plugin with a bug) is not dressed up as a user mistake."""
    from reapkit.select import criteria

    root = observed
    plugin = tmp_path / "buggy.py"
    plugin.write_text(
        "import reapkit\n"
        "def buggy(stats, seed):\n"
        "    return stats['count'].nosuchmethod()\n"
        "reapkit.register_criterion('buggy', buggy, needs=['count'])\n"
    )
    assert cli("scores", root / "obs", "--plugin", tmp_path / "missing.py") == 2
    err = capsys.readouterr().err
    assert err.startswith("reapkit scores: error: plugin file") and err.count("\n") == 1
    try:
        with pytest.raises(AttributeError, match="nosuchmethod"):
            cli("scores", root / "obs", "--criterion", "buggy", "--plugin", plugin)
    finally:
        criteria._REGISTRY.pop("buggy", None)
    assert "error:" not in capsys.readouterr().err
