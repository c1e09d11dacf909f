"""Calibration data: batches of token ids, each tagged with the domain it came from.

    >>> from reapkit import data
    >>> batches = data.calibration_batches(data.DEFAULT_SPEC, tokenizer, batch_size=8, max_length=256)
    >>> batches[0].domain, batches[0].input_ids.shape
    ('code', torch.Size([8, 256]))
    >>> data.calibration_batches("tokens.jsonl", None)[0].domain      # token ids, no tokenizer needed
    'tokens'

Three kinds of source, combined in one *spec* (a string, a list of :class:`SpecItem`, or a dict
``{domain: count}`` of built-in domains):

* **Built-in domains** (no download, nothing third-party copied into the repository): texts
  assembled at run time from what the Python installation ships, see :data:`BUILTIN_DOMAINS` and
  :func:`domain_texts`. ``code`` (standard-library source, tests excluded, cut at top-level
  ``def``/``class`` and into windows of at most 60 lines), ``prose`` (``pydoc_data.topics`` and the
  docstrings of the standard library), ``tools`` (function-calling examples generated from real
  standard-library signatures) and ``math`` (arithmetic and word problems with worked answers,
  generated from a fixed seed). Each sample goes to one of the splits ``train`` (80%),
  ``validation`` (10%) or ``calibration`` (10%) by the SHA-1 of its text, so the splits are
  disjoint and stable. Texts depend on the Python version (they are read from it).
* **Data sets** through the ``datasets`` library, from a hub name or a local ``.json``/``.jsonl``/
  ``.parquet`` file, in the schemas of :data:`SCHEMAS` (detected from the field names).
* **Token files**: a ``.jsonl`` file with one JSON list of token ids per line (domain = file stem;
  no tokenizer needed).

Spec grammar, comma-separated entries ``[domain@]source[:count]``::

    code:128,tools:64,prose:64,math:32                 built-in domains
    evol-codealpaca-v1@/data/evol.jsonl:256            data set file, domain "evol-codealpaca-v1"
    xlam@Salesforce/xlam-function-calling-60k:128      hub data set (split "train")
    runs/tokens.jsonl                                  token-id file, all lines, domain "tokens"

A missing count means "all" (all samples of the split for a built-in domain).

Chat-formatted samples (every schema except plain ``text``) are rendered once with
``tokenizer.apply_chat_template(messages, tokenize=False)`` and the rendered string is tokenized
with ``add_special_tokens=False``, so the template's BOS is the only BOS. A tokenizer without a chat
template gets the plain fallback :func:`plain_chat` (one ``role: content`` line block per message,
tool calls as JSON), unless ``chat_fallback=False``, which raises instead. Plain text is tokenized
with ``add_special_tokens=True``. Samples are truncated to ``max_length`` tokens and never packed:
one sample per row, right padding, ``attention_mask`` 0 on padding. Every batch holds one domain.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import random
import re
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

__all__ = [
    "Batch", "SpecItem", "BUILTIN_DOMAINS", "SPLITS", "DEFAULT_SPEC", "SCHEMAS", "MIN_MAX_LENGTH",
    "pad_batches", "read_token_file", "content_hash", "calibration_batches", "parse_spec",
    "domain_texts", "split_of", "load_records", "detect_schema", "to_sample", "plain_chat",
    "encode_sample",
]


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
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
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
        raise FileNotFoundError(f"token file {path} does not exist; pass a .jsonl file with one JSON list of token ids per line")
    sequences = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            seq = json.loads(line)
        except ValueError:
            seq = None
        if not isinstance(seq, list) or not seq or not all(isinstance(t, int) and not isinstance(t, bool) for t in seq):
            raise ValueError(f"{path}:{number}: expected a non-empty JSON list of integer token ids, got {line[:60]!r}")
        bad = [t for t in seq if t < 0 or (vocab_size is not None and t >= vocab_size)]
        if bad:
            limit = f"the model's vocabulary has {vocab_size} tokens (ids 0..{vocab_size - 1})" if vocab_size else "ids are >= 0"
            raise ValueError(f"{path}:{number}: token id {bad[0]} is outside the vocabulary ({limit}); the file was made "
                             "for another tokenizer: re-tokenize the text with this model's tokenizer")
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


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

SPLITS = {"train": (0, 80), "validation": (80, 90), "calibration": (90, 100)}


def split_of(text: str) -> str:
    """The split a text belongs to: SHA-1 of its UTF-8 bytes mod 100, buckets 0-79 / 80-89 / 90-99."""
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 100
    for name, (lo, hi) in SPLITS.items():
        if lo <= bucket < hi:
            return name
    raise AssertionError(bucket)


# --------------------------------------------------------------------------------------------
# Built-in domains
# --------------------------------------------------------------------------------------------

_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
               "encodings", "pydoc_data", "lib2to3", "turtledemo", "__phello__"}
_CODE_WINDOW = 60  # lines


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _SKIP_PARTS or p.startswith("test_") or p.endswith("_test.py") for p in parts):
            continue
        files.append(path)
    return files


@functools.lru_cache(maxsize=1)
def _stdlib_sources() -> tuple[tuple[str, str], ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in _stdlib_files():
        try:
            out.append((path.relative_to(root).as_posix(), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return tuple(out)


_TOP_LEVEL = re.compile(r"^(def |class |async def |@)")


def _code_chunks(source: str) -> Iterable[str]:
    """Top-level blocks (decorators stay with their def/class), long ones cut into line windows."""
    lines = source.splitlines()
    starts = [0]
    for i, line in enumerate(lines):
        if i and _TOP_LEVEL.match(line) and not lines[i - 1].startswith("@"):
            starts.append(i)
    starts.append(len(lines))
    for a, b in zip(starts, starts[1:]):
        block = lines[a:b]
        while block and not block[-1].strip():
            block.pop()
        for w in range(0, len(block), _CODE_WINDOW):
            window = block[w : w + _CODE_WINDOW]
            if sum(1 for x in window if x.strip()) >= 3:
                yield "\n".join(window).strip("\n") + "\n"


def _code_domain() -> list[str]:
    return [chunk for _, src in _stdlib_sources() for chunk in _code_chunks(src)]


_DOCSTRING = re.compile(r'^[ \t]*(?:def |class |async def )[^\n]*\n[ \t]*[rRuU]?"""(.*?)"""', re.S | re.M)
_MODULE_DOCSTRING = re.compile(r'\A(?:#[^\n]*\n|\s*\n)*[rRuU]?"""(.*?)"""', re.S)


def _paragraph_groups(text: str, limit: int = 1500) -> Iterable[str]:
    group: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        para = para.rstrip()
        if not para.strip():
            continue
        if group and size + len(para) > limit:
            yield "\n\n".join(group)
            group, size = [], 0
        group.append(para)
        size += len(para)
    if group:
        yield "\n\n".join(group)


def _looks_like_prose(text: str) -> bool:
    words = re.findall(r"[A-Za-z]{2,}", text)
    return len(text) >= 200 and len(words) >= 30 and len(" ".join(words)) > 0.5 * len(text)


def _prose_domain() -> list[str]:
    import pydoc_data.topics

    out = []
    for key in sorted(pydoc_data.topics.topics):
        out.extend(_paragraph_groups(pydoc_data.topics.topics[key]))
    for _, src in _stdlib_sources():
        found = [m.group(1) for m in _MODULE_DOCSTRING.finditer(src)] + [m.group(1) for m in _DOCSTRING.finditer(src)]
        for doc in found:
            doc = inspect.cleandoc(doc)
            if _looks_like_prose(doc):
                out.extend(_paragraph_groups(doc))
    return [t for t in out if len(t.strip()) >= 40]


# -- tools ------------------------------------------------------------------------------------

_TOOL_MODULES = [
    "math", "cmath", "statistics", "random", "string", "textwrap", "json", "re", "os", "os.path",
    "shutil", "glob", "fnmatch", "pathlib", "datetime", "calendar", "time", "base64", "binascii",
    "hashlib", "hmac", "zlib", "gzip", "bz2", "lzma", "html", "urllib.parse", "urllib.request",
    "difflib", "heapq", "bisect", "itertools", "functools", "operator", "fractions", "decimal",
    "colorsys", "unicodedata", "locale", "gettext", "shlex", "csv", "secrets", "uuid", "ipaddress",
    "socket", "subprocess", "tempfile", "zipfile", "tarfile", "sqlite3", "email.utils",
    "mimetypes", "platform", "sysconfig", "keyword", "copy", "pprint", "reprlib", "inspect",
    "tokenize", "warnings", "logging", "webbrowser", "wave", "quopri", "uu", "zoneinfo",
]

_WORDS = ("apple river quantum garden report invoice orange sensor music travel budget castle "
          "pixel rocket winter harbor signal forest ledger planet velvet summit canyon").split()
_NAME_HINTS = [
    (("path", "file", "dir", "src", "dst", "filename", "root", "dest"), "path"),
    (("n", "k", "count", "size", "length", "width", "num", "number", "indent", "level", "maxsplit",
      "start", "stop", "step", "year", "month", "day", "hour", "minute", "port", "mode", "base", "i", "j"), "integer"),
    (("x", "y", "a", "b", "value", "val", "z", "weight", "ratio", "timeout", "seconds", "p", "q"), "number"),
    (("flag", "strict", "recursive", "follow_symlinks", "exist_ok", "reverse", "quote", "safe"), "boolean"),
]


def _param_type(param: inspect.Parameter) -> str:
    d = param.default
    if d is not inspect.Parameter.empty and d is not None:
        if isinstance(d, bool):
            return "boolean"
        if isinstance(d, int):
            return "integer"
        if isinstance(d, float):
            return "number"
        if isinstance(d, (str, bytes)):
            return "string"
        if isinstance(d, (list, tuple)):
            return "array"
    name = param.name.lower()
    for names, kind in _NAME_HINTS:
        if name in names or any(name.endswith("_" + n) for n in names if len(n) > 2):
            return kind
    return "string"


def _sample_value(kind: str, rng: random.Random):
    if kind == "path":
        return "/".join(["", rng.choice(["home", "srv", "data", "tmp"]), rng.choice(_WORDS), rng.choice(_WORDS) + rng.choice([".txt", ".csv", ".json", ".log", ""])])
    if kind == "integer":
        return rng.choice([rng.randint(0, 12), rng.randint(10, 999)])
    if kind == "number":
        return round(rng.uniform(-50, 500), rng.choice([0, 1, 2]))
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [rng.choice(_WORDS) for _ in range(rng.randint(1, 3))]
    return rng.choice([rng.choice(_WORDS), " ".join(rng.sample(_WORDS, 2)), rng.choice(_WORDS).title() + " " + str(rng.randint(1, 99))])


@functools.lru_cache(maxsize=1)
def _tool_specs() -> tuple[tuple[str, str, tuple], ...]:
    """(qualified name, one-line description, ((param, type, required), ...)) for stdlib callables."""
    import importlib

    specs = []
    for modname in _TOOL_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(modname)
        except Exception:
            continue
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr, None)
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            try:
                sig = inspect.signature(obj)
            except (TypeError, ValueError):
                continue
            params = []
            for p in sig.parameters.values():
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("self", "cls"):
                    continue
                params.append((p.name, _param_type(p), p.default is p.empty))
            if not params or len(params) > 6:
                continue
            doc = (inspect.getdoc(obj) or "").strip().split("\n\n")[0].replace("\n", " ")
            if not doc or doc.startswith(attr + "("):
                doc = f"{attr.replace('_', ' ')} from the {modname} module"
            specs.append((f"{modname}.{attr}", doc[:160], tuple(params)))
    return tuple(specs)


def _schema(spec) -> dict:
    name, doc, params = spec
    props = {p: ({"type": "string", "description": "a file system path"} if t == "path" else {"type": t}) for p, t, _ in params}
    return {"name": name, "description": doc, "parameters": {"type": "object", "properties": props,
                                                            "required": [p for p, _, req in params if req]}}


_REQUESTS = [
    "Please call {name} with {pairs}.",
    "Can you run {short} for me? Use {pairs}.",
    "I need this: {doc_lower} Set {pairs}.",
    "Use the {short} tool where {pairs}.",
    "{doc} I want it with {pairs}.",
    "Help me out: {doc_lower} The inputs are {pairs}.",
]


def _tools_domain(per_function: int = 24) -> list[str]:
    specs = _tool_specs()
    out = []
    for index, spec in enumerate(specs):
        name, doc, params = spec
        for variant in range(per_function):
            rng = random.Random(f"tools:{name}:{variant}")
            args = {}
            for p, t, required in params:
                if required or rng.random() < 0.3:
                    args[p] = _sample_value(t, rng)
            if not args:
                p, t, _ = params[0]
                args[p] = _sample_value(t, rng)
            others = rng.sample(range(len(specs)), min(rng.randint(0, 2), len(specs)))
            offered = [specs[i] for i in others if i != index] + [spec]
            rng.shuffle(offered)
            pairs = ", ".join(f"{k} set to {json.dumps(v)}" if rng.random() < 0.5 else f"{k} = {json.dumps(v)}" for k, v in args.items())
            request = rng.choice(_REQUESTS).format(name=name, short=name.rsplit(".", 1)[-1], pairs=pairs,
                                                   doc=doc.rstrip(".") + ".", doc_lower=doc[:1].lower() + doc[1:].rstrip(".") + ".")
            tools = json.dumps([_schema(s) for s in offered])
            call = json.dumps({"name": name, "arguments": args})
            out.append(f"Tools: {tools}\nUser: {request}\nAssistant: <tool_call>{call}</tool_call>\n")
    return out


# -- math -------------------------------------------------------------------------------------

_NAMES = ("Ava Ben Chloe Dan Eli Fay Gus Hana Ivan Jill Kofi Lena Maya Noor Omar Pia Quinn Rosa "
          "Sam Tara Uma Vik Wes Yara Zoe").split()
_ITEMS = ("apples pencils stickers marbles books cookies cards shells coins stamps bottles tickets").split()


def _math_problem(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(1, 500)
        s = a + b
        return f"Compute {a} + {b} - {c}.\nAnswer: {a} + {b} = {s}. {s} - {c} = {s - c}. The answer is {s - c}."
    if kind == 1:
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        t, o = b // 10 * 10, b % 10
        return (f"What is {a} * {b}?\nAnswer: {a} * {t} = {a * t} and {a} * {o} = {a * o}. "
                f"{a * t} + {a * o} = {a * b}. The answer is {a * b}.")
    if kind == 2:
        b = rng.randint(2, 25)
        q, r = rng.randint(2, 60), rng.randint(0, b - 1)
        a = b * q + r
        return f"Divide {a} by {b}.\nAnswer: {b} * {q} = {b * q}, and {a} - {b * q} = {r}. So {a} / {b} = {q} remainder {r}."
    if kind == 3:
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        have, bags, per, give = rng.randint(3, 40), rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
        total = have + bags * per
        return (f"{name} has {have} {item}. {name} buys {bags} bags with {per} {item} each, then gives away {give}. "
                f"How many {item} does {name} have now?\nAnswer: The bags hold {bags} * {per} = {bags * per} {item}. "
                f"{have} + {bags * per} = {total}. After giving away {give}: {total} - {give} = {total - give}. The answer is {total - give}.")
    if kind == 4:
        speed, hours = rng.randint(20, 120), rng.randint(2, 9)
        return (f"A train travels at {speed} km per hour for {hours} hours. How far does it go?\n"
                f"Answer: Distance = speed * time = {speed} * {hours} = {speed * hours} km. The answer is {speed * hours}.")
    if kind == 5:
        price, qty, pct = rng.randint(2, 80), rng.randint(2, 15), rng.choice([10, 20, 25, 50])
        cost = price * qty
        off = cost * pct // 100 if cost * pct % 100 == 0 else cost * pct / 100
        return (f"Each notebook costs ${price}. {rng.choice(_NAMES)} buys {qty} notebooks with a {pct}% discount. "
                f"How much is paid?\nAnswer: Full price is {price} * {qty} = ${cost}. The discount is {pct}% of {cost} = ${off}. "
                f"{cost} - {off} = ${cost - off}. The answer is {cost - off}.")
    if kind == 6:
        a, x, b = rng.randint(2, 12), rng.randint(-20, 30), rng.randint(-50, 50)
        c = a * x + b
        sign = "+" if b >= 0 else "-"
        return (f"Solve {a}x {sign} {abs(b)} = {c}.\nAnswer: Subtract {b} from both sides: {a}x = {c - b}. "
                f"Divide by {a}: x = {x}. The answer is x = {x}.")
    n1, n2 = rng.sample(_NAMES, 2)
    age, gap, years = rng.randint(5, 40), rng.randint(2, 30), rng.randint(2, 20)
    return (f"{n1} is {age} years old and {n2} is {gap} years older. How old will {n2} be in {years} years?\n"
            f"Answer: {n2} is {age} + {gap} = {age + gap} now. In {years} years: {age + gap} + {years} = {age + gap + years}. "
            f"The answer is {age + gap + years}.")


def _math_domain(n: int = 40000, seed: int = 0) -> list[str]:
    rng = random.Random(f"math:{seed}")
    return [_math_problem(rng) for _ in range(n)]


BUILTIN_DOMAINS: dict[str, Callable[[], list[str]]] = {
    "code": _code_domain,
    "prose": _prose_domain,
    "tools": _tools_domain,
    "math": _math_domain,
}


@functools.lru_cache(maxsize=None)
def _domain_splits(name: str) -> dict[str, tuple[str, ...]]:
    seen: set[str] = set()
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for text in BUILTIN_DOMAINS[name]():
        if text in seen or not text.strip():
            continue
        seen.add(text)
        out[split_of(text)].append(text)
    return {k: tuple(v) for k, v in out.items()}


def domain_texts(name: str, split: str = "calibration") -> list[str]:
    """The texts of built-in domain `name` in `split` ("train", "validation", "calibration"), in a fixed order."""
    if name not in BUILTIN_DOMAINS:
        raise ValueError(f"unknown built-in domain {name!r}; known domains: {', '.join(BUILTIN_DOMAINS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    texts = list(_domain_splits(name)[split])
    if not texts:
        raise ValueError(f"built-in domain {name!r} has no texts in split {split!r} on this Python installation")
    return texts


# --------------------------------------------------------------------------------------------
# Data sets and their schemas
# --------------------------------------------------------------------------------------------

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
        raise ValueError(f"expected a list of chat messages, got {type(messages).__name__}")
    out = []
    for m in messages:
        msg = {"role": str(m.get("role", m.get("from", "user"))), "content": _content_text(m.get("content", m.get("value")))}
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
    return [{"role": "system", "content": "You can call these tools:\n" + json.dumps(tools)},
            {"role": "user", "content": str(r["query"])},
            {"role": "assistant", "content": "<tool_call>" + json.dumps(answers) + "</tool_call>"}]


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
class _Schema:
    name: str
    fields: frozenset
    convert: Callable
    test: Callable | None = None


#: Known schemas, tried in order; the first whose fields are all present (and whose test passes) wins.
SCHEMAS: list[_Schema] = [
    _Schema("swe-smith-trajectories", frozenset({"messages"}), _conv_messages, _has_tool_calls),
    _Schema("mixture-of-thoughts", frozenset({"messages"}), _conv_messages),
    _Schema("xlam-function-calling", frozenset({"query", "tools", "answers"}), _conv_xlam),
    _Schema("alpaca", frozenset({"instruction", "input", "output"}), _conv_alpaca),
    _Schema("evol-codealpaca", frozenset({"instruction", "output"}), _conv_instruction),
    _Schema("gsm8k", frozenset({"question", "answer"}), _conv_gsm8k),
    _Schema("text", frozenset({"text"}), _conv_text),
]


def detect_schema(record: dict) -> _Schema:
    """The first schema of :data:`SCHEMAS` matching the fields of `record`; ValueError naming the fields otherwise."""
    keys = set(record)
    for schema in SCHEMAS:
        if schema.fields <= keys and (schema.test is None or schema.test(record)):
            return schema
    expected = "; ".join(f"{s.name}: {', '.join(sorted(s.fields))}" for s in SCHEMAS)
    raise ValueError(f"no converter for a record with fields {sorted(keys)}; expected one of these field sets: {expected}. "
                     "Rename the columns or convert the file to one of these schemas")


def to_sample(record: dict, schema: _Schema | None = None) -> str | list[dict]:
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
            raise FileNotFoundError(f"data set file {path} does not exist; pass an existing .json, .jsonl or .parquet file or a hub data set name")
        if suffix not in (".json", ".jsonl", ".parquet"):
            raise ValueError(f"cannot read data set file {path}: use a .json, .jsonl or .parquet file")
        if path.stat().st_size == 0 or (suffix != ".parquet" and not path.read_text(encoding="utf-8").strip()):
            raise ValueError(f"data set file {path} is empty or holds only whitespace; put at least one record in it")
        builder = "parquet" if suffix == ".parquet" else "json"
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:
        parts = text.split("#")
        if len(parts) > 3:
            raise ValueError(f"cannot read hub data set {text!r}: write org/name, org/name#split or org/name#config#split")
        name, config, split = parts[0], (parts[1] if len(parts) == 3 else None), (parts[-1] if len(parts) > 1 else "train")
        ds = datasets.load_dataset(name, config, split=split or "train")
    if len(ds) == 0:
        raise ValueError(f"data set {source} holds no records")
    return ds


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------

MIN_MAX_LENGTH = 8


def plain_chat(messages: list[dict]) -> str:
    """Fallback rendering for tokenizers without a chat template: ``role: content`` per message,
    tool calls appended as ``<tool_call>{json}</tool_call>``, messages separated by newlines."""
    lines = []
    for m in messages:
        content = m.get("content") or ""
        for c in m.get("tool_calls") or []:
            fn = c.get("function", c)
            content += ("\n" if content else "") + "<tool_call>" + json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments")}) + "</tool_call>"
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
            raise ValueError("chat-formatted data needs a tokenizer with a chat template, and this tokenizer has none; "
                             "set tokenizer.chat_template, or pass chat_fallback=True for plain 'role: content' lines")
    return list(ids[:max_length])


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpecItem:
    """One entry of a calibration spec. `kind` is "builtin", "dataset" or "tokens"; `count` None means all."""

    domain: str
    source: str
    count: int | None = None
    kind: str = field(default="builtin")

    def __str__(self) -> str:
        head = self.source if self.kind == "builtin" else (self.source if self.kind == "tokens" and Path(self.source).stem == self.domain else f"{self.domain}@{self.source}")
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
        raise ValueError("empty entry in calibration spec (two commas in a row, or a trailing comma?); "
                         f"write entries like {DEFAULT_SPEC!r}")
    count = None
    head, sep, tail = entry.rpartition(":")
    if sep and re.fullmatch(r"[+-]?\d+", tail.strip()):
        count = int(tail)
        entry = head.strip()
        if count <= 0:
            raise ValueError(f"count {count} in calibration spec entry {raw.strip()!r} must be a positive integer, e.g. 'code:64'")
    elif sep and tail.strip() and "@" not in entry and not Path(entry).exists():
        raise ValueError(f"count {tail!r} in calibration spec entry {raw.strip()!r} is not an integer; write e.g. 'code:64'")
    domain, at, source = entry.partition("@")
    if at:
        domain, source = domain.strip(), source.strip()
        if not domain or not source:
            raise ValueError(f"calibration spec entry {raw.strip()!r} needs both a domain and a source around '@', e.g. 'evol@/data/evol.jsonl:256'")
    else:
        source = domain = entry
    if not at and source in BUILTIN_DOMAINS:
        return SpecItem(source, source, count, "builtin")
    path = Path(source)
    looks_like_file = path.suffix.lower() in (".json", ".jsonl", ".parquet") or "/" in source or "\\" in source
    if not at and not looks_like_file:
        raise ValueError(f"unknown built-in domain {source!r} in calibration spec; known domains: {', '.join(BUILTIN_DOMAINS)}. "
                         "For a data set write 'name@path-or-hub-name:count'")
    if looks_like_file and path.suffix.lower() in (".json", ".jsonl", ".parquet"):
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {path} does not exist; check the path in spec entry {raw.strip()!r}")
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
            raise ValueError(f"empty calibration spec; pass e.g. {DEFAULT_SPEC!r}")
        items = [_parse_entry(e) for e in spec.split(",")]
    elif isinstance(spec, dict):
        items = [_parse_entry(f"{k}:{v}") for k, v in spec.items()]
    else:
        items = []
        for it in spec:
            if not isinstance(it, SpecItem):
                raise TypeError(f"calibration spec items must be SpecItem, got {type(it).__name__}")
            if it.count is not None and it.count <= 0:
                raise ValueError(f"count {it.count} for domain {it.domain!r} must be a positive integer")
            if not it.domain.strip():
                raise ValueError("a SpecItem has an empty domain name; give every source a domain name")
            items.append(it)
    if not items:
        raise ValueError(f"empty calibration spec; pass e.g. {DEFAULT_SPEC!r}")
    names = [i.domain for i in items]
    if len(set(names)) != len(names):
        raise ValueError(f"calibration spec names a domain twice ({names}); give each source its own domain name with 'name@source'")
    return items


def _select(n: int, count: int | None, seed: int, label: str) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{label}").shuffle(order)
    if count is not None and count > n:
        warnings.warn(f"{label}: asked for {count} samples but only {n} exist; using all {n}", stacklevel=3)
    return order[: count if count is not None else n]


def _has_text(sample) -> bool:
    if isinstance(sample, str):
        return bool(sample.strip())
    return any(m["content"].strip() or m.get("tool_calls") for m in sample)


def calibration_batches(spec, tokenizer=None, *, batch_size: int = 8, max_length: int = 256,
                        split: str = "calibration", seed: int = 0, chat_fallback: bool = True,
                        vocab_size: int | None = None) -> list[Batch]:
    """Batches for a calibration spec, one domain per batch, in spec order; deterministic for a given seed.

    `split` chooses the split of the built-in domains (data sets and token files are used whole).
    Samples are picked by a seeded shuffle, truncated to `max_length` tokens, not packed.
    `vocab_size` (the model's embedding rows) checks the ids of token files, naming file and line.
    """
    if max_length < MIN_MAX_LENGTH:
        raise ValueError(f"max_length={max_length} is too short to hold a sample; use at least {MIN_MAX_LENGTH} tokens (256 is typical)")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    items = parse_spec(spec)
    if tokenizer is None and any(i.kind != "tokens" for i in items):
        raise ValueError("this calibration spec holds text, so it needs a tokenizer; pass tokenizer=..., or use a .jsonl file of token ids")
    pad_id = 0
    if tokenizer is not None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches: list[Batch] = []
    for item in items:
        if item.kind == "tokens":
            seqs = read_token_file(item.source, vocab_size)
            seqs = [seqs[i][:max_length] for i in sorted(_select(len(seqs), item.count, seed, item.domain))]
        else:
            if item.kind == "builtin":
                samples = domain_texts(item.source, split)
                convert = lambda sample: sample  # noqa: E731
            else:  # convert only the records that are read, in the seeded order, skipping empty ones
                samples = load_records(item.source)
                schema = detect_schema(samples[0])
                convert = lambda record: to_sample(dict(record), schema)  # noqa: E731
            seqs = []
            for i in _select(len(samples), None, seed, item.domain):
                if item.count is not None and len(seqs) == item.count:
                    break
                sample = convert(samples[int(i)])
                if not _has_text(sample):
                    continue
                ids = encode_sample(sample, tokenizer, max_length=max_length, chat_fallback=chat_fallback)
                if ids:
                    seqs.append(ids)
            if not seqs:
                raise ValueError(f"domain {item.domain!r} ({item.source}) holds only empty or whitespace-only samples; give it some text")
            if item.count is not None and len(seqs) < item.count:
                warnings.warn(f"{item.domain}: asked for {item.count} samples but only {len(seqs)} hold text; using {len(seqs)}",
                              stacklevel=2)
        batches.extend(pad_batches(seqs, item.domain, batch_size, pad_id))
    return batches
