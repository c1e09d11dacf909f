"""Mask == remove == router scores at -inf, on every built-in architecture; saving and reloading."""

import hashlib
import json

import pytest
import torch
from tiny_models import ARCHS, auto_class, tiny_model
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from reapkit.compress.prune import _text_config_path, mask_experts, prune_checkpoint, remove_experts, save_pruned
from reapkit.errors import Mismatch
from reapkit.model.discover import architecture_for
from reapkit.model.layer import moe_layers
from reapkit.observe.recorder import observe
from reapkit.select.plan import PruningPlan


def logits(model, batch):
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if "logits" in out else out.last_hidden_state  # an encoder (openai_privacy_filter)


def plan_for(model, batches, keep=4):
    return PruningPlan.from_observations(observe(model, batches, progress=False), "reap", keep=keep)


#: types whose gate values are not renormalised over the chosen experts, so a -inf selection bias alone
#: (which leaves the softmax denominator alone) is not the same as -inf router scores
GATES_SEE_ALL_SCORES = {"ernie4_5_moe": "gates divided by max(sum of top-k, norm_min), not renormalised"}


@pytest.mark.parametrize("name", ARCHS)
def test_remove_equals_mask(name, batches):
    model = tiny_model(name)
    plan = plan_for(model, batches)
    original = logits(model, batches[0])
    with mask_experts(model, plan):
        masked = logits(model, batches[0])
    assert torch.equal(logits(model, batches[0]), original), "masking must be undone on exit"
    assert not torch.allclose(masked, original, atol=1e-4), "pruning half the experts should change the logits"
    arch = architecture_for(model)
    biases = [(arch.correction_bias_of(block), plan.removed(layer)) for layer, block in arch.moe_blocks(model)]
    if biases[0][0] is not None and name not in GATES_SEE_ALL_SCORES:  # masking == removed bias entries at -inf
        saved = [bias.detach().clone() for bias, _ in biases]
        with torch.no_grad():
            for bias, removed in biases:
                bias[..., removed] = float("-inf")
        torch.testing.assert_close(logits(model, batches[0]), masked, rtol=0, atol=1e-6)
        with torch.no_grad():
            for (bias, _), value in zip(biases, saved):
                bias.copy_(value)
    remove_experts(model, plan)
    torch.testing.assert_close(logits(model, batches[0]), masked, rtol=0, atol=2e-5)
    for _, block in arch.moe_blocks(model):
        assert arch.experts_of(block).num_experts == 4
        assert arch.experts_of(block).down_proj.shape[0] == 4
        assert arch.router_weight_of(block).shape[0] == 4
    assert getattr(model.config.get_text_config(), arch.num_experts_key) == 4


@pytest.mark.parametrize("norm", [True, False])
def test_mask_equals_minus_infinity_router_scores(norm, batches):
    """Reference: the qwen3 routing formula recomputed with removed experts' logits at -inf."""
    model = tiny_model("qwen3_moe", norm_topk_prob=norm)
    plan = plan_for(model, batches)
    arch = architecture_for(model)

    def reference_router(removed):
        def hook(module, args, output):
            router_logits = F.linear(args[0].reshape(-1, module.hidden_dim), module.weight)
            router_logits[:, removed] = float("-inf")
            probs = torch.softmax(router_logits, dim=-1, dtype=torch.float)
            top, idx = torch.topk(probs, module.top_k, dim=-1)
            if module.norm_topk_prob:
                top = top / top.sum(-1, keepdim=True)
            return router_logits, top.to(router_logits.dtype), idx

        return hook

    hooks = [
        arch.router_of(block).register_forward_hook(reference_router(plan.removed(layer)))
        for layer, block in arch.moe_blocks(model)
    ]
    expected = logits(model, batches[0])
    for h in hooks:
        h.remove()
    with mask_experts(model, plan):
        torch.testing.assert_close(logits(model, batches[0]), expected, rtol=0, atol=1e-6)


def test_mask_equals_minus_infinity_selection_scores_grouped(batches):
    """deepseek_v3 with n_group=2: selection scores (sigmoid + correction bias) at -inf."""
    model = tiny_model("deepseek_v3")
    plan = plan_for(model, batches, keep=4)
    assert all(sum(e < 4 for e in kept) == 2 for kept in plan.kept.values()), "2 experts kept in each group"
    arch = architecture_for(model)
    with mask_experts(model, plan):
        masked = logits(model, batches[0])
    with torch.no_grad():
        for layer, block in arch.moe_blocks(model):
            arch.correction_bias_of(block)[plan.removed(layer)] = float("-inf")
    torch.testing.assert_close(masked, logits(model, batches[0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ARCHS)
def test_saved_checkpoint_reloads_with_stock_transformers(name, batches, tmp_path):
    model = tiny_model(name)
    plan = plan_for(model, batches, keep=6)
    remove_experts(model, plan)
    expected = logits(model, batches[0])
    save_pruned(model, plan, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    for key in _text_config_path(model.config):  # multimodal: the decoder's config is nested
        config = config[key]
    assert config[architecture_for(model).num_experts_key] == 6
    reloaded = auto_class(name).from_pretrained(tmp_path / "pruned").eval()
    assert type(reloaded) is type(model), "reloads as the full model of its Auto class"
    torch.testing.assert_close(logits(reloaded, batches[0]), expected, rtol=0, atol=1e-5)
    assert PruningPlan.load(tmp_path / "pruned" / "pruning_plan.json").kept == plan.kept


def test_prune_checkpoint_keeps_source_and_published_key(batches, tmp_path):
    source = tmp_path / "source"
    model = tiny_model("qwen3_moe")
    model.save_pretrained(source)
    config = json.loads((source / "config.json").read_text())
    config["num_experts"] = config.pop("num_local_experts")  # as published Qwen3-MoE checkpoints say it
    (source / "config.json").write_text(json.dumps(config))
    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()}  # noqa: E731
    before = digest()
    plan = plan_for(model, batches, keep=6)
    prune_checkpoint(source, plan, tmp_path / "out")
    assert digest() == before
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["num_experts"] == 6 and written.get("num_local_experts", 6) == 6
    with pytest.raises(FileExistsError, match="force"):
        prune_checkpoint(source, plan, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source"], "no half-written siblings"


def test_plan_for_other_model_is_refused(batches):
    model = tiny_model("qwen3_moe")
    plan = plan_for(model, batches)
    remove_experts(model, plan)
    with pytest.raises(Mismatch, match="made for 8 experts"):
        remove_experts(model, plan)
    elsewhere = PruningPlan({5: plan.kept[0]}, {5: 8}, "reap")  # layer 5 is not an MoE layer of this model
    with pytest.raises(Mismatch, match="layer 5, which is not an MoE layer"):
        with mask_experts(model, elsewhere):
            pass


def _matmul_router(router):
    """qwen3_moe's router forward with its logits from `@` instead of a linear map (what a custom router may do)."""

    def forward(hidden_states):
        logits = hidden_states.reshape(-1, router.hidden_dim) @ router.weight.T
        top, index = torch.topk(torch.softmax(logits, dim=-1, dtype=torch.float), router.top_k, dim=-1)
        return logits, (top / top.sum(-1, keepdim=True)).to(logits.dtype), index

    return forward


def test_mask_that_masks_nothing_fails_loudly(batches):
    model = tiny_model("qwen3_moe")
    plan = plan_for(model, batches)
    layer = moe_layers(model)[1]
    layer.router.forward = own = _matmul_router(layer.router)
    with pytest.raises(RuntimeError, match="masked nothing in layer 1"):
        with mask_experts(model, plan):
            logits(model, batches[0])
    assert layer.router.__dict__["forward"] is own, "the router's own forward is put back"


@pytest.mark.parametrize("name", ARCHS)
def test_layer_view_finds_expert_tensors_by_the_record(name):
    model = tiny_model(name)
    hidden = model.config.get_text_config().hidden_size
    for layer in moe_layers(model):
        tensors = layer.expert_tensors()
        assert all(t.shape[0] == layer.num_experts for t in tensors.values())
        assert tuple(layer.router_weight.shape) == (layer.num_experts, hidden)
        assert layer.block.get_parameter(layer.router_weight_path) is layer.router_weight
        assert tensors[layer.router_weight_path] is layer.router_weight
        assert set(layer.expert_tensors(router=False)) == {
            f"{layer.arch.experts}.{n}" for n, _ in layer.experts.named_parameters()
        }


def test_remove_equals_mask_when_experts_and_hidden_size_coincide(batches):
    """gemma4's router holds a [hidden] scale beside its [E] per-expert scale: with E == hidden only the record tells them apart."""
    model = tiny_model("gemma4", num_experts=64)
    assert model.config.get_text_config().hidden_size == 64
    plan = plan_for(model, batches, keep=32)
    with mask_experts(model, plan):
        masked = logits(model, batches[0])
    remove_experts(model, plan)
    torch.testing.assert_close(logits(model, batches[0]), masked, rtol=0, atol=2e-5)
    router = moe_layers(model)[0].router
    assert router.scale.shape == (64,) and router.per_expert_scale.shape == (32,)


def test_non_uniform_plan_cannot_be_saved(batches, tmp_path):
    model = tiny_model("qwen3_moe")
    obs = observe(model, batches, progress=False)
    plan = PruningPlan.from_observations(obs, "reap", counts={0: 4, 1: 6})
    remove_experts(model, plan)
    assert [len(plan.kept[0]), len(plan.kept[1])] == [4, 6]
    logits(model, batches[0])  # the in-memory model runs
    with pytest.raises(ValueError, match="stock config.json cannot express"):
        save_pruned(model, plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_global_budget_plan_saves_and_loads_with_reapkit(batches, tmp_path):
    from reapkit.compress.prune import load_pruned, save_non_uniform

    model = tiny_model("qwen3_moe")
    obs = observe(model, batches, progress=False)
    plan = PruningPlan.from_global_budget(obs, "reap", total=11, margin=1)
    assert plan.total_kept == 11 and all(len(k) >= 3 for k in plan.kept.values()) and not plan.is_uniform
    remove_experts(model, plan)
    expected = logits(model, batches[0])
    save_non_uniform(model, plan, tmp_path / "nu")
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(tmp_path / "nu")
    torch.testing.assert_close(logits(load_pruned(tmp_path / "nu"), batches[0]), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"outside \[6, 16\]"):
        PruningPlan.from_global_budget(obs, "reap", total=5, margin=1)


def test_nested_masks_combine_and_unwind(batches):
    model = tiny_model("qwen3_moe")
    obs = observe(model, batches, progress=False)
    outer = PruningPlan.from_observations(obs, "reap", keep=6)
    inner = PruningPlan.from_observations(obs, "frequency", keep=6)
    both = PruningPlan(
        {layer: sorted(set(outer.kept[layer]) & set(inner.kept[layer])) for layer in outer.layers},
        outer.num_experts,
        "both",
    )
    original = logits(model, batches[0])
    with mask_experts(model, outer):
        outer_logits = logits(model, batches[0])
        with mask_experts(model, inner):
            with mask_experts(model, both):
                union = logits(model, batches[0])
        torch.testing.assert_close(logits(model, batches[0]), outer_logits, rtol=0, atol=0)
    assert torch.equal(logits(model, batches[0]), original)
    with mask_experts(model, both):
        torch.testing.assert_close(union, logits(model, batches[0]), rtol=0, atol=1e-6)


def test_save_pruned_refuses_a_model_whose_experts_were_not_removed(batches, tmp_path):
    model = tiny_model("qwen3_moe")
    plan = plan_for(model, batches, keep=6)
    with pytest.raises(ValueError, match="call remove_experts"):
        save_pruned(model, plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mtp_layers_are_left_out_and_said_so(batches, tmp_path):
    """transformers never builds GLM's MTP layer: the pruned checkpoint has none, its config says 0, the plan says why."""
    model = tiny_model("glm4_moe", num_nextn_predict_layers=1)
    plan = plan_for(model, batches, keep=6)
    remove_experts(model, plan)
    save_pruned(model, plan, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["num_nextn_predict_layers"] == 0 and config["n_routed_experts"] == 6
    assert "left out" in PruningPlan.load(tmp_path / "pruned" / "pruning_plan.json").provenance["mtp_layers"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    torch.testing.assert_close(logits(reloaded, batches[0]), logits(model, batches[0]), rtol=0, atol=1e-5)
