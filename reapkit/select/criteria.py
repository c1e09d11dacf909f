"""Expert saliency criteria, all derived from saved `Observations` (no model needed).

    >>> s = score(obs, "reap")                              # numpy [moe layers, experts]
    >>> s.shape
    (4, 16)
    >>> s_code = score(obs, "reap", domains=["code"])       # restricted to one domain
    >>> s_mix = score(obs, "reap", domains={"code": 2, "prose": 1})   # weighted
    >>> frame = scores_frame(obs, ["reap", "frequency"])    # tidy: layer, expert, domain, criterion, value
    >>> list(frame.columns)
    ['layer', 'expert', 'domain', 'criterion', 'value']

Criteria (per expert j, over the calibration tokens t routed to j; g = gate value the model
applied, f = expert output before gating, p = router probability):

    reap              mean_t g_j(t) * ||f_j(t)||         (REAP, arXiv:2510.13999)
    frequency         number of tokens routed to j
    soft_frequency    sum over *all* tokens of p_j(t)
    ean_sum           sum_t ||f_j(t)||
    ean_mean          mean_t ||f_j(t)||
    weighted_ean_sum  sum_t g_j(t) * ||f_j(t)||
    max_activation    max_t max_i |f_j(t)_i|
    ean_ca            || mean_t f_j(t) ||                 (official REAP code, CerebrasResearch/reap
                      @1970473 metrics.get_routed_characteristic_activation: the norm of the
                      expert's routed characteristic activation; needs ``--statistics output_sum``)
    msan              mean_t ||f_j(t)||^2                 (MSAN, arXiv:2606.15716: mean squared
                      activation norm over routed tokens)
    aimer             RMS(w_j) / mean|w_j| over the elements of expert j's weight matrices: calibration-free,
                      from the checkpoint's weights, not from observations (AIMER, arXiv:2603.18492; its code
                      ranks by the reciprocal and prunes the highest, so keeping the highest here is the same)
    random            uniform noise from `seed` (a baseline)

Experts that received no tokens score 0 on the mean criteria. Add your own with
:func:`register_criterion`; on the command line, load the file that registers it with
``--plugin FILE.py`` (see :mod:`reapkit.run.plugins`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reapkit.errors import InvalidInput, MissingStatistic

if TYPE_CHECKING:  # importing saliency stays free of torch, so plotting code can read DEFAULT_CRITERIA
    from reapkit.observe.observations import Observations

__all__ = [
    "CRITERIA_NAMES",
    "DEFAULT_CRITERIA",
    "STUDY_CRITERIA",
    "Criterion",
    "register_criterion",
    "check_criterion",
    "check_ratio",
    "score",
    "scores_frame",
    "statistics_of",
    "usable_criteria",
]


@dataclass(frozen=True)
class Criterion:
    """A saliency criterion: `fn(stats, seed)` -> scores [moe layers, experts], higher = keep.

    `stats` holds the pooled statistics named in `needs` as float arrays (see
    `reapkit.observe.recorder.EXPERT_STATS`; also ``output_sum`` [layers, experts, hidden] and ``tokens``
    [layers]).
    """

    name: str
    fn: Callable[..., np.ndarray]
    needs: tuple[str, ...]


_REGISTRY: dict[str, Criterion] = {}

#: The registered criterion names, built-in ones first (a live view: it grows with `register_criterion`).
CRITERIA_NAMES = _REGISTRY.keys()

#: The criteria the notebooks, figures and studies compare unless told otherwise.
DEFAULT_CRITERIA = ("reap", "frequency", "ean_mean", "soft_frequency")
#: The same criteria in the compression study's order (rows of its results, its notebook's legend):
#: the mean criterion last, so that frequency and soft_frequency sit side by side.
STUDY_CRITERIA = tuple(sorted(DEFAULT_CRITERIA, key=lambda name: name.endswith("_mean")))


def register_criterion(name: str, fn: Callable[..., np.ndarray], *, needs) -> Callable[..., np.ndarray]:
    """Make `fn(stats, seed)` available as criterion `name` everywhere (score, plans, CLI, notebooks).

    >>> def busy_share(stats, seed):
    ...     count = stats["count"]
    ...     return count / count.sum(axis=1, keepdims=True)
    >>> _ = register_criterion("busy_share", busy_share, needs=["count"])
    >>> "busy_share" in CRITERIA_NAMES, score(obs, "busy_share").sum(axis=1).round(6).tolist()
    (True, [1.0, 1.0, 1.0, 1.0])

    `needs` names the statistics `fn` reads. Registering a name again replaces the earlier
    criterion; the built-in names cannot be replaced. Returns `fn`.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidInput(f"criterion name {name!r} must be a Python identifier such as 'my_score'")
    if name in _BUILT_IN:
        raise InvalidInput(f"{name!r} is a built-in criterion; register yours under another name")
    _register(name, fn, needs)
    return fn


def _register(name: str, fn, needs) -> None:
    if not callable(fn):
        raise TypeError(f"criterion {name!r}: fn must be a function fn(stats, seed), got {type(fn).__name__}")
    needs = (needs,) if isinstance(needs, str) else tuple(needs)
    if not needs or not all(isinstance(n, str) for n in needs):
        raise InvalidInput(f"criterion {name!r}: needs must name the statistics it reads, e.g. needs=['count']")
    _REGISTRY[name] = Criterion(name, fn, needs)


def check_criterion(criterion: str) -> str:
    """`criterion` if it is registered; otherwise an `InvalidInput` listing the names and how to add one."""
    if criterion not in _REGISTRY:
        raise InvalidInput(
            f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA_NAMES)}, or register your own "
            "with reapkit.register_criterion (command line: --plugin FILE.py)"
        )
    return criterion


def statistics_of(criterion: str) -> tuple[str, ...]:
    """The statistics `criterion` reads: ``statistics_of("reap") == ("reap_sum", "count")``."""
    return _REGISTRY[check_criterion(criterion)].needs


def check_ratio(ratio, name: str = "ratio") -> float:
    """`ratio` as a float if it is a fraction of experts removed, in [0, 1); otherwise an `InvalidInput` (a ValueError).

    >>> check_ratio(0.25)
    0.25
    >>> check_ratio(1)
    Traceback (most recent call last):
    ...
    reapkit.errors.InvalidInput: ratio must be in [0, 1) (the fraction of experts removed), got 1
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or math.isnan(ratio) or not 0 <= ratio < 1:
        raise InvalidInput(f"{name} must be in [0, 1) (the fraction of experts removed), got {ratio!r}")
    return float(ratio)


def score(obs: Observations, criterion: str = "reap", *, domains=None, seed: int = 0) -> np.ndarray:
    """Saliency of every expert as a float64 array [moe layers, experts]; higher = keep.

    `domains`: None (all pooled), a list of domains, or {domain: weight}.
    """
    entry = _REGISTRY[check_criterion(criterion)]
    obs.require(*entry.needs, purpose=f"criterion {criterion!r}")
    pooled = obs.pooled(domains, names=entry.needs)
    values = np.asarray(entry.fn({k: v.numpy() for k, v in pooled.items()}, seed=seed), dtype=np.float64)
    expected = (len(obs.layers), max(obs.num_experts))
    if values.shape != expected:
        raise InvalidInput(
            f"criterion {criterion!r} returned scores of shape {values.shape}; "
            f"it must return one score per MoE layer and expert, shape {expected}"
        )
    return values


def usable_criteria(obs: Observations, criteria) -> list[str]:
    """The `criteria` whose statistics `obs` holds, in order; each one skipped is printed with the reason.

    >>> usable_criteria(obs, ["reap", "soft_frequency"])
    ['reap', 'soft_frequency']

    (observations imported from the REAP observer lack `prob_sum`: there, `soft_frequency` is skipped.)
    """
    usable = []
    for criterion in criteria:
        try:
            obs.require(*_REGISTRY[check_criterion(criterion)].needs, purpose=f"criterion {criterion!r}")
        except ValueError as error:
            print(f"skipped: {error}")
            continue
        usable.append(criterion)
    if criteria and not usable:
        holds = [name for name, entry in _REGISTRY.items() if not obs.lacks(*entry.needs)]
        raise MissingStatistic(
            f"none of the criteria {list(criteria)} can be scored from these observations; choose from {holds}"
        )
    return usable


def scores_frame(obs: Observations, criteria=("reap",), *, per_domain: bool = True, seed: int = 0) -> pd.DataFrame:
    """Tidy scores: columns layer (decoder index), expert, domain (`all` = pooled), criterion, value."""
    if isinstance(criteria, str):
        criteria = [criteria]
    views = [("all", None)] + ([(d, [d]) for d in obs.domains] if per_domain else [])
    frames = []
    for criterion in criteria:
        for name, domains in views:
            values = score(obs, criterion, domains=domains, seed=seed)
            layers, experts = np.meshgrid(obs.layers, np.arange(values.shape[1]), indexing="ij")
            present = experts < np.asarray(obs.num_experts)[:, None]  # layers of a non-uniform model differ
            frames.append(
                pd.DataFrame(
                    {
                        "layer": layers[present],
                        "expert": experts[present],
                        "domain": name,
                        "criterion": criterion,
                        "value": values[present],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# The built-in criteria
# --------------------------------------------------------------------------------------------


def _mean_over_routed(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """`total / count` per expert, 0 where the expert received no tokens."""
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def _statistic(name: str):
    """The criterion that is statistic `name` itself."""
    return lambda stats, seed: stats[name]


def _per_routed_token(name: str):
    """The criterion that is statistic `name` divided by the expert's routed tokens."""
    return lambda stats, seed: _mean_over_routed(stats[name], stats["count"])


def _characteristic_norm(stats, seed):
    """EAN-CA: the norm of each expert's mean routed output (output_sum / count), 0 with no tokens."""
    count = stats["count"][..., None]
    mean = np.divide(stats["output_sum"], count, out=np.zeros_like(stats["output_sum"]), where=count > 0)
    return np.linalg.norm(mean.astype(np.float64), axis=-1)


def _aimer(stats, seed):
    """AIMER, as ZongfangLiu/AIMER @fcf8e28 ``src/calib_free_prune.py`` ``_aimer_scores_and_rank`` computes it.

    The code's score is (Σ|w| / n) / sqrt(Σw² / n) over the expert's gate, up and down weights (biases
    left out), 0 for an all-zero expert; it sorts descending and prunes the *first* k per layer. Higher
    means keep here, so the criterion is the reciprocal sqrt(Σw² / n) / (Σ|w| / n): the same order,
    positive, and an all-zero expert (the code's 0, kept last) is infinite.
    """
    n = stats["weight_numel"]
    mean_abs = np.divide(stats["weight_abs_sum"], n, out=np.zeros_like(n), where=n > 0)
    rms = np.sqrt(np.divide(stats["weight_sq_sum"], n, out=np.zeros_like(n), where=n > 0))
    return np.divide(rms, mean_abs, out=np.full_like(n, np.inf), where=mean_abs > 0)


def _uniform_noise(stats, seed):
    return np.random.default_rng(seed).random(stats["count"].shape)


for _name, _fn, _needs in [
    ("reap", _per_routed_token("reap_sum"), ("reap_sum", "count")),
    ("frequency", _statistic("count"), ("count",)),
    ("soft_frequency", _statistic("prob_sum"), ("prob_sum",)),
    ("ean_sum", _statistic("norm_sum"), ("norm_sum",)),
    ("ean_mean", _per_routed_token("norm_sum"), ("norm_sum", "count")),
    ("weighted_ean_sum", _statistic("reap_sum"), ("reap_sum",)),
    ("max_activation", _statistic("max_activation"), ("max_activation",)),
    ("ean_ca", _characteristic_norm, ("output_sum", "count")),
    ("msan", _per_routed_token("sq_norm_sum"), ("sq_norm_sum", "count")),
    ("aimer", _aimer, ("weight_abs_sum", "weight_sq_sum", "weight_numel")),
    ("random", _uniform_noise, ("count",)),
]:
    _register(_name, _fn, _needs)
_BUILT_IN = frozenset(_REGISTRY)
