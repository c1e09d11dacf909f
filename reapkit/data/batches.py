"""Batches of token ids, one calibration domain each, from a calibration spec.

    >>> batches = calibration_batches({"math": 6}, tokenizer, batch_size=4, max_length=32)
    >>> [(b.domain, tuple(b.input_ids.shape)) for b in batches]
    [('math', (4, 32)), ('math', (2, 32))]
    >>> pad_batches([[5, 6, 7], [8]], "tokens", batch_size=2)[0].attention_mask.tolist()
    [[1, 1, 1], [1, 0, 0]]

Samples are picked by a seeded shuffle, tokenised (chat samples through the tokenizer's chat
template, see :func:`encode_sample`), truncated to `max_length` tokens, never packed, and padded
on the right.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from reapkit.data.domains import SPLITS, domain_texts
from reapkit.data.schemas import detect_schema, load_records, to_sample
from reapkit.data.spec import parse_spec
from reapkit.errors import InvalidInput, Mismatch, MissingInput


@dataclass
class Batch:
    """Right-padded token ids of one calibration domain; `attention_mask` is 0 on padding."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    domain: str

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pad_batches(sequences: list[list[int]], domain: str, batch_size: int, pad_id: int = 0) -> list[Batch]:
    """Group token sequences into right-padded batches of one domain, in order."""
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be a positive integer, got {batch_size}")
    batches = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        batches.append(Batch(ids, mask, domain))
    return batches


def read_token_file(path: str | Path, vocab_size: int | None = None) -> list[list[int]]:
    """Read a `.jsonl` file holding one JSON list of token ids per line; with `vocab_size`, every id
    must lie in [0, vocab_size) (a file made for another tokenizer is refused, naming line and id)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(
            f"token file {path} does not exist; pass a .jsonl file with one JSON list of token ids per line"
        )
    sequences = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            seq = json.loads(line)
        except ValueError:
            seq = None
        if not isinstance(seq, list) or not seq or not all(isinstance(t, int) and not isinstance(t, bool) for t in seq):
            raise InvalidInput(
                f"{path}:{number}: expected a non-empty JSON list of integer token ids, got {line[:60]!r}"
            )
        bad = [t for t in seq if t < 0 or (vocab_size is not None and t >= vocab_size)]
        if bad:
            limit = (
                f"the model's vocabulary has {vocab_size} tokens (ids 0..{vocab_size - 1})"
                if vocab_size
                else "ids are >= 0"
            )
            raise Mismatch(
                f"{path}:{number}: token id {bad[0]} is outside the vocabulary ({limit}); the file was made "
                "for another tokenizer: re-tokenize the text with this model's tokenizer"
            )
        sequences.append(seq)
    if not sequences:
        raise InvalidInput(f"token file {path} holds no sequences; write one JSON list of token ids per line")
    return sequences


def content_hash(batches: list[Batch]) -> str:
    """A short hash of the token ids (padding excluded) and domains of `batches`."""
    h = hashlib.sha256()
    for b in batches:
        h.update(b.domain.encode())
        for ids, mask in zip(b.input_ids, b.attention_mask):
            h.update(ids[mask.bool()].numpy().tobytes())
    return h.hexdigest()[:16]


MIN_MAX_LENGTH = 8


def plain_chat(messages: list[dict]) -> str:
    """Fallback rendering for tokenizers without a chat template: ``role: content`` per message,
    tool calls appended as ``<tool_call>{json}</tool_call>``, messages separated by newlines."""
    lines = []
    for m in messages:
        content = m.get("content") or ""
        for c in m.get("tool_calls") or []:
            fn = c.get("function", c)
            content += (
                ("\n" if content else "")
                + "<tool_call>"
                + json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments")})
                + "</tool_call>"
            )
        lines.append(f"{m['role']}: {content}")
    return "\n".join(lines) + "\n"


def encode_sample(sample: str | list[dict], tokenizer, *, max_length: int, chat_fallback: bool = True) -> list[int]:
    """Token ids of one sample: plain text with special tokens, chat via the template (no double BOS)."""
    if isinstance(sample, str):
        ids = tokenizer(sample, add_special_tokens=True)["input_ids"]
    else:
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(sample, tokenize=False)
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        elif chat_fallback:
            ids = tokenizer(plain_chat(sample), add_special_tokens=True)["input_ids"]
        else:
            raise InvalidInput(
                "chat-formatted data needs a tokenizer with a chat template, and this tokenizer has none; "
                "set tokenizer.chat_template, or pass chat_fallback=True for plain 'role: content' lines"
            )
    return list(ids[:max_length])


def _seeded_order(n: int, seed: int, label: str) -> list[int]:
    """0..n-1 shuffled by a generator seeded with `seed` and `label` (the domain)."""
    order = list(range(n))
    random.Random(f"{seed}:{label}").shuffle(order)
    return order


def _has_text(sample) -> bool:
    if isinstance(sample, str):
        return bool(sample.strip())
    return any(m["content"].strip() or m.get("tool_calls") for m in sample)


def calibration_batches(
    spec,
    tokenizer=None,
    *,
    batch_size: int = 8,
    max_length: int = 256,
    split: str = "calibration",
    seed: int = 0,
    chat_fallback: bool = True,
    vocab_size: int | None = None,
) -> list[Batch]:
    """Batches for a calibration spec, one domain per batch, in spec order; deterministic for a given seed.

    `split` chooses the split of the built-in domains (data sets and token files are used whole).
    Samples are picked by a seeded shuffle, truncated to `max_length` tokens, not packed.
    `vocab_size` (the model's embedding rows) checks the ids of token files, naming file and line.
    """
    if max_length < MIN_MAX_LENGTH:
        raise InvalidInput(
            f"max_length={max_length} is too short to hold a sample; use at least {MIN_MAX_LENGTH} tokens (256 is typical)"
        )
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    items = parse_spec(spec)
    if tokenizer is None and any(i.kind != "tokens" for i in items):
        raise InvalidInput(
            "this calibration spec holds text, so it needs a tokenizer; pass tokenizer=..., or use a .jsonl file of token ids"
        )
    pad_id = 0
    if tokenizer is not None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches: list[Batch] = []
    for item in items:
        if item.kind == "tokens":
            seqs = _token_sequences(item, max_length=max_length, seed=seed, vocab_size=vocab_size)
        else:
            seqs = _text_sequences(
                item, tokenizer, split=split, max_length=max_length, seed=seed, chat_fallback=chat_fallback
            )
        batches.extend(pad_batches(seqs, item.domain, batch_size, pad_id))
    return batches


def _token_sequences(item, *, max_length: int, seed: int, vocab_size: int | None = None) -> list[list[int]]:
    """`item.count` sequences of a token file in seeded order (all when None), each cut to `max_length`."""
    seqs = read_token_file(item.source, vocab_size)
    if item.count is not None and item.count > len(seqs):
        warnings.warn(
            f"{item.domain}: asked for {item.count} samples but only {len(seqs)} exist; using all {len(seqs)}",
            stacklevel=3,
        )
    return [seqs[i][:max_length] for i in sorted(_seeded_order(len(seqs), seed, item.domain)[: item.count])]


def _samples(item, split: str):
    """(number of samples, sample_at(i)) of a built-in domain or data set; records convert only when read."""
    if item.kind == "builtin":
        texts = domain_texts(item.source, split)
        return len(texts), texts.__getitem__
    records = load_records(item.source)
    schema = detect_schema(records[0])

    def sample_at(i: int):
        return to_sample(dict(records[i]), schema)

    return len(records), sample_at


def _text_sequences(item, tokenizer, *, split: str, max_length: int, seed: int, chat_fallback: bool) -> list[list[int]]:
    """Token ids of the first `item.count` samples with text, in seeded order (all when count is None)."""
    size, sample_at = _samples(item, split)
    seqs = []
    for i in _seeded_order(size, seed, item.domain):
        if item.count is not None and len(seqs) == item.count:
            break
        sample = sample_at(int(i))
        if not _has_text(sample):
            continue
        ids = encode_sample(sample, tokenizer, max_length=max_length, chat_fallback=chat_fallback)
        if ids:
            seqs.append(ids)
    if not seqs:
        raise InvalidInput(
            f"domain {item.domain!r} ({item.source}) holds only empty or whitespace-only samples; give it some text"
        )
    if item.count is not None and len(seqs) < item.count:
        warnings.warn(
            f"{item.domain}: asked for {item.count} samples but only {len(seqs)} hold text; using {len(seqs)}",
            stacklevel=3,
        )
    return seqs
