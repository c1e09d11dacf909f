"""What compression costs: loss / perplexity per domain, agreement with the original, block errors.

    >>> from reapkit.compress.prune import mask_experts
    >>> ref = reference_outputs(model, eval_batches)                  # cache the original once
    >>> with mask_experts(model, plan):
    ...     rows = evaluate(model, eval_batches, reference=ref)       # one row per domain + "all"
    >>> rows[["domain", "tokens", "loss", "loss_lo", "loss_hi", "kl", "agreement"]].round(2).tail(1)
      domain  tokens  loss  loss_lo  loss_hi    kl  agreement
    4    all     918  4.02     3.47     4.56  1.54       0.51
    >>> reconstruction_error(model, model, eval_batches, compressed=lambda: mask_experts(model, plan)).rel_l2.round(3).tolist()
    [0.489, 0.627, 0.494, 0.382]
    >>> generate_samples(model, tokenizer, {"prose": "The list"}, max_new_tokens=6)   # greedy, deterministic
    {'prose': ' of the value of the value'}

Every metric is computed over *target* positions: position t predicts token t + 1, and it counts
only when both t and t + 1 are real (attention mask 1), so padding never counts, whichever side it
is on. Domain rows and the "all" row are token-weighted means over those positions, each with a
95 % percentile bootstrap interval over evaluation sequences (`reapkit.measure.stats.bootstrap`; seeded,
so deterministic). `sequence_metrics` gives the per-sequence values; `lm_eval`, benchmarks (`reapkit.measure.harness`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from reapkit.errors import InvalidInput, Mismatch
from reapkit.measure.harness import lm_eval
from reapkit.measure.schema import UNPRUNED, interval_columns
from reapkit.measure.stats import LEVEL, RESAMPLES, bootstrap
from reapkit.model.discover import architecture_for
from reapkit.model.hooks import eval_mode, forward_hooks

__all__ = [
    "evaluate",
    "sequence_metrics",
    "aggregate",
    "METRICS",
    "interval_columns",
    "evaluate_plans",
    "reference_outputs",
    "ReferenceOutputs",
    "reconstruction_error",
    "generate_samples",
    "lm_eval",
]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _device(model) -> torch.device:
    from reapkit.model.loading import input_device

    return input_device(model)


def _vocab_size(model) -> int:
    embeddings = model.get_input_embeddings()
    return int(getattr(embeddings, "num_embeddings", None) or model.config.get_text_config().vocab_size)


def _check_ids(model, batches, what: str = "model") -> None:
    """Token ids outside the model's embedding table: a batch tokenised for another tokenizer."""
    vocab = _vocab_size(model)
    if not batches:
        raise InvalidInput("no batches were given; pass at least one reapkit.data.Batch")
    high = max(int(b.input_ids.max()) for b in batches)
    low = min(int(b.input_ids.min()) for b in batches)
    if high >= vocab or low < 0:
        bad = high if high >= vocab else low
        raise Mismatch(
            f"the batches hold token id {bad} (max id {high}) but the {what}'s vocabulary has {vocab} tokens "
            f"(ids 0..{vocab - 1}); the batches were tokenised with another tokenizer. Re-tokenise the text "
            "with the model's own tokenizer (e.g. reapkit.data.calibration_batches(spec, tokenizer_of_this_model))"
        )


def _target_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T-1] bool: position t predicts t+1 and both are real tokens."""
    mask = attention_mask.bool()
    return mask[:, :-1] & mask[:, 1:]


def _forward_logits(model, batch) -> torch.Tensor:
    """Float32 next-token logits at the target positions, [N, V], on the model's device."""
    device = _device(model)
    out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
    mask = _target_mask(batch.attention_mask).to(device)
    return out.logits[:, :-1][mask].float()


def _batches_hash(batches) -> str:
    from reapkit.data import content_hash

    return content_hash(batches) + f"/{len(batches)}:" + ",".join(str(tuple(b.input_ids.shape)) for b in batches)


# --------------------------------------------------------------------------------------------
# Reference outputs
# --------------------------------------------------------------------------------------------


@dataclass
class ReferenceOutputs:
    """Cached next-token log-probabilities of a reference model on a fixed list of batches.

    `log_probs[i]` is [N_i, V] (full, `top_k is None`) or [N_i, k] with `indices[i]` [N_i, k]
    (top-k), for the N_i target positions of batch i, on the CPU. Memory: full log-probs take
    N x V x 2 bytes in float16 (float32: x 4); e.g. 20,000 target tokens x 4,096 vocab = 164 MB in
    float16. Top-k takes N x k x (2 + 8) bytes; its KL is the KL of the distributions coarsened
    to the reference's top-k tokens plus one "rest" bucket, a lower bound of the full KL.
    """

    log_probs: list[torch.Tensor]
    indices: list[torch.Tensor] | None
    batches_hash: str
    vocab_size: int
    top_k: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        total = sum(t.numel() * t.element_size() for t in self.log_probs)
        return total + sum(t.numel() * t.element_size() for t in (self.indices or []))

    def check(self, batches, model) -> None:
        if len(batches) != len(self.log_probs) or _batches_hash(batches) != self.batches_hash:
            raise Mismatch(
                "these reference outputs were computed on different batches than the ones being evaluated "
                f"({len(self.log_probs)} batches, hash {self.batches_hash.split('/')[0]}; given {len(batches)} batches, "
                f"hash {_batches_hash(batches).split('/')[0]}); build them with reference_outputs(original_model, batches) "
                "on exactly the batches you evaluate"
            )
        vocab = _vocab_size(model)
        if vocab != self.vocab_size:
            raise Mismatch(
                f"the reference outputs have a vocabulary of {self.vocab_size} tokens but the model has {vocab}; "
                "compare models that share one tokenizer"
            )


@torch.no_grad()
def reference_outputs(
    model, batches, *, top_k: int | None = None, dtype=torch.float32, progress: bool = True
) -> ReferenceOutputs:
    """Run `model` once over `batches` and keep its next-token log-probs (see `ReferenceOutputs`).

    `top_k=None` keeps the full distribution (exact KL); `top_k=k` keeps the k most likely tokens.
    """
    _check_ids(model, batches, "reference model")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise InvalidInput(f"top_k must be None (full log-probs) or a positive integer, got {top_k!r}")
    log_probs, indices = [], [] if top_k else None
    with eval_mode(model):
        for batch in tqdm(batches, desc="reference", unit="batch", disable=not progress):
            lp = torch.log_softmax(_forward_logits(model, batch), dim=-1)
            if top_k:
                values, idx = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
                log_probs.append(values.to("cpu", dtype))
                indices.append(idx.cpu())
            else:
                log_probs.append(lp.to("cpu", dtype))
    return ReferenceOutputs(log_probs, indices, _batches_hash(batches), _vocab_size(model), top_k)


def _compare(ref_lp: torch.Tensor, ref_idx: torch.Tensor | None, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (top-1 agreement as 0/1, KL(ref || model) in nats), float32 on `lp`'s device."""
    ref_lp = ref_lp.to(lp.device, torch.float32)
    if ref_idx is None:
        agree = ref_lp.argmax(-1) == lp.argmax(-1)
        p = ref_lp.exp()
        kl = torch.where(p > 0, p * (ref_lp - lp), torch.zeros_like(p)).sum(-1)  # 0 log 0 = 0
    else:
        ref_idx = ref_idx.to(lp.device)
        agree = ref_idx[:, 0] == lp.argmax(-1)
        q_lp = lp.gather(-1, ref_idx)
        p = ref_lp.exp()
        kl = torch.where(p > 0, p * (ref_lp - q_lp), torch.zeros_like(p)).sum(-1)
        p_rest = (1 - p.sum(-1)).clamp_min(0)
        q_rest = (1 - q_lp.exp().sum(-1)).clamp_min(1e-30)
        kl = kl + torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-30).log() - q_rest.log()), torch.zeros_like(kl))
    return agree.float(), kl.clamp_min(0)


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------

#: Metrics with a bootstrap interval: columns `<metric>`, `<metric>_lo`, `<metric>_hi` (`reapkit.measure.schema.interval_columns`).
METRICS = ("loss", "kl", "agreement")


def _check_reference(model, batches, reference) -> None:
    if isinstance(reference, ReferenceOutputs):
        reference.check(batches, model)
    elif reference is not None:
        if not isinstance(reference, torch.nn.Module):
            raise TypeError(f"reference must be a model or ReferenceOutputs, got {type(reference).__name__}")
        _check_ids(reference, batches, "reference model")
        if _vocab_size(reference) != _vocab_size(model):
            raise Mismatch(
                f"the reference model has {_vocab_size(reference)} tokens in its vocabulary, the model "
                f"{_vocab_size(model)}; compare models that share one tokenizer"
            )


def _per_sequence(values: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """[size] float64: the sum of `values` (one per target position) over each sequence (`rows`)."""
    return torch.zeros(size, dtype=torch.float64, device=values.device).index_add_(0, rows, values.double())


@torch.no_grad()
def sequence_metrics(model, batches, *, reference=None, progress: bool = True) -> pd.DataFrame:
    """One row per evaluation sequence (a row of a batch, numbered in batch order), the unit the
    bootstrap resamples: columns domain, sequence, tokens (target positions), loss (mean over its
    target positions), and with a reference kl and agreement. Sequences without a target position
    are left out.

        >>> sequence_metrics(model, eval_batches).loss.round(3).tolist()[:2]     # of sequences 0 and 1 (code)
        [3.384, 4.284]
    """
    _check_ids(model, batches)
    _check_reference(model, batches, reference)
    cached = isinstance(reference, ReferenceOutputs)
    columns: dict[str, list] = {"domain": [], "sequence": [], "tokens": [], "loss": []}
    if reference is not None:
        columns.update(kl=[], agreement=[])
    modules = [model] + ([reference] if reference is not None and not cached else [])
    with eval_mode(*modules):
        first = 0
        for i, batch in enumerate(tqdm(batches, desc="evaluate", unit="batch", disable=not progress)):
            logits = _forward_logits(model, batch)
            mask = _target_mask(batch.attention_mask)
            rows = mask.nonzero()[:, 0].to(logits.device)  # the sequence of each target position
            targets = batch.input_ids[:, 1:][mask].to(logits.device)
            size = batch.input_ids.shape[0]
            sums = {"loss": _per_sequence(F.cross_entropy(logits, targets, reduction="none"), rows, size)}
            if reference is not None:
                lp = torch.log_softmax(logits, dim=-1)
                if cached:
                    ref_lp, ref_idx = (
                        reference.log_probs[i],
                        None if reference.indices is None else reference.indices[i],
                    )
                else:
                    ref_lp, ref_idx = torch.log_softmax(_forward_logits(reference, batch), dim=-1), None
                if ref_lp.shape[0] != lp.shape[0]:
                    raise Mismatch(
                        f"batch {i}: the reference has {ref_lp.shape[0]} target positions, the model "
                        f"{lp.shape[0]}; the reference outputs belong to other batches"
                    )
                agree, kl = _compare(ref_lp, ref_idx, lp)
                sums.update(kl=_per_sequence(kl, rows, size), agreement=_per_sequence(agree, rows, size))
            tokens = mask.sum(1)
            keep = tokens > 0
            columns["domain"] += [batch.domain] * int(keep.sum())
            columns["sequence"] += (first + keep.nonzero()[:, 0]).tolist()
            columns["tokens"] += tokens[keep].tolist()
            for name, value in sums.items():
                columns[name] += (value.cpu()[keep] / tokens[keep]).tolist()
            first += size
    return pd.DataFrame(columns)


def aggregate(
    sequences: pd.DataFrame,
    *,
    baseline: pd.DataFrame | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Token-weighted means of `sequence_metrics` per domain and over all ("all"), with percentile
    bootstrap intervals over sequences (`loss_lo`, `loss_hi`, ...; seeded, deterministic).

    With `baseline` (the `sequence_metrics` of the unpruned model on the same sequences), adds
    `delta_loss` = loss - baseline loss with a paired interval (`delta_loss_lo`, `delta_loss_hi`);
    so does a `delta_loss` column of `sequences` (per-sequence differences).

        >>> reap = sequences[(sequences.label == "reap") & (sequences.ratio == 0.5)]   # of study_sequences
        >>> aggregate(reap)[["domain", "loss", "delta_loss", "delta_loss_lo"]].round(3).values[-1].tolist()   # "all"
        ['all', 4.023, 1.455, 1.071]
    """
    if baseline is not None:
        mine, theirs = sequences[["sequence", "tokens"]].to_numpy(), baseline[["sequence", "tokens"]].to_numpy()
        if mine.shape != theirs.shape or not (mine == theirs).all():
            raise Mismatch(
                "the baseline was evaluated on other sequences (sequence numbers or token counts differ); "
                "pass the sequence_metrics of the unpruned model on the same batches"
            )
        sequences = sequences.assign(delta_loss=sequences["loss"].to_numpy() - baseline["loss"].to_numpy())
    metrics = [m for m in (*METRICS, "delta_loss") if m in sequences.columns]
    rows = []
    domains = list(dict.fromkeys(sequences["domain"]))
    for domain in [*domains, "all"]:
        part = sequences if domain == "all" else sequences[sequences["domain"] == domain]
        tokens = part["tokens"].to_numpy(np.float64)
        row = {"domain": domain, "tokens": int(tokens.sum())}
        for metric in metrics:  # per-sequence differences (delta_loss) make the interval a paired one
            row.update(
                zip(
                    interval_columns(metric),
                    bootstrap(part[metric].to_numpy() * tokens, tokens, resamples=resamples, seed=seed, level=level),
                )
            )
        row["perplexity"] = math.exp(row["loss"]) if row["loss"] < 700 else math.inf
        rows.append(row)
    order = [
        "domain",
        "tokens",
        *interval_columns("loss"),
        "perplexity",
        *[c for m in metrics[1:] for c in interval_columns(m)],
    ]
    return pd.DataFrame(rows, columns=order)


def evaluate(
    model, batches, *, reference=None, baseline=None, resamples: int = RESAMPLES, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Loss and perplexity of `model` per domain (plus a row "all"), optionally against a reference,
    each with a 95 % bootstrap interval over evaluation sequences (`aggregate`).

    `reference` is another model (run batch by batch beside `model`) or a `ReferenceOutputs` from
    `reference_outputs(original, batches)` (to compare many variants with one pass of the
    original). With a reference, the frame adds `agreement` (the fraction of target positions
    whose argmax next token equals the reference's) and `kl` (mean KL(reference || model) in nats).
    `baseline`: the `sequence_metrics` of the unpruned model, for `delta_loss`. Works for masked
    (inside `mask_experts`), removed and merged models, on the model's device.
    """
    sequences = sequence_metrics(model, batches, reference=reference, progress=progress)
    return aggregate(sequences, baseline=baseline, resamples=resamples, seed=seed)


# --------------------------------------------------------------------------------------------
# Reconstruction error of each MoE block
# --------------------------------------------------------------------------------------------


def _first(output) -> torch.Tensor:
    """The hidden states of a block output (gpt_oss and llama4 blocks return tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def reconstruction_error(reference, model, batches, *, compressed=None, progress: bool = True) -> pd.DataFrame:
    """Per MoE layer, ||y_ref - y|| / ||y_ref|| of the block outputs on the *same* block inputs, with
    its 95% percentile bootstrap interval over sequences (`rel_l2_lo`, `rel_l2_hi`).

    The reference model runs on each batch while forward hooks capture the input and the output
    of each of its MoE blocks; then each block of `model` at the same decoder layer is called on
    the captured input. Norms are taken over all non-padding tokens of all batches (sums of
    squares, then one ratio per layer; the bootstrap resamples the sequences' sums of squares).
    Tuple outputs (gpt_oss, llama4) use their hidden states.

    For a compression that is a mask, pass the same model twice and a context-manager factory:
    `reconstruction_error(model, model, batches, compressed=lambda: mask_experts(model, plan))`;
    `compressed()` is entered around each batch's compressed block calls only, so the reference
    pass runs unmasked. For removed or merged experts pass the original and the changed model.
    """
    _check_ids(reference, batches, "reference model")
    arch_ref, arch = architecture_for(reference), architecture_for(model)
    ref_blocks = dict(arch_ref.moe_blocks(reference))
    blocks = dict(arch.moe_blocks(model))
    if set(ref_blocks) != set(blocks):
        raise Mismatch(
            f"the models have MoE blocks at different decoder layers ({sorted(ref_blocks)} vs {sorted(blocks)}); "
            "compare a model with its own compressed version"
        )
    layers = sorted(blocks)
    diff: dict[int, list] = {layer: [] for layer in layers}  # per batch: [sequences] sums of squares
    norm: dict[int, list] = {layer: [] for layer in layers}
    captured: dict[int, tuple] = {}
    capturing = [True]  # off while the compressed blocks run (reference may be model)

    def make_hook(layer):
        def hook(module, args, kwargs, output):
            if capturing[0]:
                captured[layer] = (args, kwargs, _first(output).detach())

        return hook

    device = _device(model)
    hooks = {ref_blocks[layer]: make_hook(layer) for layer in layers}
    with eval_mode(reference, model), forward_hooks(hooks, with_kwargs=True):
        for batch in tqdm(batches, desc="reconstruction", unit="batch", disable=not progress):
            captured.clear()
            ref_device = _device(reference)
            reference(
                input_ids=batch.input_ids.to(ref_device),
                attention_mask=batch.attention_mask.to(ref_device),
                use_cache=False,
            )
            valid = batch.attention_mask.reshape(-1).bool()
            size, length = batch.attention_mask.shape
            rows = torch.arange(size).repeat_interleave(length)[valid]  # the sequence of each valid token
            context = compressed() if compressed is not None else contextlib.nullcontext()
            capturing[0] = False
            with context:
                for layer in layers:
                    args, kwargs, y_ref = captured[layer]
                    args = tuple(a.to(device) if torch.is_tensor(a) else a for a in args)
                    kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()}
                    y = _first(blocks[layer](*args, **kwargs))
                    y_ref = y_ref.reshape(-1, y_ref.shape[-1])[valid.to(y_ref.device)].float()
                    y = y.reshape(-1, y.shape[-1])[valid.to(y.device)].float().to(y_ref.device)
                    where = rows.to(y_ref.device)
                    diff[layer].append(_per_sequence(((y_ref - y) ** 2).sum(-1), where, size).cpu())
                    norm[layer].append(_per_sequence((y_ref**2).sum(-1), where, size).cpu())
            capturing[0] = True
    out = []
    for layer in layers:
        d, n = torch.cat(diff[layer]).numpy(), torch.cat(norm[layer]).numpy()
        ratio = bootstrap(d, n) if n.sum() > 0 else (0.0, 0.0, 0.0)
        out.append((layer, *(math.sqrt(max(v, 0.0)) for v in ratio)))  # sqrt is monotone: the interval carries over
    return pd.DataFrame(out, columns=["layer", *interval_columns("rel_l2")])


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: dict[str, str], *, max_new_tokens: int = 40) -> dict[str, str]:
    """Greedy continuation of each prompt, `{domain: generated text (without the prompt)}`.

    Deterministic (no sampling), one prompt at a time (no padding), for side-by-side comparison
    of a model before and after compression.
    """
    device = _device(model)
    out = {}
    with eval_mode(model):
        for domain, prompt in prompts.items():
            encoded = tokenizer(prompt, return_tensors="pt")
            ids = encoded["input_ids"].to(device)
            vocab = _vocab_size(model)
            if int(ids.max()) >= vocab:
                raise Mismatch(
                    f"the tokenizer produced token id {int(ids.max())} but the model's vocabulary has {vocab} "
                    "tokens; pass the model's own tokenizer"
                )
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
            out[domain] = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    return out


def evaluate_plans(model, plans: dict, batches, *, reference=None, progress: bool = False, sequences: bool = False):
    """Evaluate each plan of {(criterion, ratio): PruningPlan} by masking it on `model`.

    Returns (results, reconstruction): tidy frames with columns ratio, criterion, then those of
    `aggregate` (domain, tokens, loss, perplexity, kl, agreement, delta_loss, each metric with its
    `_lo` / `_hi` interval; ratio 0 / criterion "unpruned" is the unpruned model), and ratio,
    criterion, layer, rel_l2 (with rel_l2_lo / rel_l2_hi, see `reconstruction_error`). With
    `sequences=True`, also the per-sequence frame (ratio, criterion, then `sequence_metrics`' columns
    and delta_loss), from which `reapkit.study.gaps.gap_table(..., hue="criterion")` pairs the plans.
    """
    from reapkit.compress.prune import mask_experts

    if reference is None:  # float32: the unpruned model agrees with itself exactly (agreement 1, KL 0)
        reference = reference_outputs(model, batches, dtype=torch.float32, progress=progress)
    unpruned = sequence_metrics(model, batches, reference=reference, progress=progress)
    per_sequence = [unpruned.assign(delta_loss=0.0, ratio=0.0, criterion=UNPRUNED)]
    errors = []
    for (criterion, ratio), plan in plans.items():
        with mask_experts(model, plan):
            part = sequence_metrics(model, batches, reference=reference, progress=progress)
        delta = part["loss"] - unpruned["loss"].to_numpy()
        per_sequence.append(part.assign(delta_loss=delta, ratio=ratio, criterion=criterion))
        rec = reconstruction_error(
            model, model, batches, compressed=lambda p=plan: mask_experts(model, p), progress=False
        )
        errors.append(rec.assign(ratio=ratio, criterion=criterion))
    first = lambda frame: frame[["ratio", "criterion", *frame.columns.drop(["ratio", "criterion"])]]  # noqa: E731
    results = [
        aggregate(p.drop(columns="delta_loss"), baseline=unpruned).assign(
            ratio=p.ratio.iloc[0], criterion=p.criterion.iloc[0]
        )
        for p in per_sequence
    ]
    empty = pd.DataFrame(columns=["ratio", "criterion", "layer", *interval_columns("rel_l2")])
    out = first(pd.concat(results, ignore_index=True)), first(pd.concat(errors, ignore_index=True)) if errors else empty
    return (*out, first(pd.concat(per_sequence, ignore_index=True))) if sequences else out
