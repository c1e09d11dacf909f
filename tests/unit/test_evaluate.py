"""reapkit.measure.evaluate on real tiny models: loss, agreement, KL, padding, reconstruction error, samples."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from tiny_models import tiny_model
from torch.nn import functional as F

from reapkit.compress.prune import mask_experts, remove_experts
from reapkit.data import Batch, pad_batches
from reapkit.errors import InvalidInput
from reapkit.measure.evaluate import (
    ReferenceOutputs,
    aggregate,
    evaluate,
    generate_samples,
    reconstruction_error,
    reference_outputs,
    sequence_metrics,
)
from reapkit.select.plan import PruningPlan

VOCAB = 96


def make_batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (12, 8, 10, 6)]
    return pad_batches(seqs[:2], "code", 2) + pad_batches(seqs[2:], "prose", 2)


_MODELS: dict[str, torch.nn.Module] = {}


def model_of(name: str):
    if name not in _MODELS:
        _MODELS[name] = tiny_model(name)
    return _MODELS[name]


@pytest.fixture(scope="module")
def eval_batches():
    return make_batches()


def some_plan(model, keep=4):
    """A fixed plan without observations: every MoE layer keeps experts 0, 1, 4, 5 (two per routing group)."""
    from reapkit.model.discover import architecture_for

    arch = architecture_for(model)
    layers = [i for i, _ in arch.moe_blocks(model)]
    kept = {layer: [0, 1, 4, 5][:keep] if keep <= 4 else list(range(keep)) for layer in layers}
    return PruningPlan(kept, {layer: 8 for layer in layers}, "fixed")


def test_unpruned_model_against_itself(eval_batches):
    batches = eval_batches
    model = model_of("qwen3_moe")
    frame = evaluate(model, batches, reference=model, progress=False)
    assert list(frame.domain) == ["code", "prose", "all"]
    assert list(frame.columns) == [
        "domain",
        "tokens",
        "loss",
        "loss_lo",
        "loss_hi",
        "perplexity",
        "kl",
        "kl_lo",
        "kl_hi",
        "agreement",
        "agreement_lo",
        "agreement_hi",
    ]
    assert (frame.agreement == 1.0).all()
    assert frame.kl.abs().max() < 1e-6
    for ref in (
        reference_outputs(model, batches, dtype=torch.float32, progress=False),
        reference_outputs(model, batches, top_k=5, dtype=torch.float32, progress=False),
    ):
        cached = evaluate(model, batches, reference=ref, progress=False)
        assert (cached.agreement == 1.0).all()
        assert cached.kl.abs().max() < 1e-5
        assert cached.loss.tolist() == pytest.approx(frame.loss.tolist())
    half = reference_outputs(model, batches, dtype=torch.float16, progress=False)  # half the memory
    assert half.log_probs[0].dtype == torch.float16 and half.nbytes == sum(t.numel() * 2 for t in half.log_probs)
    assert evaluate(model, batches, reference=half, progress=False).kl.max() < 1e-3


def test_loss_is_token_weighted_cross_entropy(eval_batches):
    batches = eval_batches
    model = model_of("qwen3_moe")
    frame = evaluate(model, batches, progress=False).set_index("domain")
    assert "kl" not in frame.columns
    losses, counts = {}, {}
    with torch.no_grad():
        for b in batches:
            for ids, mask in zip(b.input_ids, b.attention_mask):
                real = ids[mask.bool()]  # right padding: the real tokens are a prefix
                logits = model(input_ids=real[None]).logits[0, :-1]
                losses[b.domain] = losses.get(b.domain, 0.0) + float(F.cross_entropy(logits, real[1:], reduction="sum"))
                counts[b.domain] = counts.get(b.domain, 0) + len(real) - 1
    for domain in ("code", "prose"):
        assert frame.loc[domain, "tokens"] == counts[domain]
        assert frame.loc[domain, "loss"] == pytest.approx(losses[domain] / counts[domain], rel=1e-5)
        assert frame.loc[domain, "perplexity"] == pytest.approx(
            torch.tensor(losses[domain] / counts[domain]).exp().item(), rel=1e-5
        )
    assert frame.loc["all", "tokens"] == sum(counts.values())
    assert frame.loc["all", "loss"] == pytest.approx(sum(losses.values()) / sum(counts.values()), rel=1e-5)


def test_sequence_metrics_are_each_sequence_alone(eval_batches):
    """One row per batch row: its own mean loss, KL and agreement, as if evaluated alone."""
    model, other = model_of("qwen3_moe"), model_of("gpt_oss")
    ref = reference_outputs(other, eval_batches, dtype=torch.float32, progress=False)
    sequences = sequence_metrics(model, eval_batches, reference=ref, progress=False)
    assert list(sequences.columns) == ["domain", "sequence", "tokens", "loss", "kl", "agreement"]
    assert sequences.sequence.tolist() == [0, 1, 2, 3] and sequences.domain.tolist() == [
        "code",
        "code",
        "prose",
        "prose",
    ]
    rows = [(b, r) for b in eval_batches for r in range(b.input_ids.shape[0])]
    with torch.no_grad():
        for (b, r), seq in zip(rows, sequences.itertuples()):
            real = b.input_ids[r][b.attention_mask[r].bool()]
            lp = torch.log_softmax(model(input_ids=real[None]).logits[0, :-1].float(), -1)
            ref_lp = torch.log_softmax(other(input_ids=real[None]).logits[0, :-1].float(), -1)
            assert seq.tokens == len(real) - 1
            assert seq.loss == pytest.approx(float(F.nll_loss(lp, real[1:])), rel=1e-5)
            assert seq.kl == pytest.approx(float((ref_lp.exp() * (ref_lp - lp)).sum(-1).mean()), rel=1e-4, abs=1e-6)
            assert seq.agreement == pytest.approx(float((ref_lp.argmax(-1) == lp.argmax(-1)).float().mean()))
    # the domain rows are the token-weighted means of their sequences
    frame = aggregate(sequences).set_index("domain")
    code = sequences[sequences.domain == "code"]
    assert frame.loc["code", "kl"] == pytest.approx((code.kl * code.tokens).sum() / code.tokens.sum())


def test_bootstrap_intervals_and_paired_delta(eval_batches):
    model = model_of("qwen3_moe")
    ref = reference_outputs(model, eval_batches, dtype=torch.float32, progress=False)
    unpruned = sequence_metrics(model, eval_batches, reference=ref, progress=False)
    with mask_experts(model, some_plan(model)):
        pruned = sequence_metrics(model, eval_batches, reference=ref, progress=False)
    frame = aggregate(pruned, baseline=unpruned, resamples=200, seed=3)
    for metric in ("loss", "kl", "agreement", "delta_loss"):
        assert (frame[f"{metric}_lo"] <= frame[metric] + 1e-12).all() and (
            frame[metric] <= frame[f"{metric}_hi"] + 1e-12
        ).all()
    assert (frame.loss_hi > frame.loss_lo).all()  # sequences differ: a real interval
    assert frame.delta_loss.tolist() == pytest.approx((frame.loss - aggregate(unpruned).loss).tolist())
    pd.testing.assert_frame_equal(frame, aggregate(pruned, baseline=unpruned, resamples=200, seed=3))  # deterministic
    assert not frame.equals(aggregate(pruned, baseline=unpruned, resamples=200, seed=4))
    # the unpruned model against itself: every paired difference is exactly 0
    itself = aggregate(unpruned, baseline=unpruned)
    assert (itself[["delta_loss", "delta_loss_lo", "delta_loss_hi"]].to_numpy() == 0).all()
    with pytest.raises(InvalidInput, match="other sequences"):
        aggregate(pruned, baseline=unpruned.iloc[:2])


def test_padding_is_excluded(eval_batches):
    batches = eval_batches
    model = model_of("qwen3_moe")
    ref = reference_outputs(model, batches, progress=False)
    other = [
        Batch(
            torch.where(b.attention_mask.bool(), b.input_ids, torch.full_like(b.input_ids, 77)),
            b.attention_mask,
            b.domain,
        )
        for b in batches
    ]
    assert any(not torch.equal(a.input_ids, b.input_ids) for a, b in zip(batches, other))
    before = evaluate(model, batches, progress=False)
    after = evaluate(model, other, progress=False)
    assert before.loss.tolist() == pytest.approx(after.loss.tolist(), abs=1e-6)
    assert before.tokens.tolist() == after.tokens.tolist()
    # the cached reference's batch hash ignores padding too
    assert evaluate(model, other, reference=ref, progress=False).kl.max() < 1e-3


def test_masked_and_removed_models_evaluate_alike(eval_batches):
    batches = eval_batches
    model = model_of("qwen3_moe")
    plan = some_plan(model)
    ref = reference_outputs(model, batches, dtype=torch.float32, progress=False)
    with mask_experts(model, plan):
        masked = evaluate(model, batches, reference=ref, progress=False)
    removed = remove_experts(copy.deepcopy(model), plan)
    pruned = evaluate(removed, batches, reference=ref, progress=False)
    assert masked.kl.min() > 0 and masked.agreement.min() <= 1
    for column in ("loss", "agreement", "kl"):
        assert masked[column].tolist() == pytest.approx(pruned[column].tolist(), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
def test_reconstruction_error(name, eval_batches):
    batches = eval_batches
    model = model_of(name)
    plan = some_plan(model)
    unchanged = reconstruction_error(model, model, batches, progress=False)
    assert list(unchanged.columns) == ["layer", "rel_l2", "rel_l2_lo", "rel_l2_hi"]
    assert len(unchanged) == len(plan.layers)
    assert unchanged.rel_l2.abs().max() < 1e-6
    masked = reconstruction_error(model, model, batches, compressed=lambda: mask_experts(model, plan), progress=False)
    assert (masked.rel_l2 > 1e-3).all()
    assert ((masked.rel_l2_lo <= masked.rel_l2) & (masked.rel_l2 <= masked.rel_l2_hi)).all()
    assert (masked.rel_l2_hi > masked.rel_l2_lo).all()  # sequences differ: a bootstrap interval, not a point
    removed = reconstruction_error(model, remove_experts(copy.deepcopy(model), plan), batches, progress=False)
    assert masked.rel_l2.tolist() == pytest.approx(removed.rel_l2.tolist(), rel=1e-4)
    # the mask was only active around the compressed calls: the model is unmasked again
    assert reconstruction_error(model, model, batches, progress=False).rel_l2.abs().max() < 1e-6


def test_token_ids_beyond_the_vocabulary():
    model = model_of("qwen3_moe")
    foreign = [Batch(torch.tensor([[1, 5, 300, 7]]), torch.ones(1, 4, dtype=torch.long), "code")]
    for call in (
        lambda: evaluate(model, foreign, progress=False),
        lambda: reference_outputs(model, foreign, progress=False),
        lambda: reconstruction_error(model, model, foreign, progress=False),
    ):
        with pytest.raises(InvalidInput, match=r"(?s)token id 300.*96 tokens.*(?i:re-tokenise).*own tokenizer"):
            call()


def test_reference_outputs_of_other_batches(eval_batches):
    batches = eval_batches
    model = model_of("qwen3_moe")
    ref = reference_outputs(model, batches[:1], progress=False)
    assert isinstance(ref, ReferenceOutputs)
    with pytest.raises(InvalidInput, match="different batches"):
        evaluate(model, batches, reference=ref, progress=False)
    with pytest.raises(InvalidInput, match="different batches"):
        evaluate(
            model, make_batches(seed=1), reference=reference_outputs(model, batches, progress=False), progress=False
        )


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "def return the a of to and is in for x y if else print code math".split()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def test_generate_samples_is_greedy_and_deterministic():
    model = model_of("qwen3_moe")
    tokenizer = word_tokenizer()
    prompts = {"code": "def x return", "prose": "the code of the"}
    first = generate_samples(model, tokenizer, prompts, max_new_tokens=6)
    assert set(first) == set(prompts) and all(isinstance(v, str) for v in first.values())
    assert generate_samples(model, tokenizer, prompts, max_new_tokens=6) == first
    with mask_experts(model, some_plan(model)):
        masked = generate_samples(model, tokenizer, prompts, max_new_tokens=6)
    assert set(masked) == set(prompts)


def test_evaluate_plans_gives_the_sequences_the_gaps_pair(eval_batches):
    from reapkit.measure.evaluate import evaluate_plans
    from reapkit.study.gaps import gap_table

    model = model_of("qwen3_moe")
    plan = some_plan(model)
    results, rec, seqs = evaluate_plans(
        model, {("reap", 0.5): plan, ("other", 0.5): plan}, eval_batches, sequences=True
    )
    assert set(results.criterion) == {"unpruned", "reap", "other"} and {"rel_l2_lo", "rel_l2_hi"} <= set(rec.columns)
    mine = seqs[seqs.criterion == "reap"]
    assert (
        mine.delta_loss.to_numpy() == mine.loss.to_numpy() - seqs[seqs.criterion == "unpruned"].loss.to_numpy()
    ).all()
    gaps = gap_table(seqs, hue="criterion")
    assert (gaps.loss_gap == 0).all() and (gaps.loss_gap_lo == 0).all()  # the same plan: a gap of exactly 0
