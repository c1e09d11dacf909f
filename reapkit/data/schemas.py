"""Data sets in known schemas: read records with `datasets`, turn each into text or chat messages.

    >>> detect_schema({"question": "2 + 2?", "answer": "4"}).name
    'gsm8k'
    >>> to_sample({"question": "2 + 2?", "answer": "4"})
    [{'role': 'user', 'content': '2 + 2?'}, {'role': 'assistant', 'content': '4'}]
    >>> records = load_records("data.jsonl")          # doctest: +SKIP

The schemas of :data:`DATASET_SCHEMAS` are detected from the field names of a record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reapkit.errors import InvalidInput, MissingInput


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "\n".join(_content_text(p.get("text", p.get("content")) if isinstance(p, dict) else p) for p in content)
    if isinstance(content, dict):
        return _content_text(content.get("text", content.get("content")))
    return str(content)


def _maybe_json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _normalise_messages(messages) -> list[dict]:
    messages = _maybe_json(messages)
    if not isinstance(messages, list):
        raise InvalidInput(f"expected a list of chat messages, got {type(messages).__name__}")
    out = []
    for m in messages:
        msg = {
            "role": str(m.get("role", m.get("from", "user"))),
            "content": _content_text(m.get("content", m.get("value"))),
        }
        calls = m.get("tool_calls")
        if calls:
            norm = []
            for c in _maybe_json(calls):
                fn = c.get("function", c)
                args = _maybe_json(fn.get("arguments", {}))
                norm.append({"type": "function", "function": {"name": fn.get("name", ""), "arguments": args}})
            msg["tool_calls"] = norm
        for key in ("name", "tool_call_id"):
            if m.get(key):
                msg[key] = m[key]
        out.append(msg)
    return out


def _conv_messages(r):
    return _normalise_messages(r["messages"])


def _conv_xlam(r):
    tools = _maybe_json(r["tools"])
    answers = _maybe_json(r["answers"])
    return [
        {"role": "system", "content": "You can call these tools:\n" + json.dumps(tools)},
        {"role": "user", "content": str(r["query"])},
        {"role": "assistant", "content": "<tool_call>" + json.dumps(answers) + "</tool_call>"},
    ]


def _conv_instruction(r):
    return [{"role": "user", "content": str(r["instruction"])}, {"role": "assistant", "content": str(r["output"])}]


def _conv_alpaca(r):
    prompt = str(r["instruction"]) + (("\n\n" + str(r["input"])) if r.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(r["output"])}]


def _conv_gsm8k(r):
    return [{"role": "user", "content": str(r["question"])}, {"role": "assistant", "content": str(r["answer"])}]


def _conv_text(r):
    return str(r["text"])


def _has_tool_calls(r) -> bool:
    try:
        msgs = _maybe_json(r["messages"])
        return any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in msgs)
    except Exception:
        return False


@dataclass(frozen=True)
class DatasetSchema:
    """A known data-set layout: the fields that identify it and how a record becomes a sample."""

    name: str
    fields: frozenset
    convert: Callable
    test: Callable | None = None


#: Known schemas, tried in order; the first whose fields are all present (and whose test passes) wins.
DATASET_SCHEMAS: list[DatasetSchema] = [
    DatasetSchema("swe-smith-trajectories", frozenset({"messages"}), _conv_messages, _has_tool_calls),
    DatasetSchema("mixture-of-thoughts", frozenset({"messages"}), _conv_messages),
    DatasetSchema("xlam-function-calling", frozenset({"query", "tools", "answers"}), _conv_xlam),
    DatasetSchema("alpaca", frozenset({"instruction", "input", "output"}), _conv_alpaca),
    DatasetSchema("evol-codealpaca", frozenset({"instruction", "output"}), _conv_instruction),
    DatasetSchema("gsm8k", frozenset({"question", "answer"}), _conv_gsm8k),
    DatasetSchema("text", frozenset({"text"}), _conv_text),
]


def detect_schema(record: dict) -> DatasetSchema:
    """The first schema of :data:`DATASET_SCHEMAS` matching the fields of `record`; InvalidInput naming the fields otherwise."""
    keys = set(record)
    for schema in DATASET_SCHEMAS:
        if schema.fields <= keys and (schema.test is None or schema.test(record)):
            return schema
    expected = "; ".join(f"{s.name}: {', '.join(sorted(s.fields))}" for s in DATASET_SCHEMAS)
    raise InvalidInput(
        f"no converter for a record with fields {sorted(keys)}; expected one of these field sets: {expected}. "
        "Rename the columns or convert the file to one of these schemas"
    )


def to_sample(record: dict, schema: DatasetSchema | None = None) -> str | list[dict]:
    """A plain string (text schema) or a list of chat messages for one record."""
    return (schema or detect_schema(record)).convert(record)


def load_records(source: str | Path):
    """Records of a data set through `datasets` (a `Dataset`: indexable, each record a dict): a local
    .json/.jsonl/.parquet file or a hub name (split "train"). Records are converted only when read.

    A hub name may carry a split after '#' and a config before it: ``org/name#split`` or
    ``org/name#config#split``, e.g. ``openai/gsm8k#main#test``.
    """
    import datasets

    text = str(source)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet") or path.exists():
        if not path.is_file():
            raise MissingInput(
                f"data set file {path} does not exist; pass an existing .json, .jsonl or .parquet file or a hub data set name"
            )
        if suffix not in (".json", ".jsonl", ".parquet"):
            raise InvalidInput(f"cannot read data set file {path}: use a .json, .jsonl or .parquet file")
        if path.stat().st_size == 0 or (suffix != ".parquet" and not path.read_text(encoding="utf-8").strip()):
            raise InvalidInput(f"data set file {path} is empty or holds only whitespace; put at least one record in it")
        builder = "parquet" if suffix == ".parquet" else "json"
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except (ValueError, datasets.exceptions.DatasetGenerationError) as error:  # the file's content, as read
            reason = str(error.__cause__ or error).strip().splitlines()[0]
            raise InvalidInput(
                f"cannot read data set file {path} ({reason}); write one JSON record per line (.jsonl), "
                "a JSON list of records (.json) or a table (.parquet), with at least one record"
            ) from None
    else:
        parts = text.split("#")
        if len(parts) > 3:
            raise InvalidInput(
                f"cannot read hub data set {text!r}: write org/name, org/name#split or org/name#config#split"
            )
        name, config, split = (
            parts[0],
            (parts[1] if len(parts) == 3 else None),
            (parts[-1] if len(parts) > 1 else "train"),
        )
        ds = datasets.load_dataset(name, config, split=split or "train")
    if len(ds) == 0:
        raise InvalidInput(f"data set {source} holds no records; pass one with at least one record")
    return ds
