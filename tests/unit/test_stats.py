"""reapkit.measure.stats.bootstrap against a plain loop, pairing, repeats and bad input."""

import numpy as np
import pytest

from reapkit.errors import InvalidInput
from reapkit.measure.stats import bootstrap


def plain_bootstrap(num, den, minus=None, resamples=300, seed=0, level=0.95):
    """The textbook loop: draw sequences (and rows of 2-D inputs) with replacement, recompute the ratio."""
    num, den = np.atleast_2d(num), np.asarray(den, float)
    other = None if minus is None else np.atleast_2d(minus)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, len(den), len(den))
        rows = num if num.shape[0] == 1 else num[rng.integers(0, num.shape[0], num.shape[0])]
        value = rows[:, idx].sum(1).mean()
        if other is not None:
            rows = other if other.shape[0] == 1 else other[rng.integers(0, other.shape[0], other.shape[0])]
            value -= rows[:, idx].sum(1).mean()
        values.append(value / den[idx].sum())
    return np.quantile(values, [(1 - level) / 2, (1 + level) / 2])


def test_matches_a_plain_loop_in_distribution():
    rng = np.random.default_rng(1)
    den = rng.integers(5, 50, 80).astype(float)
    num = den * rng.normal(2.5, 0.5, 80)
    estimate, lo, hi = bootstrap(num, den, resamples=4000, seed=0)
    assert estimate == pytest.approx(num.sum() / den.sum())
    ref_lo, ref_hi = plain_bootstrap(num, den, resamples=4000, seed=9)
    width = ref_hi - ref_lo
    assert abs(lo - ref_lo) < 0.1 * width and abs(hi - ref_hi) < 0.1 * width


def test_paired_difference_is_narrower_than_the_unpaired_spread():
    rng = np.random.default_rng(2)
    den = rng.integers(5, 50, 60).astype(float)
    base = den * rng.normal(2.5, 0.8, 60)  # sequences differ a lot ...
    variant = base + den * 0.05 + den * rng.normal(0, 0.01, 60)  # ... the variant adds 0.05 to each
    estimate, lo, hi = bootstrap(variant, den, minus=base, seed=0)
    assert estimate == pytest.approx((variant.sum() - base.sum()) / den.sum())
    assert 0 < lo < 0.05 < hi and hi - lo < 0.02
    _, base_lo, base_hi = bootstrap(base, den, seed=0)
    assert base_hi - base_lo > 10 * (hi - lo)


def test_repeats_widen_the_interval_and_identical_inputs_give_zero():
    den = np.full(40, 10.0)
    num = np.random.default_rng(3).normal(2, 0.1, 40) * den
    repeats = np.stack([num, num * 1.2, num * 0.8])  # three calibration seeds that disagree
    _, lo1, hi1 = bootstrap(num, den, seed=0)
    estimate, lo3, hi3 = bootstrap(repeats, den, seed=0)
    assert estimate == pytest.approx(repeats.mean(0).sum() / den.sum())
    assert hi3 - lo3 > 3 * (hi1 - lo1)
    assert bootstrap(num, den, minus=num) == (0.0, 0.0, 0.0)
    assert bootstrap(num, den, seed=5) == bootstrap(num, den, seed=5) != bootstrap(num, den, seed=6)


def test_bad_input():
    with pytest.raises(ValueError, match="same sequences"):
        bootstrap([1.0, 2.0], [1.0, 1.0, 1.0])
    with pytest.raises(InvalidInput, match="level"):
        bootstrap([1.0], [1.0], level=1.5)
    with pytest.raises(ValueError, match="1-D"):
        bootstrap(np.ones((2, 2, 2)), [1.0, 1.0])
    assert all(np.isnan(bootstrap([0.0], [0.0])))
