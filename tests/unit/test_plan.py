import numpy as np
import pytest
from tiny_models import tiny_model

from reapkit.errors import InvalidInput
from reapkit.observe.recorder import observe
from reapkit.select.criteria import CRITERIA_NAMES, score, scores_frame, statistics_of
from reapkit.select.plan import PruningPlan


@pytest.fixture
def obs(batches):
    return observe(tiny_model("qwen3_moe"), batches, progress=False, statistics="all")


def test_criteria_from_statistics(obs):
    s = obs.pooled()
    count = s["count"].numpy()
    np.testing.assert_allclose(score(obs, "frequency"), count)
    np.testing.assert_allclose(score(obs, "reap"), np.where(count > 0, s["reap_sum"].numpy() / np.maximum(count, 1), 0))
    np.testing.assert_allclose(score(obs, "ean_mean") * count, s["norm_sum"].numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(score(obs, "soft_frequency").sum(1), s["tokens"].numpy(), rtol=1e-6)
    assert not np.array_equal(score(obs, "random", seed=0), score(obs, "random", seed=1))
    from_observations = [c for c in CRITERIA_NAMES if not obs.lacks(*statistics_of(c))]
    assert set(CRITERIA_NAMES) - set(from_observations) == {"aimer"}  # scored from a checkpoint's weights
    for c in from_observations:
        assert score(obs, c).shape == (2, 8)


def test_domain_restriction_and_weights(obs):
    code = score(obs, "frequency", domains=["code"])
    prose = score(obs, "frequency", domains=["prose"])
    np.testing.assert_allclose(score(obs, "frequency"), code + prose)
    np.testing.assert_allclose(score(obs, "frequency", domains={"code": 2.0, "prose": 1.0}), 2 * code + prose)
    with pytest.raises(ValueError, match="unknown calibration domain"):
        score(obs, "reap", domains=["math"])


def test_scores_frame_is_tidy(obs):
    frame = scores_frame(obs, ["reap", "frequency"])
    assert list(frame.columns) == ["layer", "expert", "domain", "criterion", "value"]
    assert set(frame.domain) == {"all", "code", "prose"}
    assert len(frame) == 2 * 3 * 2 * 8


def test_ratio_keep_counts(obs, tmp_path):
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.25)
    values = score(obs, "reap")
    for pos, layer in enumerate(obs.layers):
        assert len(plan.kept[layer]) == 6 and plan.kept[layer] == sorted(plan.kept[layer])
        assert min(values[pos][plan.kept[layer]]) >= max(values[pos][plan.removed(layer)])
    assert [len(v) for v in PruningPlan.from_observations(obs, "frequency", keep=3).kept.values()] == [3, 3]
    plan.save(tmp_path / "plan.json")
    back = PruningPlan.load(tmp_path / "plan.json")
    assert back.kept == plan.kept and back.criterion == "reap" and back.ratio == 0.25


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratio=1.0), r"ratio must be in \[0, 1\)"),
        (dict(ratio=-0.1), r"ratio must be in \[0, 1\)"),
        (dict(ratio=0.9), "needs at least top-k = 2"),
        (dict(keep=1), "needs at least top-k = 2"),
        (dict(counts={7: 4}), "not MoE layers"),
    ],
)
def test_bad_plans_are_refused(obs, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        PruningPlan.from_observations(obs, "reap", **kwargs)


def test_unknown_criterion(obs):
    with pytest.raises(InvalidInput, match="unknown criterion 'reep'; choose one of reap"):
        PruningPlan.from_observations(obs, "reep", ratio=0.25)


def test_grouped_routing_keeps_equal_counts_per_group(batches):
    obs = observe(tiny_model("deepseek_v3"), batches, progress=False)  # 8 experts in 2 groups
    plan = PruningPlan.from_observations(obs, "reap", ratio=0.25)
    for kept in plan.kept.values():
        assert sum(e < 4 for e in kept) == 3 and len(kept) == 6
    with pytest.raises(InvalidInput, match=r"nearest feasible: keep=4 \(ratio 0.5\) or keep=6"):
        PruningPlan.from_observations(obs, "reap", keep=5)
    with pytest.raises(InvalidInput, match=r"nearest feasible: keep=4 \(ratio 0.5\)$"):
        PruningPlan.from_observations(obs, "reap", keep=2)


def test_scores_of_a_non_uniform_model_list_only_existing_experts(batches):
    from reapkit.compress.prune import remove_experts

    model = tiny_model("qwen3_moe")
    plan = PruningPlan.from_observations(observe(model, batches, progress=False), "reap", counts={0: 4, 1: 6})
    remove_experts(model, plan)
    obs = observe(model, batches, progress=False)
    assert obs.num_experts == [4, 6]
    frame = scores_frame(obs, "frequency", per_domain=False)
    assert frame.groupby("layer").expert.max().tolist() == [3, 5]
    assert frame.value.sum() == obs.pooled()["count"].sum()
