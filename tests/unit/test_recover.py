"""Router recovery: only the routers change, the KL to the unpruned model falls, the same seed gives the same
weights, the saved checkpoint loads with stock transformers, and each bad input is refused with nothing written."""

import copy
import json

import pytest
import torch
from tiny_models import tiny_checkpoint, tiny_model
from transformers import AutoModelForCausalLM

from reapkit.compress.prune import remove_experts, save_pruned
from reapkit.compress.recover import check_teacher, recover, router_parameters, save_recovered
from reapkit.errors import InvalidInput, Mismatch, OutputExists
from reapkit.model.layer import moe_layers
from reapkit.observe.recorder import observe
from reapkit.run.cli import main
from reapkit.select.plan import PruningPlan


def pruned_pair(name, batches, keep=4):
    teacher = tiny_model(name)
    plan = PruningPlan.from_observations(observe(teacher, batches, progress=False), "reap", keep=keep)
    return remove_experts(copy.deepcopy(teacher), plan), teacher, plan


#: deepseek_v3: a selection-only correction bias (left unchanged); gpt_oss: a router bias (trained)
@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_recovery_lowers_kl_and_changes_only_routers(name, batches):
    student, teacher, plan = pruned_pair(name, batches)
    before = {k: v.detach().clone() for k, v in [*student.named_parameters(), *student.named_buffers()]}
    teacher_state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    record = recover(student, teacher, batches, epochs=6, lr=1e-2, progress=False)
    assert record.kl_after < record.kl_before * 0.95
    trained = set(router_parameters(student))
    assert trained == set(record.trained) and trained
    routers = [f"model.layers.{layer.index}.mlp.{layer.arch.router}." for layer in moe_layers(student)]
    assert all(any(k.startswith(r) for r in routers) for k in trained)
    assert any(k.endswith(".bias") for k in trained) == (name == "gpt_oss")
    after = dict([*student.named_parameters(), *student.named_buffers()])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trained  # every router weight moved, nothing else did (selection bias included)
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in student.parameters())  # flags given back
    assert all(p.grad is None for p in [*student.parameters(), *teacher.parameters()])  # teacher ran without grad
    bias = moe_layers(student)[0].selection_bias
    assert (bias is not None) == (name == "deepseek_v3")
    assert record.selection_bias.startswith("unchanged") if bias is not None else record.selection_bias == "none"
    positions = sum(int((b.attention_mask[:, :-1] * b.attention_mask[:, 1:]).sum()) for b in batches)
    assert record.calibration_tokens == positions and record.tokens == 6 * positions


def test_same_seed_same_weights(batches):
    student, teacher, _ = pruned_pair("qwen3_moe", batches)
    a, b, c = copy.deepcopy(student), copy.deepcopy(student), copy.deepcopy(student)
    for model, seed in ((a, 1), (b, 1), (c, 2)):
        recover(model, teacher, batches, steps=3, lr=1e-2, seed=seed, progress=False)
    wa, wb, wc = (router_parameters(m) for m in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)  # another seed visits the batches in another order


def test_saved_checkpoint_loads_stock_with_same_logits(batches, tmp_path):
    student, teacher, plan = pruned_pair("qwen3_moe", batches)
    record = recover(student, teacher, batches, steps=2, lr=1e-2, progress=False)
    out = save_recovered(student, plan, record, tmp_path / "recovered")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = batches[0].input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, student(ids).logits)
    saved = json.loads((out / "pruning_plan.json").read_text())["provenance"]["recovery"]
    assert len(saved) == 1 and saved[0]["steps"] == 2 and saved[0]["kl_after"] == record.kl_after
    with pytest.raises(OutputExists):
        save_recovered(student, plan, record, out)


def test_refusals(batches):
    student, teacher, plan = pruned_pair("qwen3_moe", batches)
    with pytest.raises(InvalidInput, match="not pruned"):
        recover(copy.deepcopy(teacher), teacher, batches, progress=False)
    with pytest.raises(Mismatch, match="more experts"):
        recover(teacher, student, batches, progress=False)
    other = tiny_model("qwen3_moe", seed=1)
    with pytest.raises(Mismatch, match="not the model the pruning plan was made from"):
        check_teacher(other, plan)
    unrecorded = copy.deepcopy(plan)
    unrecorded.provenance.pop("observations")
    with pytest.raises(Mismatch, match="router of layer"):
        check_teacher(other, unrecorded, student)
    check_teacher(teacher, unrecorded, student)  # the right teacher passes both checks
    with pytest.raises(InvalidInput, match="steps"):
        recover(student, teacher, batches, steps=0, progress=False)
    with pytest.raises(InvalidInput, match="learning rate"):
        recover(student, teacher, batches, lr=-1.0, progress=False)


def test_cli_end_to_end_and_refusals(tmp_path, capsys):
    model_dir, spec = tiny_checkpoint(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    pruned, out = tmp_path / "pruned", tmp_path / "recovered"
    assert main(["observe", str(model_dir), "--data", spec, "--out", str(tmp_path / "obs")]) == 0
    assert (
        main(["prune", str(model_dir), "--observations", str(tmp_path / "obs"), "--keep", "4", "--out", str(pruned)])
        == 0
    )
    args = ["recover", str(pruned), "--data", spec, "--steps", "3", "--lr", "0.01", "--batch-size", "2"]
    assert main([*args, "--out", str(out)]) == 0
    assert "KL on the calibration tokens" in capsys.readouterr().out
    recovered = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(
        recovered.model.layers[0].mlp.gate.weight,
        AutoModelForCausalLM.from_pretrained(pruned).model.layers[0].mlp.gate.weight,
    )
    record = json.loads((out / "pruning_plan.json").read_text())["provenance"]["recovery"][0]
    assert record["steps"] == 3 and record["kl_after"] < record["kl_before"]

    def refused(argv, message):
        capsys.readouterr()
        assert main(argv) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]  # after any loading bars: the one line
        assert line.startswith("reapkit recover: error:") and message in line, line

    refused([*args, "--out", str(out)], "already exists")
    refused(["recover", str(model_dir), "--data", spec, "--out", str(tmp_path / "a")], "is not a pruned checkpoint")
    other = tmp_path / "other"
    tiny_model("qwen3_moe", seed=1).save_pretrained(other)
    refused(
        [*args, "--teacher", str(other), "--out", str(tmp_path / "b")], "not the model the pruning plan was made from"
    )
    plain = tmp_path / "plain"  # pruned in Python: the plan names no source model
    student = remove_experts(copy.deepcopy(model), PruningPlan.load(pruned / "pruning_plan.json"))
    save_pruned(student, PruningPlan.load(pruned / "pruning_plan.json"), plain)
    data = json.loads((plain / "pruning_plan.json").read_text())
    data["provenance"].pop("source_model", None)
    (plain / "pruning_plan.json").write_text(json.dumps(data))
    refused(["recover", str(plain), "--data", spec, "--out", str(tmp_path / "c")], "--teacher MODEL")
    written = [p.name for p in tmp_path.iterdir() if p.name in "abc" or p.name.startswith((".a.", ".b.", ".c."))]
    assert written == []  # nothing written on refusal, not even a temporary folder


def test_recovery_study_table_reading_and_figure():
    import matplotlib

    matplotlib.use("Agg")
    from reapkit.data import calibration_batches
    from reapkit.model.loading import load_model
    from reapkit.plot.recovery import recovery_figure
    from reapkit.study.recovery import recovery_reading, recovery_study

    model, tokenizer = load_model("demo")  # trained: its held-out text has structure a router can learn
    calibration = calibration_batches("code:4,prose:4", tokenizer, batch_size=4, max_length=48)
    held_out = calibration_batches("code:4,prose:4", tokenizer, batch_size=4, max_length=48, split="validation")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    obs = observe(model, calibration, progress=False)
    table = recovery_study(
        model, obs, calibration, held_out, ratios=[0.25, 0.5], epochs=3, lr=3e-3, resamples=200, progress=False
    )
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # pruned and recovered copies
    assert list(zip(table.ratio, table.metric)) == [(0.25, "loss"), (0.25, "kl"), (0.5, "loss"), (0.5, "kl")]
    kl = table[table.metric == "kl"]
    assert (kl.unpruned == 0).all() and (kl.pruned > kl.recovered).all()  # recovery helps on held-out text here
    expected = (table.pruned - table.recovered) / (table.pruned - table.unpruned)
    assert (expected - table.fraction).abs().max() < 1e-9
    assert ((table.fraction_lo <= table.fraction) & (table.fraction <= table.fraction_hi)).all()
    assert (table.steps == 3 * len(calibration)).all() and (table.train_kl_after < table.train_kl_before).all()
    text = recovery_reading(table)
    row = table.iloc[0]
    for number in (f"{row.unpruned:.3f}", f"{row.pruned:.3f}", f"{row.recovered:.3f}", f"{100 * row.fraction:.0f}%"):
        assert number in text
    assert text.count("With ") == 2
    fig = recovery_figure(table)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["held-out loss", "KL to the unpruned model (nats)"]
