"""reapkit.select.merge on real tiny models: identity, shapes, partitions, dominants, router rows, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from reapkit.compress.merge import apply_merge, merge_experts
from reapkit.data import pad_batches
from reapkit.errors import InvalidInput
from reapkit.measure.evaluate import evaluate
from reapkit.model.discover import architecture_for
from reapkit.observe.recorder import observe
from reapkit.select.merge import METHODS, MergePlan, plan_merge

UNIFORM = sorted(name for name, method in METHODS.items() if method.uniform)

ARCHS = ["qwen3_moe", "gpt_oss", "deepseek_v3"]  # plain, transposed + biases, grouped routing + correction bias
_CACHE: dict[str, tuple] = {}


def model_and_obs(name: str):
    """The original tiny model (never modified: tests merge deep copies), its observations and inputs."""
    if name not in _CACHE:
        g = torch.Generator().manual_seed(1)
        seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (16, 12, 16, 9)]
        batches = pad_batches(seqs[:2], "code", 2) + pad_batches(seqs[2:], "prose", 2)
        model = tiny_model(name)
        _CACHE[name] = (model, observe(model, batches, progress=False, statistics="all"), batches)
    return _CACHE[name]


def logits(model, batches):
    with torch.no_grad():
        return [model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits for b in batches]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", ARCHS)
def test_keep_all_experts_is_the_identity(name, method):
    model, obs, batches = model_and_obs(name)
    merged = copy.deepcopy(model)
    if not METHODS[method].uniform and (obs.meta.get("n_group") or 1) > 1:  # grouped routing needs uniform counts
        with pytest.raises(InvalidInput, match="expert groups"):
            merge_experts(merged, obs, method=method, keep=8)
        return
    plan = merge_experts(merged, obs, method=method, keep=8)
    for layer in plan.layers:
        assert plan.groups[layer] == [[e] for e in range(8)]
        assert plan.representatives[layer] == list(range(8))
    for a, b in zip(logits(model, batches), logits(merged, batches)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", UNIFORM)
@pytest.mark.parametrize("name", ARCHS)
def test_merged_model_has_keep_experts_and_runs(name, method):
    model, obs, batches = model_and_obs(name)
    merged = copy.deepcopy(model)
    plan = merge_experts(merged, obs, method=method, keep=4)
    arch = architecture_for(merged)
    assert plan.layers == obs.layers
    for layer, block in arch.moe_blocks(merged):
        experts, router = arch.experts_of(block), arch.router_of(block)
        assert experts.num_experts == 4 and router.weight.shape[0] == 4
        assert all(p.shape[0] == 4 for p in experts.parameters())
        groups = plan.groups[layer]
        assert len(groups) == 4
        assert sorted(e for g in groups for e in g) == list(range(8))  # a partition of the experts
        assert plan.representatives[layer] == sorted(plan.representatives[layer])
        assert all(rep in g for rep, g in zip(plan.representatives[layer], groups))
        assert all(sum(w) == pytest.approx(1.0) and len(w) == len(g) for w, g in zip(plan.weights[layer], groups))
    assert getattr(merged.config, arch.num_experts_key) == 4
    out = logits(merged, batches)
    assert all(torch.isfinite(o).all() for o in out)
    frame = evaluate(merged, batches, reference=model, progress=False)
    assert frame.kl.min() > 0 and frame.agreement.between(0, 1).all()


def test_m_smoe_dominants_are_the_most_frequent():
    model, obs, _ = model_and_obs("qwen3_moe")
    plan = plan_merge(model, obs, method="m_smoe", keep=3)
    counts = obs.pooled()["count"]
    for pos, layer in enumerate(obs.layers):
        c = counts[pos].numpy()
        dominants = plan.representatives[layer]
        others = [e for e in range(8) if e not in dominants]
        assert min(c[dominants]) >= max(c[others])
        assert sorted(dominants) == sorted(int(i) for i in np.argsort(-c, kind="stable")[:3])
        for group in plan.groups[layer]:  # exactly one dominant per group
            assert len(set(group) & set(dominants)) == 1


def test_hc_smoe_groups_match_scipy_clustering():
    from scipy.cluster.hierarchy import cut_tree, linkage

    model, obs, _ = model_and_obs("qwen3_moe")
    plan = plan_merge(model, obs, method="hc_smoe", keep=3)
    pooled = obs.pooled()
    for pos, layer in enumerate(obs.layers):
        mean = (pooled["output_sum"][pos].double() / pooled["count"][pos].double().clamp_min(1)[:, None]).numpy()
        labels = cut_tree(linkage(mean, method="average"), n_clusters=3)[:, 0]
        expected = sorted(sorted(np.flatnonzero(labels == c).tolist()) for c in set(labels))
        assert sorted(plan.groups[layer]) == expected


@pytest.mark.parametrize("name", ["gpt_oss", "deepseek_v3"])
def test_weights_are_frequency_averaged_and_router_rows_kept(name):
    model, obs, _ = model_and_obs(name)
    merged = copy.deepcopy(model)
    plan = merge_experts(merged, obs, method="hc_smoe", keep=4)
    arch = architecture_for(model)
    before, after = dict(arch.moe_blocks(model)), dict(arch.moe_blocks(merged))
    counts = obs.pooled()["count"]
    for pos, layer in enumerate(plan.layers):
        old_e, new_e = arch.experts_of(before[layer]), arch.experts_of(after[layer])
        old_r, new_r = arch.router_of(before[layer]), arch.router_of(after[layer])
        for i, (group, rep) in enumerate(zip(plan.groups[layer], plan.representatives[layer])):
            c = counts[pos, group].double()
            w = c / c.sum() if c.sum() > 0 else torch.full_like(c, 1 / len(group))
            assert plan.weights[layer][i] == pytest.approx(w.tolist())
            assert rep == max(group, key=lambda e: (float(counts[pos, e]), -e))
            for pname, old in old_e.named_parameters():  # includes gpt_oss biases
                expected = (old.detach()[group].double() * w.view(-1, *[1] * (old.dim() - 1))).sum(0).float()
                torch.testing.assert_close(dict(new_e.named_parameters())[pname][i], expected, rtol=1e-5, atol=1e-6)
            for pname, old in list(old_r.named_parameters()) + list(
                old_r.named_buffers()
            ):  # weight, bias, correction bias
                assert torch.equal(
                    dict(list(new_r.named_parameters()) + list(new_r.named_buffers()))[pname][i], old[rep]
                )
    if name == "deepseek_v3":  # grouped routing: merging stays inside each routing group of 4
        for layer in plan.layers:
            assert all(len({e // 4 for e in g}) == 1 for g in plan.groups[layer])
            assert [r // 4 for r in plan.representatives[layer]] == [0, 0, 1, 1]


def test_plan_round_trip_and_apply(tmp_path):
    model, obs, batches = model_and_obs("gpt_oss")
    merged = copy.deepcopy(model)
    plan = merge_experts(merged, obs, method="m_smoe", keep=4)
    loaded = MergePlan.load(plan.save(tmp_path / "merge_plan.json"))
    assert loaded == plan
    again = apply_merge(copy.deepcopy(model), loaded)
    for a, b in zip(logits(merged, batches), logits(again, batches)):
        assert torch.equal(a, b)
    merged.save_pretrained(tmp_path / "ckpt")  # a normal smaller model of the same class
    reloaded = type(merged).from_pretrained(tmp_path / "ckpt")
    for a, b in zip(logits(merged, batches), logits(reloaded, batches)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="not a reapkit merge plan"):
        MergePlan.load(tmp_path / "ckpt" / "config.json")


def test_bad_input():
    model, obs, _ = model_and_obs("qwen3_moe")
    with pytest.raises(ValueError, match=r"from 8 to 9 experts.*at most.*8.*top-k = 2"):
        plan_merge(model, obs, method="m_smoe", keep=9)
    with pytest.raises(ValueError, match=r"from 8 to 1 experts.*at least top-k = 2"):
        plan_merge(model, obs, method="hc_smoe", keep=1)
    with pytest.raises(ValueError, match=r"unknown merge method 'ties'.*'m_smoe'.*'hc_smoe'"):
        merge_experts(model, obs, method="ties", keep=4)
    ds_model, ds_obs, _ = model_and_obs("deepseek_v3")
    with pytest.raises(ValueError, match="n_group"):
        plan_merge(ds_model, ds_obs, method="m_smoe", keep=3)
    with pytest.raises(ValueError, match="different model"):
        plan_merge(ds_model, obs, method="m_smoe", keep=4)
    merged = copy.deepcopy(model)
    plan = merge_experts(merged, obs, method="m_smoe", keep=4)
    with pytest.raises(ValueError, match="made for 8 experts"):
        apply_merge(merged, plan)  # already merged
