"""What plans keep, read on the calibration statistics: expert usage, kept mass against ratio, the global budget.

    >>> usage_table(scores).head(3).round(3)         # per layer: Lorenz curve of routed tokens (never-routed counted)
       layer  expert  share  position  cumulative
    0      0      -1  0.000     0.000       0.000
    1      0      12  0.032     0.062       0.032
    2      0       2  0.033     0.125       0.065
    >>> usage_summary(scores).round(2)               # per layer: experts, never_routed, gini, bottom_half
       layer  experts  never_routed  gini  bottom_half
    0      0       16             0  0.20         0.36
    1      1       16             0  0.12         0.41
    2      2       16             0  0.13         0.40
    3      3       16             0  0.17         0.38
    >>> kept_mass_table(scores, ratios=[0.25, 0.5]).head(3).round(2)   # share of REAP score / routing kept
      criterion  ratio  layer  kept_score  kept_routing
    0      reap   0.25      0        0.82          0.80
    1      reap   0.25      1        0.86          0.79
    2      reap   0.25      2        0.87          0.74
    >>> budget_table(global_plan, floor=obs.top_k).head(3).round(2)   # per expert: the score the budget ranks
       layer  expert   raw  budget_score   kept  floor  kept_uniform
    0      0       0  5.15          0.87  False  False         False
    1      0       1  6.15          1.04   True  False         False
    2      0       2  5.60          0.95   True  False         False

Scores frames as in :mod:`reapkit.study.tables` (layer, expert, domain, criterion, value); routing is
the `frequency` criterion (tokens routed to each expert). Pure numpy / pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reapkit.measure.schema import ALL, select
from reapkit.select.plan import budget_scores
from reapkit.study.tables import uniform_plans, value_table

__all__ = ["usage_table", "usage_summary", "kept_mass_table", "budget_table"]


def usage_table(frame: pd.DataFrame, *, criterion: str = "frequency", domain: str = ALL) -> pd.DataFrame:
    """Per layer, the Lorenz curve of the experts' share of routed tokens: experts from least to most
    used, `position` = fraction of the layer's experts up to this one, `cumulative` = their share of
    the tokens. Experts never routed (share 0) are counted: they make the curve start flat.

        >>> usage_table(scores)[["layer", "position", "cumulative"]].tail(2).round(3)
            layer  position  cumulative
        66      3     0.938       0.883
        67      3     1.000       1.000

    Columns: layer, expert, share, position, cumulative (each layer starts at (0, 0), a row with expert -1).
    """
    columns = ["layer", "expert", "share", "position", "cumulative"]
    data = select(frame, criterion=criterion, domain=domain) if len(frame) else frame
    if data.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for layer, row in value_table(data).iterrows():
        values = row.dropna().clip(lower=0).sort_values(kind="stable")
        total = values.sum()
        share = values / total if total > 0 else values * 0
        n = len(values)
        rows.append(
            pd.DataFrame({"layer": layer, "expert": [-1], "share": [0.0], "position": [0.0], "cumulative": [0.0]})
        )
        rows.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "expert": values.index.astype(int),
                    "share": share.to_numpy(),
                    "position": np.arange(1, n + 1) / n,
                    "cumulative": np.cumsum(share.to_numpy()),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)[columns]


def usage_summary(frame: pd.DataFrame, **options) -> pd.DataFrame:
    """Per layer: experts, never_routed (experts with no token), gini (0 = every expert alike, 1 = one
    expert takes every token) and bottom_half (the share of tokens the less-used half receives).

    >>> usage_summary(scores).round(2)
       layer  experts  never_routed  gini  bottom_half
    0      0       16             0  0.20         0.36
    1      1       16             0  0.12         0.41
    2      2       16             0  0.13         0.40
    3      3       16             0  0.17         0.38
    """
    table = usage_table(frame, **options)
    rows = []
    for layer, part in table.groupby("layer", sort=True):
        x, y = part["position"].to_numpy(), part["cumulative"].to_numpy()
        area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
        experts = len(part) - 1
        rows.append(
            {
                "layer": layer,
                "experts": experts,
                "never_routed": int((part["share"].iloc[1:] <= 0).sum()),
                "gini": 1 - 2 * area,
                "bottom_half": float(np.interp(0.5, x, y)),
            }
        )
    return pd.DataFrame(rows, columns=["layer", "experts", "never_routed", "gini", "bottom_half"])


def kept_mass_table(
    frame: pd.DataFrame,
    *,
    criteria=None,
    ratios=(0.125, 0.25, 0.375, 0.5, 0.625, 0.75),
    score: str = "reap",
    routing: str = "frequency",
    **plan_options,
) -> pd.DataFrame:
    """For each criterion's uniform plan at each ratio, per layer: the share of the layer's `score`
    (REAP) and of its `routing` (tokens routed) that the kept experts hold.

        >>> kept_mass_table(scores, criteria=["reap", "frequency"], ratios=[0.5]).round(2)
           criterion  ratio  layer  kept_score  kept_routing
        0       reap    0.5      0        0.59          0.54
        1       reap    0.5      1        0.66          0.51
        2       reap    0.5      2        0.66          0.51
        3       reap    0.5      3        0.73          0.53
        4  frequency    0.5      0        0.53          0.64
        5  frequency    0.5      1        0.51          0.59
        6  frequency    0.5      2        0.58          0.60
        7  frequency    0.5      3        0.63          0.62

    Plans are those `reapkit.study.tables.uniform_plans` makes (`plan_options`: domain, n_group,
    topk_group, top_k); ratios a plan cannot meet are left out. Columns: criterion, ratio, layer,
    kept_score, kept_routing.
    """
    columns = ["criterion", "ratio", "layer", "kept_score", "kept_routing"]
    domain = plan_options.get("domain", ALL)
    data = select(frame, domain=domain) if len(frame) else frame
    present = set(data["criterion"]) if len(data) else set()
    if not {score, routing} <= present:
        return pd.DataFrame(columns=columns)
    criteria = [c for c in (criteria or list(dict.fromkeys(data["criterion"]))) if c in present]
    totals = {name: value_table(data[data["criterion"] == name]) for name in (score, routing)}
    rows = []
    for ratio in ratios:
        try:
            plans = uniform_plans(data, criteria, ratio=ratio, **plan_options)
        except ValueError:  # fewer experts kept than the router's top-k
            continue
        for criterion, plan in plans.items():
            for layer in plan.layers:
                kept = plan.kept[layer]
                share = {}
                for name, table in totals.items():
                    row = table.loc[layer].fillna(0).clip(lower=0)
                    share[name] = float(row.iloc[kept].sum() / row.sum()) if row.sum() > 0 else np.nan
                rows.append((criterion, ratio, layer, share[score], share[routing]))
    return pd.DataFrame(rows, columns=columns)


def budget_table(budget, uniform=None, *, floor: int = 1) -> pd.DataFrame:
    """Per expert of a global-budget plan: its `raw` score, the `budget_score` the budget ranks across
    layers (`reapkit.select.plan.budget_scores`: divided by the layer's mean), whether the budget keeps
    it, whether it is one of its layer's `floor` best (kept whatever its score: top-k + margin), and
    whether `uniform` (a plan) keeps it. ``table.attrs["threshold"]``: the budget score between the
    lowest one kept outside the floors and the highest one pruned (the one cut-off of the budget).

        >>> budget_table(global_plan, uniform_plan, floor=obs.top_k).tail(3).round(2)
            layer  expert    raw  budget_score  kept  floor  kept_uniform
        61      3      13   9.20          1.85  True  False          True
        62      3      14  11.73          2.36  True   True          True
        63      3      15   5.83          1.17  True  False          True

    Columns: layer, expert, raw, budget_score, kept, floor, kept_uniform.
    """
    rows = []
    for layer in budget.layers:
        raw = np.asarray(budget.scores[layer], float)
        normalised = budget_scores(raw)
        best = set(np.argsort(-normalised, kind="stable")[:floor].tolist())
        kept = set(budget.kept[layer])
        uniform_kept = set(uniform.kept[layer]) if uniform is not None else set()
        for e in range(raw.size):
            rows.append((layer, e, raw[e], normalised[e], e in kept, e in best, e in uniform_kept))
    table = pd.DataFrame(rows, columns=["layer", "expert", "raw", "budget_score", "kept", "floor", "kept_uniform"])
    above = table.loc[table["kept"] & ~table["floor"], "budget_score"]
    below = table.loc[~table["kept"], "budget_score"]
    threshold = np.nan
    if len(above) and len(below):
        threshold = float(np.sqrt(max(above.min(), 1e-12) * max(below.max(), 1e-12)))  # midway on a log axis
    table.attrs["threshold"] = threshold
    return table
