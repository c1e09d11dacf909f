"""Observed statistics against a plain-PyTorch recomputation from the model's own router outputs."""

import doctest
import importlib
import inspect
import json
from pathlib import Path

import pytest
import torch
from tiny_models import ARCHS, tiny_model

from reapkit.errors import InvalidInput, Mismatch, MissingStatistic
from reapkit.model.discover import architecture_for
from reapkit.model.records import SCORING
from reapkit.observe.observations import Observations
from reapkit.observe.recorder import observe, recording
from reapkit.observe.resume import PartialObservations
from reapkit.observe.statistics import DEFAULT, FROM_WEIGHTS, OPTIONAL, STATISTICS, markdown


def _expert_output(experts, j, x):
    """Expert j's output on inputs x [N, H]: the model's own experts forward, routed to j with gate 1."""
    forward = getattr(type(experts).forward, "__wrapped__", type(experts).forward)
    index = torch.full((len(x), 1), j, dtype=torch.long)
    return forward(experts, x, index, torch.ones(len(x), 1, dtype=x.dtype))


def _llama4_output(experts, j, x):
    gate, up = (x @ experts.gate_up_proj[j]).chunk(2, dim=-1)
    return (up * experts.act_fn(gate)) @ experts.down_proj[j]


def _experts_inputs(experts, args, kwargs):
    """(hidden_states, top_k_index, top_k_weights) as the block passed them to its experts."""
    forward = getattr(type(experts).forward, "__wrapped__", type(experts).forward)
    bound = inspect.signature(forward).bind(experts, *args, **kwargs)
    return list(bound.arguments.values())[1:4]


def reference_stats(model, batches):
    """Recompute the statistics with plain PyTorch from captured router outputs and experts inputs."""
    arch = architecture_for(model)
    blocks = list(arch.moe_blocks(model))
    L, E = len(blocks), arch.experts_of(blocks[0][1]).num_experts
    H = model.config.get_text_config().hidden_size
    ref = {}
    for batch in batches:
        captured = {}
        hooks = []
        for pos, (_, block) in enumerate(blocks):
            experts = arch.experts_of(block)
            if arch.gated_input:
                hooks.append(
                    block.register_forward_pre_hook(
                        lambda m, a, pos=pos, store=captured: store.__setitem__(("x", pos), a[0])
                    )
                )
            else:
                hooks.append(
                    experts.register_forward_pre_hook(
                        lambda m, a, k, pos=pos, store=captured: store.__setitem__(
                            ("e", pos), _experts_inputs(m, a, k)
                        ),
                        with_kwargs=True,
                    )
                )
            hooks.append(
                arch.router_of(block).register_forward_hook(
                    lambda m, a, o, pos=pos, store=captured: store.__setitem__(("r", pos), o)
                )
            )
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        for h in hooks:
            h.remove()
        acc = ref.setdefault(
            batch.domain,
            {
                k: torch.zeros(L, E, dtype=torch.float64)
                for k in (
                    "count",
                    "gate_sum",
                    "norm_sum",
                    "reap_sum",
                    "sq_norm_sum",
                    "max_activation",
                    "max_signed",
                    "prob_sum",
                )
            },
        )
        acc.setdefault("output_sum", torch.zeros(L, E, H, dtype=torch.float64))
        acc.setdefault("coselect", torch.zeros(L, E, E, dtype=torch.float64))
        valid = batch.attention_mask.reshape(-1).bool()
        for pos, (_, block) in enumerate(blocks):
            out = captured[("r", pos)]
            experts = arch.experts_of(block)
            if arch.gated_input:
                x = captured[("x", pos)].reshape(-1, H)
                scores, logits = out
                idx = torch.topk(logits, block.top_k, dim=1).indices
                gates = scores.gather(1, idx)
            else:
                x, idx, gates = captured[("e", pos)]
                logits = out[arch.logits_index] if isinstance(out, (tuple, list)) else out
                x, idx, gates = x.reshape(-1, H), idx.reshape(len(valid), -1), gates.reshape(len(valid), -1)
            probs = SCORING[arch.scoring](logits.float().reshape(len(valid), -1))
            acc["prob_sum"][pos] += probs[valid].double().sum(0)
            for t in valid.nonzero().flatten().tolist():
                for i in idx[t].tolist():  # top-k co-selection: every pair of experts this token chose
                    for j in idx[t].tolist():
                        acc["coselect"][pos, i, j] += 1
                for k in range(idx.shape[1]):
                    j, g = int(idx[t, k]), float(gates[t, k])
                    with torch.no_grad():
                        f = (
                            _llama4_output(experts, j, g * x[t : t + 1]) / g
                            if arch.gated_input
                            else _expert_output(experts, j, x[t : t + 1])
                        )[0].double()
                    acc["count"][pos, j] += 1
                    acc["gate_sum"][pos, j] += g
                    acc["norm_sum"][pos, j] += f.norm()
                    acc["reap_sum"][pos, j] += g * f.norm()
                    acc["sq_norm_sum"][pos, j] += f.norm() ** 2
                    acc["max_activation"][pos, j] = max(acc["max_activation"][pos, j], f.abs().max())
                    acc["max_signed"][pos, j] = max(acc["max_signed"][pos, j], f.max())  # from 0, as REAP's
                    acc["output_sum"][pos, j] += f
    return ref


@pytest.mark.parametrize("name", ARCHS)
def test_statistics_match_plain_recomputation(name, batches):
    model = tiny_model(name)
    b = batches[0]
    with torch.no_grad():
        plain = model(input_ids=b.input_ids, attention_mask=b.attention_mask)[0]
        with recording(model) as rec:
            rec.start_batch("x", b.attention_mask)
            observed = model(input_ids=b.input_ids, attention_mask=b.attention_mask)[0]
    torch.testing.assert_close(observed, plain, rtol=0, atol=1e-5, msg=f"observing changed {name}'s outputs")
    obs = observe(model, batches, progress=False, statistics="all")
    ref = reference_stats(model, batches)
    assert obs.domains == sorted(ref) == ["code", "prose"]
    for domain in ref:
        for stat, expected in ref[domain].items():
            got = obs.stats[domain][stat].double()
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=f"{name} {domain} {stat}")
        tokens = sum(int(b.attention_mask.sum()) for b in batches if b.domain == domain)
        assert obs.stats[domain]["tokens"].tolist() == [tokens] * len(obs.layers)
        assert obs.stats[domain]["count"].sum(1).tolist() == [tokens * obs.top_k] * len(obs.layers)
        coselection = obs.coselection([domain])
        assert coselection.shape == (len(obs.layers), obs.num_experts[0], obs.num_experts[0])
        assert (coselection.diagonal(axis1=1, axis2=2) == obs.stats[domain]["count"].numpy()).all()


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss", "deepseek_v3", "llama4_text"])
def test_observing_does_not_change_the_model(name, batches):
    model = tiny_model(name)
    b = batches[0]
    with torch.no_grad():
        plain = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        with recording(model) as rec:
            rec.start_batch("x", b.attention_mask)
            observed = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        after = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    torch.testing.assert_close(observed, plain, rtol=0, atol=1e-5)
    assert torch.equal(after, plain)


def test_padding_never_counts(batches):
    model = tiny_model("qwen3_moe")
    a = observe(model, batches, progress=False, statistics="all")
    for b in batches:
        b.input_ids[b.attention_mask == 0] = 50  # different padding content
    c = observe(model, batches, progress=False, statistics="all")
    for d in a.domains:
        for k in a.stats[d]:
            torch.testing.assert_close(a.stats[d][k], c.stats[d][k])


def test_dense_layers_are_skipped(batches):
    model = tiny_model("deepseek_v3")  # first_k_dense_replace=1
    obs = observe(model, batches, progress=False)
    assert obs.layers == [1, 2]


def test_observations_add_up(batches):
    model = tiny_model("mixtral")
    whole = observe(model, batches, progress=False, statistics="all")
    first, second = (observe(model, part, progress=False, statistics="all") for part in (batches[:2], batches[2:]))
    parts = first + second
    assert set(parts.stats["code"]) == set(STATISTICS) - set(FROM_WEIGHTS)  # those come from the weights
    for d in whole.domains:
        for k in whole.stats[d]:
            torch.testing.assert_close(parts.stats[d][k], whole.stats[d][k])
    assert len(parts.meta["calibration"]["parts"]) == 2
    assert parts.meta["missing"] == {}
    pooled = whole.pooled()  # over domains: sums add, maxima take the larger
    code, prose = whole.stats["code"], whole.stats["prose"]
    torch.testing.assert_close(pooled["count"], code["count"] + prose["count"])
    torch.testing.assert_close(pooled["max_activation"], torch.maximum(code["max_activation"], prose["max_activation"]))
    fewer = first + observe(model, batches[2:], progress=False)  # a statistic only one side holds is left out
    assert set(fewer.stats["code"]) == set(DEFAULT) and sorted(fewer.meta["missing"]) == sorted(OPTIONAL)
    torch.testing.assert_close(fewer.stats["code"]["reap_sum"], whole.stats["code"]["reap_sum"])


def test_optional_statistics_are_recorded_only_when_asked_for(batches):
    model = tiny_model("qwen3_moe")
    obs = observe(model, batches, progress=False)
    assert set(obs.stats["code"]) == set(DEFAULT) and sorted(obs.meta["missing"]) == sorted(OPTIONAL)
    with pytest.raises(MissingStatistic, match=r"'coselect' .*reapkit observe --statistics coselect"):
        obs.coselection()
    obs.require("reap_sum", "count", "prob_sum", "tokens", purpose="the default criteria")
    asked = observe(model, batches, progress=False, statistics=["coselect"])
    assert set(asked.stats["code"]) == {*DEFAULT, "coselect"} and "coselect" not in asked.meta["missing"]
    for name in DEFAULT:  # asking for more changes nothing else
        assert torch.equal(asked.stats["code"][name], obs.stats["code"][name])
    with pytest.raises(InvalidInput, match="unknown statistic 'cosel'; choose from max_activation"):
        observe(model, batches, progress=False, statistics=["cosel"])


def test_saved_statistics_are_checked_against_the_table(tmp_path, batches):
    obs = observe(tiny_model("qwen3_moe"), batches, progress=False, statistics=["output_sum"])
    for change, domains, message in [
        (lambda stats: stats.update(output_sum=stats["output_sum"][:1]), obs.domains, "holds output_sum as"),
        (lambda stats: stats.update(count=stats["count"].float()), obs.domains, "holds count as torch.float32"),
        (lambda stats: stats.update(hits=stats["count"].clone()), obs.domains, "unknown statistic 'hits'"),
        (lambda stats: stats.pop("output_sum"), ["code"], "different statistics in different domains"),
    ]:
        stats = {d: dict(values) for d, values in obs.stats.items()}
        for domain in domains:
            change(stats[domain])
        Observations(stats, obs.meta).save(tmp_path / "bad", force=True)
        with pytest.raises(Mismatch, match=message):
            Observations.load(tmp_path / "bad")


def test_resume_needs_the_same_statistics(tmp_path, batches):
    model = tiny_model("qwen3_moe")
    whole = observe(model, batches, progress=False, statistics="all")
    observe(model, batches, progress=False, statistics="all", partial=PartialObservations(tmp_path / "c", every=1))
    with pytest.raises(Mismatch, match="--statistics"):
        observe(model, batches, progress=False, partial=PartialObservations(tmp_path / "c", resume=True))
    resumed = observe(
        model, batches, progress=False, statistics="all", partial=PartialObservations(tmp_path / "c", resume=True)
    )
    for d in whole.domains:
        for k, v in whole.stats[d].items():
            assert torch.equal(resumed.stats[d][k], v), k


def test_the_manual_shows_the_table_of_statistics():
    """docs/observations.md shows the table as declared (regenerate: print(reapkit.observe.statistics.markdown()))."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "observations.md").read_text()
    assert markdown() in page


@pytest.mark.parametrize("module", ["reapkit.observe.statistics", "reapkit.model.layer"])
def test_docstring_examples_run(module):
    """The examples of the statistics table and of the layer view (on a tiny qwen3_moe)."""
    module = importlib.import_module(module)
    found = doctest.DocTestFinder().find(module, globs={**vars(module), "model": tiny_model("qwen3_moe")})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = []
    for test in found:
        runner.run(test, out=report.append)
    assert runner.summarize(verbose=False).failed == 0, "".join(report)
    assert runner.summarize(verbose=False).attempted > 0


def test_save_load_roundtrip(tmp_path, batches):
    model = tiny_model("glm4_moe")
    obs = observe(model, batches, progress=False, calibration={"spec": "test"})
    obs.save(tmp_path / "obs")
    back = Observations.load(tmp_path / "obs", model=model)
    assert back.meta == obs.meta
    for d in obs.domains:
        for k, v in obs.stats[d].items():
            assert torch.equal(back.stats[d][k], v)
    assert obs.meta["calibration"]["content_hash"].keys() == {"code", "prose"}
    assert obs.meta["reapkit_version"] and obs.meta["architecture"] == "glm4_moe"


def test_load_against_other_model_or_bad_files(tmp_path, batches):
    obs = observe(tiny_model("qwen3_moe", seed=0), batches, progress=False)
    obs.save(tmp_path / "obs")
    with pytest.raises(ValueError, match="different model"):
        Observations.load(tmp_path / "obs", model=tiny_model("qwen3_moe", seed=1))
    with pytest.raises(ValueError, match="different models"):
        obs + observe(tiny_model("qwen3_moe", seed=1), batches, progress=False)
    with pytest.raises(FileNotFoundError, match="not a reapkit observations directory"):
        Observations.load(tmp_path)
    (tmp_path / "obs" / "statistics.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        Observations.load(tmp_path / "obs")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "observations.json").write_text(json.dumps({"hello": 1}))
    (foreign / "statistics.safetensors").write_bytes((tmp_path / "obs" / "statistics.safetensors").read_bytes())
    with pytest.raises(ValueError):
        Observations.load(foreign)


def test_save_refuses_to_overwrite(tmp_path, batches):
    obs = observe(tiny_model("olmoe"), batches, progress=False)
    obs.save(tmp_path / "obs")
    with pytest.raises(FileExistsError, match="force"):
        obs.save(tmp_path / "obs")
    obs.save(tmp_path / "obs", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obs"]


def test_token_file_domains(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("[5, 6, 7]\n[8, 9]\n[10, 11, 12, 13]\n")
    from reapkit.data import calibration_batches

    obs = observe(tiny_model("qwen3_moe"), calibration_batches(str(path), batch_size=2), progress=False)
    assert obs.domains == ["mine"]
    assert obs.stats["mine"]["tokens"][0] == 9


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "deepseek_v3"])
def test_new_criteria_equal_a_per_token_recomputation(name, batches):
    from reapkit.select.criteria import score

    model = tiny_model(name)
    obs = observe(model, batches, progress=False, statistics=["output_sum", "max_signed"])
    ref = reference_stats(model, batches)  # per token, from the formulas
    count = sum(r["count"] for r in ref.values())
    msan = sum(r["sq_norm_sum"] for r in ref.values()) / count.clamp(min=1)
    mean_output = sum(r["output_sum"] for r in ref.values()) / count.clamp(min=1)[..., None]
    torch.testing.assert_close(torch.from_numpy(score(obs, "msan")), msan, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(score(obs, "ean_ca")), mean_output.norm(dim=-1), rtol=1e-4, atol=1e-6)
    assert score(obs, "msan").std() > 0 and score(obs, "ean_ca").std() > 0


def test_super_experts_follow_the_official_rule_and_are_never_pruned(batches):
    import numpy as np

    from reapkit.select.plan import PruningPlan, super_experts

    model = tiny_model("qwen3_moe")
    obs = observe(model, batches, progress=False, statistics=["max_signed"])
    peaks = reference_stats(model, batches)
    peaks = torch.maximum(peaks["code"]["max_signed"], peaks["prose"]["max_signed"]).numpy()
    torch.testing.assert_close(obs.pooled()["max_signed"], torch.from_numpy(peaks), rtol=1e-5, atol=1e-6)
    pool = peaks.astype(np.float32)  # every layer pooled; the last 25% (rounded up) never flagged
    threshold = max(np.percentile(pool, 99.5), pool.max() / 10)
    expected = {}
    for p, e in zip(*np.nonzero(pool[: int(len(obs.layers) * 0.75)] > np.float32(threshold))):
        expected.setdefault(obs.layers[p], []).append(int(e))
    found = super_experts(obs)
    assert found == expected
    assert super_experts(obs, include_last_layers=True)  # the tiny model has some
    # make the lowest-scoring expert of layer 0 a super expert: the plan keeps it and records it
    obs.stats["code"]["max_signed"][0, 0] = 1e6
    reap = PruningPlan.from_observations(obs, "frequency", ratio=0.5)
    weakest = int(np.argmin(reap.scores[obs.layers[0]]))
    obs.stats["code"]["max_signed"][0].zero_()
    obs.stats["code"]["max_signed"][0, weakest] = 1e6
    plan = PruningPlan.from_observations(obs, "frequency", ratio=0.5, protect_super_experts=True)
    assert weakest in plan.kept[obs.layers[0]] and weakest not in reap.kept[obs.layers[0]]
    assert plan.provenance["protected"][str(obs.layers[0])] == [weakest]
    assert plan.scores == reap.scores
    plain = observe(model, batches, progress=False)
    with pytest.raises(MissingStatistic, match="--statistics max_signed"):
        PruningPlan.from_observations(plain, "reap", ratio=0.5, protect_super_experts=True)
    from reapkit.select.criteria import score

    with pytest.raises(MissingStatistic, match="--statistics output_sum"):
        score(plain, "ean_ca")
