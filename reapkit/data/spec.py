"""Calibration specs: which samples of which sources, under which domain names.

    >>> [str(item) for item in parse_spec("code:128,evol@data/evol.jsonl:256")]     # doctest: +SKIP
    ['code:128', 'evol@data/evol.jsonl:256']
    >>> parse_spec({"math": 4, "prose": 2})
    [SpecItem(domain='math', source='math', count=4, kind='builtin'), SpecItem(domain='prose', source='prose', count=2, kind='builtin')]

Grammar: comma-separated entries ``[domain@]source[:count]``; see :mod:`reapkit.data`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reapkit.data.domains import DOMAINS
from reapkit.errors import InvalidInput, MissingInput


@dataclass(frozen=True)
class SpecItem:
    """One entry of a calibration spec. `kind` is "builtin", "dataset" or "tokens"; `count` None means all."""

    domain: str
    source: str
    count: int | None = None
    kind: str = field(default="builtin")

    def __str__(self) -> str:
        head = (
            self.source
            if self.kind == "builtin"
            else (
                self.source
                if self.kind == "tokens" and Path(self.source).stem == self.domain
                else f"{self.domain}@{self.source}"
            )
        )
        return head + (f":{self.count}" if self.count is not None else "")


DEFAULT_SPEC = "code:32,tools:32,prose:32,math:32"


def _token_file(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("[")
    return True  # an empty file: read_token_file gives the message


def _parse_entry(entry: str) -> SpecItem:
    raw = entry
    entry = entry.strip()
    if not entry:
        raise InvalidInput(
            "empty entry in calibration spec (two commas in a row, or a trailing comma?); "
            f"write entries like {DEFAULT_SPEC!r}"
        )
    count = None
    head, sep, tail = entry.rpartition(":")
    if sep and re.fullmatch(r"[+-]?\d+", tail.strip()):
        count = int(tail)
        entry = head.strip()
        if count <= 0:
            raise InvalidInput(
                f"count {count} in calibration spec entry {raw.strip()!r} must be a positive integer, e.g. 'code:64'"
            )
    elif sep and tail.strip() and "@" not in entry and not Path(entry).exists():
        raise InvalidInput(
            f"count {tail!r} in calibration spec entry {raw.strip()!r} is not an integer; write e.g. 'code:64'"
        )
    domain, at, source = entry.partition("@")
    if at:
        domain, source = domain.strip(), source.strip()
        if not domain or not source:
            raise InvalidInput(
                f"calibration spec entry {raw.strip()!r} needs both a domain and a source around '@', e.g. 'evol@/data/evol.jsonl:256'"
            )
    else:
        source = domain = entry
    if not at and source in DOMAINS:
        return SpecItem(source, source, count, "builtin")
    path = Path(source)
    looks_like_file = path.suffix.lower() in (".json", ".jsonl", ".parquet") or "/" in source or "\\" in source
    if not at and not looks_like_file:
        raise InvalidInput(
            f"unknown built-in domain {source!r} in calibration spec; known domains: {', '.join(DOMAINS)}. "
            "For a data set write 'name@path-or-hub-name:count'"
        )
    if looks_like_file and path.suffix.lower() in (".json", ".jsonl", ".parquet"):
        if not path.is_file():
            raise MissingInput(f"calibration file {path} does not exist; check the path in spec entry {raw.strip()!r}")
        if path.suffix.lower() == ".jsonl" and _token_file(path):
            return SpecItem(domain if at else path.stem, str(path), count, "tokens")
        return SpecItem(domain if at else path.stem, str(path), count, "dataset")
    return SpecItem(domain, source, count, "dataset")


def parse_spec(spec: str | Iterable[SpecItem] | dict[str, int]) -> list[SpecItem]:
    """Parse a calibration spec (see the module docstring) into a list of :class:`SpecItem`."""
    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str):
        if not spec.strip():
            raise InvalidInput(f"empty calibration spec; pass e.g. {DEFAULT_SPEC!r}")
        items = [_parse_entry(e) for e in spec.split(",")]
    elif isinstance(spec, dict):
        items = [_parse_entry(f"{k}:{v}") for k, v in spec.items()]
    else:
        items = []
        for it in spec:
            if not isinstance(it, SpecItem):
                raise TypeError(f"calibration spec items must be SpecItem, got {type(it).__name__}")
            if it.count is not None and it.count <= 0:
                raise InvalidInput(f"count {it.count} for domain {it.domain!r} must be a positive integer")
            if not it.domain.strip():
                raise InvalidInput("a SpecItem has an empty domain name; give every source a domain name")
            items.append(it)
    if not items:
        raise InvalidInput(f"empty calibration spec; pass e.g. {DEFAULT_SPEC!r}")
    names = [i.domain for i in items]
    if len(set(names)) != len(names):
        raise InvalidInput(
            f"calibration spec names a domain twice ({names}); give each source its own domain name with 'name@source'"
        )
    return items
