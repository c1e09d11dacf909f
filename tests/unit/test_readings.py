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
            for c, r, v in (("none", 0.0, 0.8), ("reap", 0.5, 0.6), ("frequency", 0.5, 0.4))
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
