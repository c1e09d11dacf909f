"""How much of what pruning costs router recovery gives back, measured on held-out text.

    >>> table = recovery_study(model, obs, batches, eval_batches, ratios=[0.5], steps=8, lr=3e-3, progress=False)
    >>> table[["ratio", "metric", "unpruned", "pruned", "recovered", "fraction"]].round(3)
       ratio metric  unpruned  pruned  recovered  fraction
    0    0.5   loss     2.567   4.023      3.879     0.098
    1    0.5     kl     0.000   1.542      1.404     0.089
    >>> print(recovery_reading(table))
    **Reading.** With 50% of the experts removed by REAP, held-out loss rises from 2.567 to 4.023 (918 held-out tokens). ...
    recovering 10% of the loss increase (95% interval 7% to 14%). The KL to the unpruned model falls from 1.542
    to 1.404 nats per token, recovering 9% of it (95% interval 6% to 12%).

For each ratio the unpruned model is pruned with the criterion's plan (`remove_experts`), measured
on the held-out batches, its routers recovered on the calibration batches (`reapkit.compress.recover`)
and measured again. The "recovered fraction" of a metric is (pruned - recovered) / (pruned -
unpruned): 0 when recovery changes nothing, 1 when it gives back all that pruning cost. Every value
is a token-weighted mean over held-out sequences with a 95 % percentile bootstrap interval, and the
fraction's interval is paired (each resample draws the same sequences for all three models).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from reapkit.compress.prune import remove_experts
from reapkit.compress.recover import DEFAULT_LR, recover
from reapkit.measure.evaluate import reference_outputs, sequence_metrics
from reapkit.measure.schema import display_name, interval_columns
from reapkit.measure.stats import RESAMPLES, bootstrap
from reapkit.select.plan import PruningPlan

__all__ = ["recovery_sequences", "recovery_table", "recovery_study", "recovery_reading", "MODELS"]

#: The three models each ratio compares, in order.
MODELS = ("unpruned", "pruned", "recovered")
#: The metrics compared: held-out loss, and KL(unpruned || model) in nats.
METRICS = ("loss", "kl")
#: Settings of each recovery carried into the table (`Recovery` fields under table names).
_TRAINING = {
    "steps": "steps",
    "lr": "lr",
    "calibration_tokens": "train_tokens",
    "kl_before": "train_kl_before",
    "kl_after": "train_kl_after",
}


def recovery_sequences(
    model,
    obs,
    calibration,
    held_out,
    *,
    ratios=(0.25, 0.5),
    criterion: str = "reap",
    steps: int | None = None,
    epochs: int = 1,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Per held-out sequence, ratio and model (`MODELS`): loss and kl (`sequence_metrics`), with the
    ratio's criterion and training settings (steps, lr, train_tokens, train_kl_before, train_kl_after).
    `model` is left as it was; each ratio recovers a pruned copy."""
    reference = reference_outputs(model, held_out, progress=False)
    unpruned = sequence_metrics(model, held_out, reference=reference, progress=False)
    parts = []
    for ratio in ratios:
        plan = PruningPlan.from_observations(obs, criterion, ratio=ratio)
        student = remove_experts(copy.deepcopy(model), plan)
        pruned = sequence_metrics(student, held_out, reference=reference, progress=False)
        record = recover(student, model, calibration, steps=steps, epochs=epochs, lr=lr, seed=seed, progress=progress)
        recovered = sequence_metrics(student, held_out, reference=reference, progress=False)
        training = {column: getattr(record, field) for field, column in _TRAINING.items()}
        for name, frame in zip(MODELS, (unpruned, pruned, recovered)):
            parts.append(frame.assign(ratio=ratio, criterion=criterion, model=name, **training))
    return pd.concat(parts, ignore_index=True)


def recovery_table(sequences: pd.DataFrame, *, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per (ratio, metric): each model's value with its interval (`unpruned`, `unpruned_lo`,
    `unpruned_hi`, `pruned`..., `recovered`...), the recovered `fraction` with its paired interval,
    the held-out `tokens` and the training settings."""
    rows = []
    for ratio, part in sequences.groupby("ratio", sort=True):
        by_model = {name: part[part["model"] == name].sort_values("sequence") for name in MODELS}
        tokens = by_model["unpruned"]["tokens"].to_numpy(np.float64)
        first = by_model["recovered"].iloc[0]
        for metric in METRICS:
            values = {name: frame[metric].to_numpy(np.float64) * tokens for name, frame in by_model.items()}
            row = {"ratio": ratio, "criterion": first["criterion"], "metric": metric, "tokens": int(tokens.sum())}
            for name in MODELS:
                row.update(zip(interval_columns(name), bootstrap(values[name], tokens, resamples=resamples, seed=seed)))
            gained, lost = values["pruned"] - values["recovered"], values["pruned"] - values["unpruned"]
            row.update(zip(interval_columns("fraction"), bootstrap(gained, lost, resamples=resamples, seed=seed)))
            row.update({column: first[column] for column in _TRAINING.values()})
            rows.append(row)
    return pd.DataFrame(rows)


def recovery_study(
    model,
    obs,
    calibration,
    held_out,
    *,
    ratios=(0.25, 0.5),
    criterion: str = "reap",
    steps: int | None = None,
    epochs: int = 1,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    resamples: int = RESAMPLES,
    progress: bool = True,
) -> pd.DataFrame:
    """`recovery_table` of `recovery_sequences`: per ratio and metric, unpruned / pruned / recovered
    on `held_out` and the recovered fraction, routers trained on `calibration` (never on `held_out`)."""
    sequences = recovery_sequences(
        model, obs, calibration, held_out, ratios=ratios, criterion=criterion, steps=steps, epochs=epochs, lr=lr,
        seed=seed, progress=progress,
    )  # fmt: skip
    return recovery_table(sequences, resamples=resamples, seed=seed)


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def _fraction(row, what: str) -> str:
    """ "23% of <what> (95% interval 15% to 30%)", with a verdict when the interval allows no claim."""
    low, high = _percent(row["fraction_lo"]), _percent(row["fraction_hi"])
    text = f"{_percent(row['fraction'])} of {what} (95% interval {low} to {high})"
    if row["fraction_lo"] > 0:
        return text
    if row["fraction_hi"] < 0:
        return text + ", so recovery made it worse"
    return text + ", not distinguishable from no recovery"


def recovery_reading(table: pd.DataFrame) -> str:
    """Sentences on a `recovery_table`, one paragraph per ratio, every number taken from the table."""
    paragraphs = []
    for ratio, part in table.groupby("ratio", sort=True):
        loss = part[part["metric"] == "loss"].iloc[0]
        kl = part[part["metric"] == "kl"].iloc[0]
        paragraphs.append(
            f"With {_percent(ratio)} of the experts removed by {display_name(loss['criterion'])}, held-out loss rises from "
            f"{loss['unpruned']:.3f} to {loss['pruned']:.3f} ({int(loss['tokens'])} held-out tokens). Training only "
            f"the routers for {int(loss['steps'])} steps on {int(loss['train_tokens'])} calibration tokens "
            f"(learning rate {loss['lr']:g}; KL on them {loss['train_kl_before']:.3f} -> {loss['train_kl_after']:.3f} nats) "
            f"brings it to {loss['recovered']:.3f}, recovering {_fraction(loss, 'the loss increase')}. "
            f"The KL to the unpruned model falls from {kl['pruned']:.3f} to {kl['recovered']:.3f} nats per token, "
            f"recovering {_fraction(kl, 'it')}."
        )
    return "**Reading.** " + "\n\n".join(paragraphs)
