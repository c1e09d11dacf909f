"""Percentile bootstrap intervals for token-weighted means over evaluation sequences (numpy only).

    >>> loss_sums, tokens = np.array([30.0, 12.0, 50.0]), np.array([10, 6, 20])
    >>> [round(v, 3) for v in bootstrap(loss_sums, tokens, seed=0)]       # estimate, lo, hi (95 %)
    [2.556, 2.0, 3.0]
    >>> unpruned = np.array([28.0, 12.0, 45.0])                           # the same sequences, before
    >>> [round(v, 3) for v in bootstrap(loss_sums, tokens, minus=unpruned)]   # paired difference
    [0.194, 0.0, 0.25]

An estimate is sum(numerators) / sum(denominators) (e.g. summed loss / tokens). Each resample
draws the sequences (columns) with replacement; a 2-D numerator [repeats, sequences] (e.g. one
row per calibration seed) also draws its rows, so the interval holds both sources of variation.
With `minus`, every resample uses the same sequences for both terms (a paired difference).
Resamples come from `numpy.random.default_rng(seed)`: the same inputs give the same interval.
"""

from __future__ import annotations

import numpy as np

from reapkit.errors import InvalidInput

__all__ = ["bootstrap", "sequence_grid", "RESAMPLES", "LEVEL"]

RESAMPLES = 1000
LEVEL = 0.95


def _rows(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2):
        raise ValueError(
            f"bootstrap takes a 1-D [sequences] or 2-D [repeats, sequences] array, got shape {values.shape}"
        )
    return values[None] if values.ndim == 1 else values


def _resampled_mean_rows(rows: np.ndarray, weights: np.ndarray, rng) -> np.ndarray:
    """[resamples]: per resample, the mean over resampled rows of the column-weighted sums."""
    sums = weights @ rows.T  # [B, R]
    if rows.shape[0] == 1:
        return sums[:, 0]
    picks = rng.integers(0, rows.shape[0], size=(weights.shape[0], rows.shape[0]))
    return np.take_along_axis(sums, picks, axis=1).mean(axis=1)


def bootstrap(
    numerators, denominators, *, minus=None, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """(estimate, lo, hi) of sum(numerators) / sum(denominators), or of its difference to `minus`.

    `numerators` and `minus`: [sequences] or [repeats, sequences] (rows averaged); `denominators`:
    [sequences] (e.g. target tokens per sequence). The interval is the central `level` percentile
    range of `resamples` bootstrap resamples.
    """
    num, den = _rows(numerators), np.asarray(denominators, dtype=np.float64)
    other = None if minus is None else _rows(minus)
    if den.ndim != 1 or num.shape[1] != den.shape[0] or (other is not None and other.shape[1] != den.shape[0]):
        raise ValueError(
            f"numerators {num.shape[-1]}, minus {None if other is None else other.shape[-1]} and "
            f"denominators {den.shape} must cover the same sequences"
        )
    if not 0 < level < 1 or resamples < 1:
        raise InvalidInput(f"level must be in (0, 1) and resamples >= 1, got level={level!r}, resamples={resamples!r}")
    if den.sum() <= 0:
        return (float("nan"),) * 3
    estimate = num.mean(0).sum() / den.sum() - (0.0 if other is None else other.mean(0).sum() / den.sum())
    rng = np.random.default_rng(seed)
    n = den.shape[0]
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    weights = np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)
    total = weights @ den
    values = _resampled_mean_rows(num, weights, rng)
    if other is not None:
        values = values - _resampled_mean_rows(other, weights, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = values / total
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail]) if len(values) else (np.nan, np.nan)
    return float(estimate), float(lo), float(hi)


def sequence_grid(frame, metric: str, repeat: str) -> tuple[np.ndarray, np.ndarray]:
    """`bootstrap`'s inputs from a per-sequence table: (`metric` x tokens as [repeats, sequences], tokens).

        >>> sums, tokens = sequence_grid(sequences[sequences.label == "reap"], "loss", "seed")
        >>> estimate, lo, hi = bootstrap(sums, tokens)

    `frame` (a pandas DataFrame) has columns `sequence`, `tokens`, `metric` and `repeat` (e.g. the
    calibration seed; missing values count as one repeat).
    """
    rows = np.unique(frame[repeat].fillna(-1).to_numpy(np.int64), return_inverse=True)[1]
    sequences, columns = np.unique(frame["sequence"].to_numpy(), return_inverse=True)
    tokens = np.zeros(len(sequences))
    tokens[columns] = frame["tokens"].to_numpy(np.float64)
    grid = np.full((rows.max() + 1 if len(rows) else 0, len(sequences)), np.nan)
    grid[rows, columns] = tokens[columns] * frame[metric].to_numpy(np.float64)
    return grid, tokens
