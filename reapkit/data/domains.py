"""The built-in domains: calibration and evaluation texts mined from the Python installation itself.

    >>> DOMAINS
    ('code', 'prose', 'tools', 'math')
    >>> math = domain_texts("math", "validation")
    >>> math[0].split("\\n")[1].startswith("Answer:"), split_of(math[0])
    (True, 'validation')

``code`` (standard-library source, tests excluded, cut at top-level ``def``/``class`` and into
windows of at most 60 lines), ``prose`` (``pydoc_data.topics`` and the docstrings of the standard
library), ``tools`` (function-calling examples generated from real standard-library signatures) and
``math`` (arithmetic and word problems with worked answers, generated from a fixed seed). Each text
goes to the split ``train`` (80%), ``validation`` (10%) or ``calibration`` (10%) by the SHA-1 of
its text, so the splits are disjoint and stable. Texts depend on the Python version (they are read
from it). Nothing third-party is copied into the repository and nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import random
import re
import sysconfig
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from reapkit.errors import InvalidInput

SPLITS = {"train": (0, 80), "validation": (80, 90), "calibration": (90, 100)}


def split_of(text: str) -> str:
    """The split a text belongs to: SHA-1 of its UTF-8 bytes mod 100, buckets 0-79 / 80-89 / 90-99."""
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 100
    for name, (lo, hi) in SPLITS.items():
        if lo <= bucket < hi:
            return name
    raise AssertionError(bucket)


_SKIP_PARTS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "encodings",
    "pydoc_data",
    "lib2to3",
    "turtledemo",
    "__phello__",
}
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

_TOOL_MODULES = (
    "math cmath statistics random string textwrap json re os os.path shutil glob fnmatch pathlib "
    "datetime calendar time base64 binascii hashlib hmac zlib gzip bz2 lzma html urllib.parse "
    "urllib.request difflib heapq bisect itertools functools operator fractions decimal colorsys "
    "unicodedata locale gettext shlex csv secrets uuid ipaddress socket subprocess tempfile zipfile "
    "tarfile sqlite3 email.utils mimetypes platform sysconfig keyword copy pprint reprlib inspect "
    "tokenize warnings logging webbrowser wave quopri uu zoneinfo"
).split()

_WORDS = (
    "apple river quantum garden report invoice orange sensor music travel budget castle "
    "pixel rocket winter harbor signal forest ledger planet velvet summit canyon"
).split()
_NAME_HINTS = [
    (("path", "file", "dir", "src", "dst", "filename", "root", "dest"), "path"),
    (
        (
            "n",
            "k",
            "count",
            "size",
            "length",
            "width",
            "num",
            "number",
            "indent",
            "level",
            "maxsplit",
            "start",
            "stop",
            "step",
            "year",
            "month",
            "day",
            "hour",
            "minute",
            "port",
            "mode",
            "base",
            "i",
            "j",
        ),
        "integer",
    ),
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
        return "/".join(
            [
                "",
                rng.choice(["home", "srv", "data", "tmp"]),
                rng.choice(_WORDS),
                rng.choice(_WORDS) + rng.choice([".txt", ".csv", ".json", ".log", ""]),
            ]
        )
    if kind == "integer":
        return rng.choice([rng.randint(0, 12), rng.randint(10, 999)])
    if kind == "number":
        return round(rng.uniform(-50, 500), rng.choice([0, 1, 2]))
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [rng.choice(_WORDS) for _ in range(rng.randint(1, 3))]
    return rng.choice(
        [
            rng.choice(_WORDS),
            " ".join(rng.sample(_WORDS, 2)),
            rng.choice(_WORDS).title() + " " + str(rng.randint(1, 99)),
        ]
    )


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


def _tool_schema(spec) -> dict:
    name, doc, params = spec
    props = {
        p: ({"type": "string", "description": "a file system path"} if t == "path" else {"type": t})
        for p, t, _ in params
    }
    return {
        "name": name,
        "description": doc,
        "parameters": {"type": "object", "properties": props, "required": [p for p, _, req in params if req]},
    }


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
            pairs = ", ".join(
                f"{k} set to {json.dumps(v)}" if rng.random() < 0.5 else f"{k} = {json.dumps(v)}"
                for k, v in args.items()
            )
            request = rng.choice(_REQUESTS).format(
                name=name,
                short=name.rsplit(".", 1)[-1],
                pairs=pairs,
                doc=doc.rstrip(".") + ".",
                doc_lower=doc[:1].lower() + doc[1:].rstrip(".") + ".",
            )
            tools = json.dumps([_tool_schema(s) for s in offered])
            call = json.dumps({"name": name, "arguments": args})
            out.append(f"Tools: {tools}\nUser: {request}\nAssistant: <tool_call>{call}</tool_call>\n")
    return out


# -- math -------------------------------------------------------------------------------------

_NAMES = (
    "Ava Ben Chloe Dan Eli Fay Gus Hana Ivan Jill Kofi Lena Maya Noor Omar Pia Quinn Rosa Sam Tara Uma Vik Wes Yara Zoe"
).split()
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
        return (
            f"What is {a} * {b}?\nAnswer: {a} * {t} = {a * t} and {a} * {o} = {a * o}. "
            f"{a * t} + {a * o} = {a * b}. The answer is {a * b}."
        )
    if kind == 2:
        b = rng.randint(2, 25)
        q, r = rng.randint(2, 60), rng.randint(0, b - 1)
        a = b * q + r
        return f"Divide {a} by {b}.\nAnswer: {b} * {q} = {b * q}, and {a} - {b * q} = {r}. So {a} / {b} = {q} remainder {r}."
    if kind == 3:
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        have, bags, per, give = rng.randint(3, 40), rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
        total = have + bags * per
        return (
            f"{name} has {have} {item}. {name} buys {bags} bags with {per} {item} each, then gives away {give}. "
            f"How many {item} does {name} have now?\nAnswer: The bags hold {bags} * {per} = {bags * per} {item}. "
            f"{have} + {bags * per} = {total}. After giving away {give}: {total} - {give} = {total - give}. The answer is {total - give}."
        )
    if kind == 4:
        speed, hours = rng.randint(20, 120), rng.randint(2, 9)
        return (
            f"A train travels at {speed} km per hour for {hours} hours. How far does it go?\n"
            f"Answer: Distance = speed * time = {speed} * {hours} = {speed * hours} km. The answer is {speed * hours}."
        )
    if kind == 5:
        price, qty, pct = rng.randint(2, 80), rng.randint(2, 15), rng.choice([10, 20, 25, 50])
        cost = price * qty
        off = cost * pct // 100 if cost * pct % 100 == 0 else cost * pct / 100
        return (
            f"Each notebook costs ${price}. {rng.choice(_NAMES)} buys {qty} notebooks with a {pct}% discount. "
            f"How much is paid?\nAnswer: Full price is {price} * {qty} = ${cost}. The discount is {pct}% of {cost} = ${off}. "
            f"{cost} - {off} = ${cost - off}. The answer is {cost - off}."
        )
    if kind == 6:
        a, x, b = rng.randint(2, 12), rng.randint(-20, 30), rng.randint(-50, 50)
        c = a * x + b
        sign = "+" if b >= 0 else "-"
        return (
            f"Solve {a}x {sign} {abs(b)} = {c}.\nAnswer: Subtract {b} from both sides: {a}x = {c - b}. "
            f"Divide by {a}: x = {x}. The answer is x = {x}."
        )
    n1, n2 = rng.sample(_NAMES, 2)
    age, gap, years = rng.randint(5, 40), rng.randint(2, 30), rng.randint(2, 20)
    return (
        f"{n1} is {age} years old and {n2} is {gap} years older. How old will {n2} be in {years} years?\n"
        f"Answer: {n2} is {age} + {gap} = {age + gap} now. In {years} years: {age + gap} + {years} = {age + gap + years}. "
        f"The answer is {age + gap + years}."
    )


def _math_domain(n: int = 40000, seed: int = 0) -> list[str]:
    rng = random.Random(f"math:{seed}")
    return [_math_problem(rng) for _ in range(n)]


BUILTIN_DOMAINS: dict[str, Callable[[], list[str]]] = {
    "code": _code_domain,
    "prose": _prose_domain,
    "tools": _tools_domain,
    "math": _math_domain,
}

#: The names of the built-in domains, in their usual order.
DOMAINS = tuple(BUILTIN_DOMAINS)


@functools.cache
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
        raise InvalidInput(f"unknown built-in domain {name!r}; known domains: {', '.join(BUILTIN_DOMAINS)}")
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    texts = list(_domain_splits(name)[split])
    if not texts:
        raise InvalidInput(
            f"built-in domain {name!r} has no texts in split {split!r} on this Python installation; choose another domain or a data set file"
        )
    return texts
