"""Faithful merging on real tiny models: its statistics, neuron alignment, groupings, rules, router forms, reloading."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from reapkit.compress.align import alignment_permutation, group_distances, neuron_rows, permute_neurons
from reapkit.compress.merge import apply_merge, merge_experts
from reapkit.compress.prune import load_pruned, save_non_uniform, save_pruned
from reapkit.data import pad_batches
from reapkit.errors import InvalidInput, MissingStatistic
from reapkit.model.layer import moe_layers
from reapkit.observe.recorder import observe
from reapkit.select.grouping import per_layer
from reapkit.select.merge import METHODS, plan_merge
from reapkit.select.merge_methods import MERGE_METHODS, MergeMethod, register_merge_method

_CACHE: dict[str, tuple] = {}


def model_and_obs(name: str):
    """A tiny model (never modified), its observations with every statistic, and its padded batches."""
    if name not in _CACHE:
        g = torch.Generator().manual_seed(2)
        seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (16, 11, 16, 9)]
        batches = pad_batches(seqs[:2], "code", 2) + pad_batches(seqs[2:], "prose", 2)
        model = tiny_model(name)
        _CACHE[name] = (model, observe(model, batches, progress=False, statistics="all"), batches)
    return _CACHE[name]


def captured(model, batches):
    """The MoE layers, and per layer position the router logits and the experts' input of each batch."""
    layers = moe_layers(model)
    logits, inputs = {p: [] for p in range(len(layers))}, {p: [] for p in range(len(layers))}
    hooks = []
    for pos, layer in enumerate(layers):
        index = layer.arch.logits_index
        hooks.append(layer.router.register_forward_hook(lambda m, a, o, p=pos, i=index: logits[p].append(o[i])))
        hooks.append(layer.experts.register_forward_hook(lambda m, a, o, p=pos: inputs[p].append(a[0])))
    try:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    finally:
        for h in hooks:
            h.remove()
    return layers, logits, inputs


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])  # plain; transposed, interleaved gate/up, biases
def test_all_token_and_router_statistics_match_a_plain_recomputation(name):
    model, obs, batches = model_and_obs(name)
    layers, logits, inputs = captured(model, batches)
    for pos, layer in enumerate(layers):
        experts, E = layer.experts, layer.num_experts
        outputs = torch.zeros(E, obs.stats["code"]["all_output_sum"].shape[-1], dtype=torch.float64)
        gram = torch.zeros(E, E, dtype=torch.float64)
        distance = torch.zeros(E, E, dtype=torch.float64)
        for b, router_logits, experts_input in zip(batches, logits[pos], inputs[pos]):
            real = b.attention_mask.reshape(-1).bool()
            x = experts_input[real]
            with torch.no_grad():
                for e in range(E):  # the experts module itself, every token sent to expert e with gate 1
                    index = torch.full((len(x), 1), e)
                    outputs[e] += experts(x, index, torch.ones(len(x), 1)).double().sum(0)
            z = router_logits.reshape(-1, E)[real].double()
            gram += z.T @ z
            # the REAP observer: 1 - cos between logit columns over the batch's tokens, weighted by its tokens
            distance += len(z) * (1 - F.cosine_similarity(z.T[:, None, :], z.T[None, :, :], dim=-1))
        pooled = obs.pooled()
        torch.testing.assert_close(pooled["all_output_sum"][pos].double(), outputs, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pooled["router_gram"][pos], gram)
        torch.testing.assert_close(pooled["router_distance_sum"][pos], distance)
    # one batch: the Gram matrix gives the same cosine as the per-batch statistic (several batches: approximately)
    one = observe(model, batches[:1], progress=False, statistics=["router_gram", "router_distance_sum"])
    g, d = one.pooled()["router_gram"][0], one.pooled()["router_distance_sum"][0] / one.pooled()["tokens"][0]
    norms = g.diagonal().sqrt()
    torch.testing.assert_close(1 - g / (norms[:, None] * norms[None, :]), d)


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])
def test_alignment_undoes_a_permutation_of_neurons_exactly(name):
    model = copy.deepcopy(model_and_obs(name)[0])
    experts = moe_layers(model)[0].experts
    size = neuron_rows(experts, 0)["down"].shape[0]
    x = torch.randn(10, experts.down_proj.shape[1] if not experts.is_transposed else experts.down_proj.shape[2])
    index, ones = torch.full((10, 1), 1), torch.ones(10, 1)
    for tensor in [t for t in experts.parameters()]:
        tensor.data[1] = tensor.data[0]  # expert 1 := expert 0 ...
    with torch.no_grad():
        before = experts(x, index, ones)
    shuffle = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    permute_neurons(experts, 1, shuffle)  # ... with its neurons shuffled: the same function, other weights
    with torch.no_grad():
        torch.testing.assert_close(experts(x, index, ones), before)
    assert not torch.equal(neuron_rows(experts, 1)["down"], neuron_rows(experts, 0)["down"])
    perm = alignment_permutation(experts, member=1, dominant=0)
    assert torch.equal(shuffle[perm], torch.arange(size))  # the shuffle undone
    frame = group_distances(experts, [0, 1], dominant=0)
    assert frame.before[0] > 0 and frame.after[0] < 1e-5 * frame.before[0]  # cdist rounds
    permute_neurons(experts, 1, perm)
    for tensor in experts.parameters():
        assert torch.equal(tensor.data[1], tensor.data[0])


def test_hc_smoe_faithful_matches_a_recomputation_from_the_paper():
    from scipy.cluster.hierarchy import cut_tree, linkage

    model, obs, _ = model_and_obs("qwen3_moe")
    plan = plan_merge(model, obs, method="hc_smoe_faithful", keep=3)
    pooled = obs.pooled()
    for pos, layer in enumerate(obs.layers):
        mean = (pooled["all_output_sum"][pos].double() / pooled["tokens"][pos].double()).numpy()  # all tokens
        labels = cut_tree(linkage(mean, method="average", metric="euclidean"), n_clusters=3)[:, 0]
        expected = sorted(sorted(np.flatnonzero(labels == c).tolist()) for c in set(labels))
        assert sorted(plan.groups[layer]) == expected
        counts = pooled["count"][pos].double()
        for members, w in zip(plan.groups[layer], plan.weights[layer]):
            assert w == pytest.approx((counts[members] / counts[members].sum()).tolist())
    assert plan.align is False and plan.provenance["reference_router"] == "tied"


def test_m_smoe_faithful_selects_dominants_globally_and_assigns_by_second_order_distance():
    model, obs, _ = model_and_obs("qwen3_moe")
    plan = plan_merge(model, obs, method="m_smoe_faithful", keep=3)
    pooled = obs.pooled()
    counts = pooled["count"].double().numpy()
    L = len(obs.layers)
    assert sum(plan.kept_per_layer.values()) == 3 * L and plan.align
    dominants = {(pos, r) for pos, layer in enumerate(plan.layers) for r in plan.representatives[layer]}
    for pos in range(L):
        assert (pos, int(np.argmax(counts[pos]))) in dominants  # each layer's most frequent expert
    others = [counts[p, e] for p in range(L) for e in range(8) if (p, e) not in dominants]
    firsts = {(p, int(np.argmax(counts[p]))) for p in range(L)}
    assert min(counts[p, e] for p, e in dominants - firsts) >= max(others)  # then the globally most frequent
    for pos, layer in enumerate(plan.layers):
        d = (pooled["router_distance_sum"][pos] / pooled["tokens"][pos]).numpy()
        unit = d / np.linalg.norm(d, axis=1, keepdims=True)
        second = 1 - unit @ unit.T
        reps = plan.representatives[layer]
        for members, rep in zip(plan.groups[layer], reps):
            for e in members:
                if e != rep:
                    assert reps[int(np.argmin(second[e, reps]))] == rep


def test_rules_weights_and_refusals():
    model, obs, _ = model_and_obs("qwen3_moe")
    pooled = obs.pooled()
    average = plan_merge(model, obs, method="hc_smoe_faithful", keep=3, rule="average")
    reap = plan_merge(model, obs, method="hc_smoe_faithful", keep=3, rule="reap")
    for pos, layer in enumerate(obs.layers):
        score = (pooled["reap_sum"][pos] / pooled["count"][pos].clamp_min(1)).double()
        for members, wa, wr in zip(average.groups[layer], average.weights[layer], reap.weights[layer]):
            assert wa == pytest.approx([1 / len(members)] * len(members))
            if score[members].sum() > 0:
                assert wr == pytest.approx((score[members] / score[members].sum()).tolist())
    assert reap.rule == "reap" and reap.to_pruning_plan().provenance["merge"]["rule"] == "reap"
    with pytest.raises(InvalidInput, match="merge rule 'ties'.*choose one of frequency, average, reap"):
        plan_merge(model, obs, method="hc_smoe_faithful", keep=3, rule="ties")
    lacking = observe(model, model_and_obs("qwen3_moe")[2], progress=False)
    with pytest.raises(MissingStatistic, match="--all-token-outputs"):
        plan_merge(model, lacking, method="hc_smoe_faithful", keep=3)
    with pytest.raises(MissingStatistic, match="--statistics router_distance_sum"):
        plan_merge(model, lacking, method="m_smoe_faithful", keep=3)
    with pytest.raises(InvalidInput, match="fewer than top-k = 2"):  # a layer left with one expert
        plan_merge(model, obs, method="m_smoe_faithful", keep=2)


def test_tied_router_form_keeps_every_slot_holding_the_merged_expert():
    model, obs, batches = model_and_obs("deepseek_v3")  # selection bias, shared experts
    plan = plan_merge(model, obs, method="hc_smoe_faithful", keep=4)
    small = apply_merge(copy.deepcopy(model), plan)
    tied = apply_merge(copy.deepcopy(model), plan, router="tied")
    for (layer, s), t, o in zip([(lay.index, lay) for lay in moe_layers(small)], moe_layers(tied), moe_layers(model)):
        assert t.num_experts == 8
        torch.testing.assert_close(t.router_weight, o.router_weight)  # the router unchanged
        for name, tensor in t.expert_tensors(router=False).items():
            merged = s.expert_tensors(router=False)[name]
            for i, members in enumerate(plan.groups[layer]):
                for e in members:
                    assert torch.equal(tensor[e], merged[i])
    with torch.no_grad():  # the two forms differ only where a token selected two members of one group
        a = tied(input_ids=batches[0].input_ids).logits
        b = small(input_ids=batches[0].input_ids).logits
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    with pytest.raises(InvalidInput, match="router treatment 'shared'"):
        apply_merge(copy.deepcopy(model), plan, router="shared")


def test_a_registered_method_is_planned_and_applied():
    @per_layer
    def first_half(inputs, pos, ids, keep):
        return [[i] for i in range(keep - 1)] + [list(range(keep - 1, len(ids)))]

    register_merge_method(
        MergeMethod("first_half", "keep the first experts, merge the rest", "none", ("count",), first_half)
    )
    try:
        model, obs, _ = model_and_obs("qwen3_moe")
        assert "first_half" in METHODS
        plan = plan_merge(model, obs, method="first_half", keep=3, rule="average")
        assert all(plan.groups[layer] == [[0], [1], list(range(2, 8))] for layer in plan.layers)
    finally:
        del MERGE_METHODS["first_half"]
    with pytest.raises(InvalidInput, match="unknown merge method 'first_half'"):
        plan_merge(model, obs, method="first_half", keep=3)


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss", "deepseek_v3", "glm4_moe", "qwen2_moe"])
def test_merged_checkpoints_reload_with_stock_transformers(name, tmp_path):
    """Every method: plain; transposed + biases; selection bias + shared experts (+ grouped routing); shared expert."""
    model, obs, batches = model_and_obs(name)
    for method in sorted(METHODS):
        spec = METHODS[method]
        if not spec.uniform and (obs.meta.get("n_group") or 1) > 1:
            continue  # refused: tested in test_merge
        merged = copy.deepcopy(model)
        plan = merge_experts(merged, obs, method=method, keep=4)
        out = tmp_path / method
        if plan.to_pruning_plan().is_uniform:
            save_pruned(merged, plan.to_pruning_plan(), out)
            reloaded = type(merged).from_pretrained(out)  # stock transformers
        else:
            save_non_uniform(merged, plan.to_pruning_plan(), out)
            reloaded = load_pruned(out)
        with torch.no_grad():
            for b in batches[:1]:
                a = merged(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
                r = reloaded(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
                torch.testing.assert_close(a, r)


def test_alignment_distances_and_merge_fidelity():
    from reapkit.measure.merging import alignment_distances, merge_fidelity

    model, obs, batches = model_and_obs("qwen3_moe")
    plan = plan_merge(model, obs, method="m_smoe_faithful", keep=3)
    distances = alignment_distances(model, plan)
    members = sum(len(g) - 1 for layer in plan.layers for g in plan.groups[layer])
    assert len(distances) == members and (distances.after <= distances.before * (1 + 1e-3)).all()
    assert (distances.after < distances.before).any()
    frame = merge_fidelity(model, plan, batches)
    own = frame[(frame.member == frame.representative) & (frame.expert == "representative")]
    assert len(own) and (own.rel_error < 1e-6).all() and (own.cosine > 1 - 1e-6).all()
    identity = merge_fidelity(model, plan_merge(model, obs, method="hc_smoe_faithful", keep=8), batches)
    assert (identity.rel_error < 1e-6).all()  # nothing merged: each expert against itself
    merged = frame[(frame.member != frame.representative)].pivot_table(
        index=["layer", "member"], columns="expert", values="rel_error"
    )
    assert (merged.merged > 0).all() and (merged.representative > 0).all()
