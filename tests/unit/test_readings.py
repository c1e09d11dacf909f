"""Readings and findings on tables whose order is known: what each says, in each metric's direction, and
a difference only where the paired interval of the gap excludes 0."""

import numpy as np
import pandas as pd
import pytest

from reapkit.study import findings, gaps, readings
from reapkit.study.experiments import study_results

N = 40


def sequences(offsets: dict, *, noisy=(), noise: float = 0.5, spread: float = 1.0, ratios=(0.5,), seed: int = 0):
    """A study_sequences frame: each label's loss = a loss shared by every label on each sequence (sd `spread`)
    + its offset (the `noisy` labels: + noise of their own); agreement falls as loss rises."""
    rng = np.random.default_rng(seed)
    base = rng.normal(3.0, spread, N)
    frames = []
    for ratio in ratios:
        for label, offset in offsets.items():
            loss = base + offset * ratio / 0.5 + rng.normal(0, noise, N) * (label in noisy and ratio > 0)
            frames.append(
                pd.DataFrame(
                    {
                        "method": "merge" if "smoe" in label else "prune",
                        "criterion": label,
                        "label": label,
                        "seed": pd.NA,
                        "ratio": ratio,
                        "experts_kept": 8,
                        "experts_total": 32,
                        "kept_routing": 0.5,
                        "domain": np.where(np.arange(N) % 2, "code", "prose"),
                        "sequence": np.arange(N),
                        "tokens": 20,
                        "loss": loss,
                        "kl": 0.1 + offset,
                        "agreement": 0.9 - 0.1 * (loss - base),
                        "delta_loss": loss - base + 1.0,
                    }
                )
            )
    frame = pd.concat(frames, ignore_index=True)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


@pytest.fixture(scope="module")
def known():
    """frequency loses 0.3 nats on every sequence; ean_mean differs from REAP by noise only; sequences vary by 1 nat."""
    seqs = sequences({"reap": 0.0, "frequency": 0.3, "ean_mean": 0.0}, noisy=["ean_mean"], ratios=(0.0, 0.25, 0.5))
    return seqs, study_results(seqs, resamples=200), gaps.gap_table(seqs, metrics=["loss", "agreement"], resamples=200)


def test_gap_table_is_paired_and_named_as_gaps(known):
    _, results, table = known
    row = table[(table.label == "frequency") & (table.ratio == 0.5) & (table.domain == "all")].iloc[0]
    assert row.loss_gap == pytest.approx(0.3) and 0.29 < row.loss_gap_lo <= row.loss_gap_hi < 0.31
    each = results[(results.ratio == 0.5) & (results.domain == "all")].set_index("label")
    assert each.loc["frequency", "loss_lo"] < each.loc["reap", "loss_hi"]  # each method's own intervals overlap
    assert set(table.label) == {"frequency", "ean_mean"} and set(table.domain) == {"all", "code", "prose"}
    assert gaps.verdict((row.loss_gap, row.loss_gap_lo, row.loss_gap_hi), "loss") == "worse"


def test_study_curves_claim_a_difference_only_from_paired_gaps(known):
    _, results, table = known
    text = readings.study_curves(results, gaps=table, ratio=0.5, metric="loss")
    assert "reap is better than frequency +0.30" in text  # overlapping own intervals, paired gap clear of 0
    assert "reap is within noise of ean_mean" in text
    alone = readings.study_curves(results, ratio=0.5, metric="loss")
    assert "No difference between methods is claimed" in alone and "overlap" not in alone
    assert "best first: reap" in alone or "best first: ean_mean" in alone


def test_rankings_follow_each_metrics_direction(known):
    seqs, results, table = known
    acc = readings.study_curves(results, gaps=table, ratio=0.5, metric="agreement")
    first = acc.split("best first: ")[1]
    assert first.index("frequency") > first.index("reap")  # higher agreement first
    assert "reap is better than frequency" in acc
    lm = pd.DataFrame(
        [
            dict(criterion=c, label=c, ratio=r, domain="task", metric="acc", value=v)
            for c, r, v in (("unpruned", 0.0, 0.8), ("reap", 0.5, 0.6), ("frequency", 0.5, 0.4))
        ]
    )
    text = readings.study_curves(lm, ratio=0.5, metric="acc", domain="task")
    assert "best first: reap 0.60, frequency 0.40" in text  # accuracy was listed worst first
    summary = findings.summarise(seqs, metric="agreement", resamples=200)
    assert "(higher is better)" in summary and "positive = REAP worse" in summary
    assert "the highest agreement is `reap`" in summary or "the highest agreement is `ean_mean`" in summary
    assert "REAP is better at 2 of 2 ratios" in summary.split("vs `frequency`")[1]


def test_gaps_and_costs_readings_say_what_the_paired_intervals_say(known):
    seqs, results, table = known
    text = readings.gaps(table)
    assert "- 50% removed: reap is better than frequency +0.30" in text and "within noise of ean_mean" in text
    costs = readings.costs(results.assign(criterion=results.label), gaps=table.rename(columns={"label": "criterion"}))
    assert "50% removed, best first:" in costs and "reap is better than frequency" in costs
    assert "No difference between methods is claimed" in readings.costs(results.assign(criterion=results.label))


def _scores(rows: dict, criterion: str = "reap") -> pd.DataFrame:
    return pd.DataFrame(
        [(layer, e, "all", criterion, float(v)) for layer, values in rows.items() for e, v in enumerate(values)],
        columns=["layer", "expert", "domain", "criterion", "value"],
    )


def test_saliency_readings_quote_what_their_figures_show():
    from reapkit.study.kept import kept_mass_table, usage_summary

    scores = _scores({0: [8, 4, 2, 1], 1: [1, 1, 1, 1]})
    assert "scores 2.0x to 2.0x the weakest one kept" in readings.cutoff(scores[scores.layer == 0], "reap", 0.5)
    assert "2.00x to 2.00x the strongest pruned one" in readings.cutoff(scores[scores.layer == 0], "reap", 0.5)
    counts = _scores({0: [0, 10, 10, 80], 1: [25, 25, 25, 25]}, "frequency")
    text = readings.usage(usage_summary(counts))
    assert "Gini of the routed tokens from 0.00 (layer 1) to" in text and "1 expert(s) never routed" in text
    assert "receives 10% to 50% of its tokens" in text  # the less-used half: 0 + 10 of 100 in layer 0
    mass = kept_mass_table(pd.concat([scores, counts]), criteria=["reap", "frequency"], ratios=[0.5])
    text = readings.kept_mass(mass, ratio=0.5)
    assert "reap: 65% of the REAP score (50%-80% over layers), 30% of the routed tokens" in text  # layer 0: 12 of 15
    assert "frequency: 42% of the REAP score (33%-50% over layers), 70% of the routed tokens" in text


def test_agreement_and_specialisation_readings_claim_only_beyond_chance_or_noise():
    table = pd.DataFrame(
        [
            dict(layer=layer, criterion_a="reap", criterion_b=b, spearman=rho, overlap=jac)
            for layer in range(4)
            for b, rho, jac in (("frequency", 0.9, 1.0), ("ean_mean", 0.0, 0.34))
        ]
    )
    text = readings.criterion_agreement(table, experts=16, ratio=0.5)
    assert "reap / frequency: rho 0.90 (above chance), overlap 1.00 (above chance)" in text
    assert "reap / ean_mean: rho 0.00 (at chance), overlap 0.34 (at chance)" in text
    rng = np.random.default_rng(0)
    spec = pd.DataFrame(
        {
            "layer": np.repeat([0, 1, 2], 30),
            "expert": np.tile(range(30), 3),
            "specialisation": np.r_[rng.uniform(0, 0.2, 30), rng.uniform(0.4, 0.6, 30), rng.uniform(0.8, 1, 30)],
            "usage": 1.0,
        }
    )
    assert "rises from 0.1" in readings.specialisation(spec)
    flat = spec.assign(specialisation=rng.uniform(0.4, 0.6, 90))
    assert "does not change beyond noise" in readings.specialisation(flat)


def test_study_readings_of_layers_budget_coselection_and_calibration_size():
    layers = pd.DataFrame(
        {
            "layer": [0, 1, 2],
            "delta_loss": [0.05, 0.4, 0.2],
            "delta_loss_lo": [-0.01, 0.3, 0.1],
            "delta_loss_hi": [0.1, 0.5, 0.3],
        }
    )
    text = readings.sensitivity(layers)
    assert "the largest Δ loss is layer 1 (+0.40 nats)" in text and "above 0 for layer(s) 1, 2" in text
    assert "not tested" in text  # no ranking claim between layers
    coselect = np.full((4, 4), 10.0)
    coselect[0, 1] = coselect[1, 0] = 60.0
    np.fill_diagonal(coselect, 100.0)
    assert readings.coactivation(coselect).startswith("**Reading.** Experts 0 and 1 share")
    size = pd.DataFrame(
        {
            "samples": [2, 2, 16, 16],
            "seed": [0, 1, 0, 1],
            "jaccard": [0.5, 0.7, 0.9, 0.95],
            "chance": 0.34,
            "delta_loss": [2.0, 1.8, 1.2, 1.3],
        }
    )
    text = readings.calibration_size(size)
    assert "With 2 calibration samples per domain the kept experts share 0.60 (0.50-0.70 over 2 seeds)" in text
    assert "with 16 samples 0.93 (0.90-0.95)" in text and "from 1.90 (1.80-2.00 over seeds) to 1.25" in text
