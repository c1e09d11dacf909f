"""Calibration data: batches of token ids, each tagged with the domain it came from.

    >>> batches = calibration_batches("tokens.jsonl", tokenizer=None, batch_size=8)
    >>> batches[0].domain, batches[0].input_ids.shape
    ('tokens', torch.Size([8, 57]))
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch


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


def read_token_file(path: str | Path) -> list[list[int]]:
    """Read a `.jsonl` file holding one JSON list of token ids per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist; pass a .jsonl file with one JSON list of token ids per line")
    sequences = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        seq = json.loads(line)
        if not isinstance(seq, list) or not seq or not all(isinstance(t, int) for t in seq):
            raise ValueError(f"{path}:{number}: expected a non-empty JSON list of integer token ids, got {line[:60]!r}")
        sequences.append(seq)
    if not sequences:
        raise ValueError(f"token file {path} holds no sequences; write one JSON list of token ids per line")
    return sequences


def content_hash(batches: list[Batch]) -> str:
    """A short hash of the token ids (padding excluded) and domains of `batches`."""
    h = hashlib.sha256()
    for b in batches:
        h.update(b.domain.encode())
        for ids, mask in zip(b.input_ids, b.attention_mask):
            h.update(ids[mask.bool()].numpy().tobytes())
    return h.hexdigest()[:16]


def calibration_batches(spec: str, tokenizer=None, *, batch_size: int = 8, max_length: int = 512) -> list[Batch]:
    """Batches for a calibration spec. For now: a path to a `.jsonl` file of token ids (domain = file stem)."""
    path = Path(spec)
    if path.suffix == ".jsonl":
        sequences = [s[:max_length] for s in read_token_file(path)]
        return pad_batches(sequences, path.stem, batch_size)
    raise ValueError(f"unknown calibration spec {spec!r}; pass a .jsonl file of token ids")
