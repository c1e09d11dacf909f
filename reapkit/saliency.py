"""Expert saliency criteria, all derived from saved `Observations` (no model needed).

    >>> s = score(obs, "reap")                              # numpy [moe layers, experts]
    >>> s_code = score(obs, "reap", domains=["code"])       # restricted to one domain
    >>> s_mix = score(obs, "reap", domains={"code": 2, "prose": 1})   # weighted
    >>> frame = scores_frame(obs, ["reap", "frequency"])    # tidy: layer, expert, domain, criterion, value

Criteria (per expert j, over the calibration tokens t routed to j; g = gate value the model
applied, f = expert output before gating, p = router probability):

    reap              mean_t g_j(t) * ||f_j(t)||         (REAP, arXiv:2510.13999)
    frequency         number of tokens routed to j
    soft_frequency    sum over *all* tokens of p_j(t)
    ean_sum           sum_t ||f_j(t)||
    ean_mean          mean_t ||f_j(t)||
    weighted_ean_sum  sum_t g_j(t) * ||f_j(t)||
    max_activation    max_t max_i |f_j(t)_i|
    random            uniform noise from `seed` (a baseline)

Experts that received no tokens score 0 on the mean criteria.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .observations import Observations


def _ratio(num, den):
    num, den = num.numpy(), den.numpy()
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


CRITERIA = {
    "reap": lambda s: _ratio(s["reap_sum"], s["count"]),
    "frequency": lambda s: s["count"].numpy(),
    "soft_frequency": lambda s: s["prob_sum"].numpy(),
    "ean_sum": lambda s: s["norm_sum"].numpy(),
    "ean_mean": lambda s: _ratio(s["norm_sum"], s["count"]),
    "weighted_ean_sum": lambda s: s["reap_sum"].numpy(),
    "max_activation": lambda s: s["max_activation"].numpy(),
}
CRITERIA_NAMES = (*CRITERIA, "random")


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA_NAMES:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA_NAMES)}")
    return criterion


def score(obs: Observations, criterion: str = "reap", *, domains=None, seed: int = 0) -> np.ndarray:
    """Saliency of every expert as a float64 array [moe layers, experts]; higher = keep.

    `domains`: None (all pooled), a list of domains, or {domain: weight}.
    """
    check_criterion(criterion)
    stats = obs.pooled(domains, names=("count", "gate_sum", "norm_sum", "reap_sum", "max_activation", "prob_sum"))
    if criterion == "random":
        return np.random.default_rng(seed).random(tuple(stats["count"].shape))
    return np.asarray(CRITERIA[criterion](stats), dtype=np.float64)


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
            frames.append(pd.DataFrame({
                "layer": layers[present], "expert": experts[present], "domain": name,
                "criterion": criterion, "value": values[present],
            }))
    return pd.concat(frames, ignore_index=True)
