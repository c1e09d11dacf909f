"""Tables and chance levels behind the figures (reapkit.study.tables): exact values, simulations, no matplotlib."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from reapkit.errors import InvalidInput
from reapkit.measure import schema
from reapkit.study import tables


@pytest.mark.parametrize("experts,size,other", [(16, 8, None), (16, 12, None), (8, 2, 5), (4, 4, None), (6, 0, None)])
def test_expected_jaccard_matches_a_simulation(experts, size, other):
    other_ = size if other is None else other
    rng = np.random.default_rng(0)
    draws = 20000
    a = np.argsort(rng.random((draws, experts)), axis=1) < size
    b = np.argsort(rng.random((draws, experts)), axis=1) < other_
    union = (a | b).sum(1)
    simulated = np.where(union > 0, (a & b).sum(1) / np.maximum(union, 1), 1.0).mean()
    exact = tables.expected_jaccard(experts, size, other)
    assert exact == pytest.approx(simulated, abs=0.006)
    values, p = tables.jaccard_distribution(experts, size, other)
    assert p.sum() == pytest.approx(1.0) and ((values >= 0) & (values <= 1)).all()


def test_expected_jaccard_known_values_and_bad_sizes():
    assert tables.expected_jaccard(16, 8) == pytest.approx(0.3434, abs=1e-4)  # the "about 0.34"
    assert tables.expected_jaccard(10, 10) == pytest.approx(1.0)  # both sets are everything
    with pytest.raises(InvalidInput, match="between 0 and the number of experts"):
        tables.expected_jaccard(4, 5)


def test_spearman_band_matches_scipy_on_random_scores():
    from scipy.stats import spearmanr

    lo, hi = tables.spearman_band(16)
    assert lo == pytest.approx(-hi, abs=0.03) and 0.4 < hi < 0.6
    rng = np.random.default_rng(1)
    rho = np.array([spearmanr(rng.random(16), rng.random(16)).statistic for _ in range(2000)])
    inside = ((rho >= lo) & (rho <= hi)).mean()
    assert inside == pytest.approx(0.95, abs=0.02)
    assert tables.spearman_band(2) == (-1.0, 1.0)
    assert tables.spearman_band(16) == (lo, hi)  # seeded: the same band every time


def _scores(experts=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        (layer, e, "all", c, float(rng.random()))
        for c in ("reap", "frequency")
        for layer in (0, 1)
        for e in range(experts)
    ]
    return pd.DataFrame(rows, columns=["layer", "expert", "domain", "criterion", "value"])


def test_agreement_table_values_and_chance():
    frame = _scores()
    same = frame[frame.criterion == "reap"].assign(criterion="copy")
    table = tables.agreement_table(pd.concat([frame, same]), criteria=["reap", "copy", "frequency"], ratio=0.5)
    row = table[(table.criterion_a == "reap") & (table.criterion_b == "copy")].iloc[0]
    assert row.spearman == pytest.approx(1.0) and row.overlap == 1.0
    assert len(table) == 6 and table.spearman.between(-1, 1).all()
    assert table.overlap_chance.eq(tables.expected_jaccard(6, 3)).all()
    assert (table.spearman_chance_lo < 0).all() and (table.spearman_chance_hi > 0).all()
    assert tables.agreement_table(frame.iloc[:0]).empty


def _frame(values: dict, layer=0):
    rows = [(layer, e, "all", c, float(v)) for c, row in values.items() for e, v in enumerate(row)]
    return pd.DataFrame(rows, columns=["layer", "expert", "domain", "criterion", "value"])


def test_agreement_overlaps_are_those_of_the_plans():
    """Ties and routing groups: the overlap is that of the sets PruningPlan prunes, not of a re-derived argsort."""
    from reapkit.select.plan import PruningPlan

    tied = _frame({"reap": [1.0, 1.0, 1.0, 1.0], "frequency": [0.0, 0.0, 5.0, 5.0]})
    row = tables.agreement_table(tied, criteria=["reap", "frequency"], ratio=0.5).iloc[0]
    reap = PruningPlan.from_scores(np.ones((1, 4)), [0], [4], top_k=1, ratio=0.5)
    freq = PruningPlan.from_scores(np.array([[0.0, 0.0, 5.0, 5.0]]), [0], [4], top_k=1, ratio=0.5)
    assert reap.removed(0) == [2, 3] and freq.removed(0) == [0, 1]  # ties keep the lower index
    assert row.overlap == 0.0  # an argsort of the scores prunes {0, 1} for both: overlap 1
    # two routing groups of 4: each group keeps 2, wherever the globally lowest scores are
    grouped = _frame({"reap": [1, 2, 3, 4, 9, 8, 7, 6], "frequency": [4, 3, 2, 1, 9, 8, 7, 6]})
    table = tables.agreement_table(grouped, criteria=["reap", "frequency"], ratio=0.5, n_group=2, top_k=2)
    plans = tables.uniform_plans(grouped, ["reap", "frequency"], ratio=0.5, n_group=2, top_k=2)
    assert plans["reap"].removed(0) == [0, 1, 6, 7] and plans["frequency"].removed(0) == [2, 3, 6, 7]
    assert table.overlap.iloc[0] == pytest.approx(2 / 6)
    assert tables.agreement_table(plans).overlap.iloc[0] == pytest.approx(2 / 6)  # the plans themselves


def test_each_kind_of_interval_has_its_own_name():
    assert schema.interval("loss") == ("loss_lo", "loss_hi")
    assert schema.interval("loss", "gap") == ("loss_gap_lo", "loss_gap_hi")
    assert schema.interval_columns("rho", "chance") == ["rho_chance_lo", "rho_chance_hi"]
    with pytest.raises(ValueError, match="kind of interval"):
        schema.interval("loss", "shifted")
    from reapkit.measure import evaluate

    assert evaluate.interval_columns is schema.interval_columns  # built in one place
    table = tables.agreement_table(_scores(), criteria=["reap", "frequency"])
    assert {"spearman_chance_lo", "spearman_chance_hi"} <= set(table.columns)
    assert not {"spearman_lo", "spearman_hi"} & set(table.columns)  # a chance band is not an interval of rho


def test_one_declaration_of_each_metrics_direction():
    assert [schema.better(m) for m in ("loss", "kl", "delta_loss", "bits_per_byte")] == ["lower"] * 4
    assert [schema.better(m) for m in ("agreement", "acc", "acc_norm", "a_new_score")] == ["higher"] * 4
    frame = pd.DataFrame({"name": ["a", "b", "c"], "acc": [0.2, 0.9, 0.5], "loss": [3.0, 1.0, 2.0]})
    assert list(schema.best_first(frame, "acc").name) == ["b", "c", "a"]
    assert list(schema.best_first(frame, "loss").name) == ["b", "c", "a"]
    from reapkit.study import readings

    assert not hasattr(readings, "LOWER_IS_BETTER")  # no second table


def test_specialisation_of_a_pure_specialist():
    domains = ["code", "math", "prose", "tools"]
    rows = [(0, e, d, "frequency", 10.0 if (e == i) else 0.0) for i, d in enumerate(domains) for e in range(4)]
    rows += [(0, 4, d, "frequency", 5.0) for d in domains]  # a generalist
    table = tables.specialisation_table(pd.DataFrame(rows, columns=["layer", "expert", "domain", "criterion", "value"]))
    spec = dict(zip(table.expert, table.specialisation))
    assert spec[0] == pytest.approx(1.0) and spec[4] == pytest.approx(0.0)
    assert dict(zip(table.expert, table.dominant))[2] == domains[2]


def _results(ci=True):
    rows = []
    for d, base in (("code", 2.0), ("math", 3.0)):
        rows.append(dict(label="unpruned", method="prune", seed=None, ratio=0.0, domain=d, loss=base))
        for r in (0.25, 0.5):
            rows.append(dict(label="reap", method="prune", seed=None, ratio=r, domain=d, loss=base + r))
            for s in (0, 1):
                rows.append(dict(label="random", method="prune", seed=s, ratio=r, domain=d, loss=base + 2 * r + s))
    frame = pd.DataFrame(rows)
    if ci:
        frame["loss_lo"], frame["loss_hi"] = frame.loss - 0.1, frame.loss + 0.1
    return frame


def test_delta_loss_against_each_domains_unpruned_loss():
    out = schema.with_delta_loss(_results())
    reap = out[(out.label == "reap") & (out.ratio == 0.5)].set_index("domain")
    assert reap.delta_loss.to_dict() == {"code": pytest.approx(0.5), "math": pytest.approx(0.5)}
    # the loss interval moved by the unpruned mean is not an interval of the difference: no delta_loss_lo/hi
    assert not {"delta_loss_lo", "delta_loss_hi"} & set(out.columns)
    assert schema.with_delta_loss(out) is not out  # a copy, kept as it is when delta_loss exists
    with pytest.raises(InvalidInput, match="ratio 0"):
        schema.with_delta_loss(_results()[lambda f: f.ratio > 0])


@pytest.mark.parametrize("ci", [True, False])
def test_curve_table_intervals(ci):
    table = tables.curve_table(_results(ci)[lambda f: f.domain == "code"], "loss")
    assert list(table.columns) == ["label", "ratio", "mean", "lo", "hi", "runs", "band"]
    assert set(table.label) == {"reap", "random"} and (table.groupby("label").ratio.min() == 0).all()  # baseline joins
    rand = table[(table.label == "random") & (table.ratio == 0.5)].iloc[0]
    assert rand["mean"] == pytest.approx(3.5) and rand.runs == 2
    if ci:  # the mean of the bootstrap ends
        assert (rand.lo, rand.hi, rand.band) == (pytest.approx(3.4), pytest.approx(3.6), "ci")
    else:  # min..max over the seeds
        assert (rand.lo, rand.hi, rand.band) == (3.0, 4.0, "range")
    assert tables.curve_table(pd.DataFrame(), "loss").empty


def test_masks_cutoffs_and_flat_trees():
    class Plan:
        kept = {0: [0, 2], 3: [1, 2]}
        num_experts = {0: 4, 3: 4}

    frame = tables.mask_frame(Plan(), criterion="reap")
    assert frame.kept.sum() == 4 and len(frame) == 8 and set(frame.criterion) == {"reap"}
    with pytest.raises(InvalidInput, match="num_experts"):
        tables.mask_frame({0: [1]})
    cut = tables.uniform_cutoffs(_scores()[lambda f: f.criterion == "reap"], 0.5)
    assert cut.kept.eq(3).all() and len(cut) == 2
    from reapkit.select.geometry import angular_distances, cluster

    rng = np.random.default_rng(0)
    assert tables.is_flat(cluster(angular_distances(rng.normal(size=(12, 4000)))).linkage)  # random: all ~0.5
    groups = np.repeat(rng.normal(size=(3, 8)), 4, axis=0) + 0.05 * rng.normal(size=(12, 8))
    assert not tables.is_flat(cluster(angular_distances(groups)).linkage)
    order = tables.coselect_order(np.kron(np.eye(2), np.ones((3, 3))) * 10 + 1)
    assert sorted(order[:3]) in ([0, 1, 2], [3, 4, 5])


def test_analysis_imports_no_matplotlib_torch_or_transformers():
    code = "import sys, reapkit.study.tables; print(sorted(m for m in ('matplotlib', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
