"""reapkit.data: built-in domains, spec parsing, data-set converters, batches and bad input."""

from __future__ import annotations

import json

import pytest
from fixtures.tiny_tokenizer import tiny_tokenizer

from reapkit import data
from reapkit.data import SpecItem
from reapkit.errors import InvalidInput, MissingInput


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tok_plain():
    return tiny_tokenizer(chat_template=False)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- built-in domains -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(data.BUILTIN_DOMAINS))
def test_builtin_domain_nonempty_disjoint_deterministic(name):
    splits = {s: data.domain_texts(name, s) for s in data.SPLITS}
    assert all(len(v) > 50 for v in splits.values())
    assert all(t.strip() for v in splits.values() for t in v)
    sets = {s: set(v) for s, v in splits.items()}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["calibration"]
    assert not sets["validation"] & sets["calibration"]
    assert all(data.split_of(t) == s for s, v in splits.items() for t in v[:50])
    assert len(splits["train"]) > 4 * len(splits["validation"])


@pytest.mark.parametrize("name", ["math", "tools"])
def test_generated_domains_are_reproduced(name):
    assert data.BUILTIN_DOMAINS[name]() == data.BUILTIN_DOMAINS[name]()


def test_split_of_is_stable():
    assert (data.split_of("hello"), data.split_of("reapkit"), data.split_of("x")) == (
        "validation",
        "train",
        "calibration",
    )


def test_domain_contents():
    code = data.domain_texts("code", "validation")
    assert sum(("def " in t or "class " in t) for t in code) > len(code) // 2
    assert max(len(t.splitlines()) for t in code) <= 60
    tools = data.domain_texts("tools", "validation")
    head, user, answer = tools[0].splitlines()[:3]
    schemas = json.loads(head.removeprefix("Tools: "))
    call = json.loads(answer.removeprefix("Assistant: <tool_call>").removesuffix("</tool_call>"))
    assert call["name"] in {s["name"] for s in schemas} and user.startswith("User: ")
    assert set(call["arguments"]) <= set(
        next(s for s in schemas if s["name"] == call["name"])["parameters"]["properties"]
    )
    assert all("\nAnswer: " in t for t in data.domain_texts("math", "validation")[:100])
    assert any("statement" in t for t in data.domain_texts("prose", "validation"))


def test_domain_texts_unknown():
    with pytest.raises(InvalidInput, match="known domains: code, prose, tools, math"):
        data.domain_texts("poetry", "train")
    with pytest.raises(InvalidInput, match="unknown split"):
        data.domain_texts("code", "test")


# --- spec parser ------------------------------------------------------------------------------


def test_parse_default_and_builtin():
    items = data.parse_spec(data.DEFAULT_SPEC)
    assert [i.domain for i in items] == ["code", "tools", "prose", "math"]
    assert all(i.kind == "builtin" and i.count and i.count > 0 for i in items)
    assert data.parse_spec("code:128, math") == [
        SpecItem("code", "code", 128, "builtin"),
        SpecItem("math", "math", None, "builtin"),
    ]
    assert data.parse_spec({"code": 4, "prose": 2}) == [SpecItem("code", "code", 4), SpecItem("prose", "prose", 2)]
    assert ",".join(map(str, data.parse_spec("code:128,tools:64"))) == "code:128,tools:64"


def test_parse_files(tmp_path):
    tokens = write_jsonl(tmp_path / "toks.jsonl", [[1, 2, 3]])
    evol = write_jsonl(tmp_path / "evol.jsonl", [{"instruction": "a", "output": "b"}])
    items = data.parse_spec(f"{tokens},evol-codealpaca-v1@{evol}:256,{evol}:3,gsm@openai/gsm8k:10")
    assert items[0] == SpecItem("toks", str(tokens), None, "tokens")
    assert items[1] == SpecItem("evol-codealpaca-v1", str(evol), 256, "dataset")
    assert items[2] == SpecItem("evol", str(evol), 3, "dataset")
    assert items[3] == SpecItem("gsm", "openai/gsm8k", 10, "dataset")
    assert data.parse_spec(items) == items


# --- converters -------------------------------------------------------------------------------

SCHEMA_FIXTURES = {
    "evol-codealpaca": [{"instruction": "Write a function that adds one.", "output": "def f(x):\n    return x + 1"}]
    * 3,
    "xlam-function-calling": [
        {
            "query": "What is 3 + 4?",
            "id": 1,
            "tools": json.dumps(
                [{"name": "add", "description": "Add", "parameters": {"a": {"type": "int"}, "b": {"type": "int"}}}]
            ),
            "answers": json.dumps([{"name": "add", "arguments": {"a": 3, "b": 4}}]),
        }
    ],
    "swe-smith-trajectories": [
        {
            "instance_id": "x",
            "messages": json.dumps(
                [
                    {"role": "system", "content": "You are a coding agent."},
                    {"role": "user", "content": [{"type": "text", "text": "Fix the bug in foo.py"}]},
                    {
                        "role": "assistant",
                        "content": "Let me look.",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "bash", "arguments": '{"command": "cat foo.py"}'},
                            }
                        ],
                    },
                    {"role": "tool", "content": "print('hi')", "tool_call_id": "c1"},
                    {"role": "assistant", "content": "Done."},
                ]
            ),
        }
    ],
    "mixture-of-thoughts": [
        {
            "messages": [
                {"role": "user", "content": "Why is the sky blue?"},
                {"role": "assistant", "content": "<think>scattering</think> Rayleigh scattering."},
            ],
            "num_tokens": 12,
            "source": "science",
        }
    ],
    "text": [{"text": "The quick brown fox jumps over the lazy dog.", "url": "http://x", "timestamp": "2020"}],
    "gsm8k": [{"question": "Sam has 3 apples and buys 2. How many?", "answer": "3 + 2 = 5\n#### 5"}],
    "alpaca": [
        {"instruction": "Translate to French.", "input": "Hello", "output": "Bonjour"},
        {"instruction": "Say hi.", "input": "", "output": "Hi"},
    ],
}


@pytest.mark.parametrize("schema", list(SCHEMA_FIXTURES))
def test_converter(schema, tmp_path, tok):
    path = write_jsonl(tmp_path / f"{schema}.jsonl", SCHEMA_FIXTURES[schema])
    records = data.load_records(path)
    assert data.detect_schema(records[0]).name == schema
    sample = data.to_sample(records[0])
    batches = data.calibration_batches(f"mine@{path}:1", tok, batch_size=4, max_length=512)
    assert [b.domain for b in batches] == ["mine"]
    ids = batches[0].input_ids[0][batches[0].attention_mask[0].bool()].tolist()
    text = tok.decode(ids)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # exactly one BOS
    if schema == "text":
        assert isinstance(sample, str) and "quick brown fox" in text
    else:
        assert isinstance(sample, list) and all({"role", "content"} <= set(m) for m in sample)
        assert "<|im_start|>user" in text and "<|im_start|>assistant" in text
    if schema == "swe-smith-trajectories":
        assert "Fix the bug in foo.py" in text and '"command": "cat foo.py"' in text and "<|im_start|>tool" in text
    if schema == "xlam-function-calling":
        assert '"arguments": {"a": 3, "b": 4}' in text


def test_parquet_and_json(tmp_path, tok):
    import datasets

    datasets.Dataset.from_list(SCHEMA_FIXTURES["gsm8k"] * 3).to_parquet(str(tmp_path / "g.parquet"))
    (tmp_path / "a.json").write_text(json.dumps(SCHEMA_FIXTURES["alpaca"]))
    b = data.calibration_batches(f"{tmp_path / 'g.parquet'},{tmp_path / 'a.json'}", tok, batch_size=8)
    assert [(x.domain, x.input_ids.shape[0]) for x in b] == [("g", 3), ("a", 2)]


def test_chat_without_template_falls_back_or_raises(tmp_path, tok_plain):
    path = write_jsonl(tmp_path / "gsm.jsonl", SCHEMA_FIXTURES["gsm8k"])
    b = data.calibration_batches(str(path), tok_plain, max_length=512)
    text = tok_plain.decode(b[0].input_ids[0])
    assert text.startswith("<s>user: Sam has 3 apples") and "\nassistant: 3 + 2 = 5" in text
    with pytest.raises(InvalidInput, match="no chat template|has none"):
        data.calibration_batches(str(path), tok_plain, chat_fallback=False)


# --- batches ----------------------------------------------------------------------------------


def test_token_file_uneven_lengths_and_padding(tmp_path):
    seqs = [[5, 6, 7], [1], [9, 9, 9, 9, 9, 9], [2, 3], [4, 4, 4, 4, 4]]
    path = write_jsonl(tmp_path / "ids.jsonl", seqs)
    batches = data.calibration_batches(str(path), None, batch_size=2, max_length=8)
    assert [b.domain for b in batches] == ["ids"] * 3
    got = []
    for b in batches:
        assert b.input_ids.shape == b.attention_mask.shape
        for ids, mask in zip(b.input_ids, b.attention_mask):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()  # right padding
            assert (ids[n:] == 0).all()
            got.append(ids[:n].tolist())
    assert got == seqs  # file order kept, nothing lost
    assert sum(b.num_tokens for b in batches) == sum(map(len, seqs))
    short = data.calibration_batches(f"{path}:2", None, batch_size=8, max_length=8)
    assert short[0].input_ids.shape[0] == 2
    trunc = data.calibration_batches(str(path), None, batch_size=8, max_length=8)
    assert trunc[0].input_ids.shape[1] == 6


def test_calibration_batches_builtin(tok):
    spec = "code:6,tools:5,prose:4,math:3"
    a = data.calibration_batches(spec, tok, batch_size=4, max_length=32)
    b = data.calibration_batches(spec, tok, batch_size=4, max_length=32)
    assert data.content_hash(a) == data.content_hash(b)
    assert [x.domain for x in a] == ["code", "code", "tools", "tools", "prose", "math"]
    assert all(x.input_ids.shape[1] <= 32 for x in a)
    assert all(int(m.sum()) > 0 for x in a for m in x.attention_mask)
    assert all((x.input_ids[~x.attention_mask.bool()] == tok.pad_token_id).all() for x in a)
    c = data.calibration_batches(spec, tok, batch_size=4, max_length=32, seed=1)
    assert data.content_hash(c) != data.content_hash(a)
    v = data.calibration_batches(spec, tok, batch_size=4, max_length=32, split="validation")
    assert data.content_hash(v) != data.content_hash(a)


# --- bad input --------------------------------------------------------------------------------


def test_bad_empty_dataset(tmp_path, tok):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("  \n\n \t\n")
    for name in ("empty", "blank"):
        with pytest.raises(InvalidInput, match="empty"):
            data.calibration_batches(f"x@{tmp_path / name}.jsonl", tok)
    write_jsonl(tmp_path / "ws.jsonl", [{"text": "   "}, {"text": "\n\t"}])
    with pytest.raises(InvalidInput, match="only empty or whitespace-only"):
        data.calibration_batches(str(tmp_path / "ws.jsonl"), tok)
    with pytest.raises(InvalidInput, match="empty calibration spec"):
        data.parse_spec("  ")
    with pytest.raises(InvalidInput, match="empty entry"):
        data.parse_spec("code:4,,math:2")


def test_bad_unknown_domain_and_missing_file(tmp_path):
    with pytest.raises(InvalidInput, match="unknown built-in domain 'poetry'.*known domains: code, prose, tools, math"):
        data.parse_spec("code:4,poetry:8")
    with pytest.raises(MissingInput, match="does not exist"):
        data.parse_spec(f"{tmp_path / 'missing.jsonl'}:4")
    with pytest.raises(MissingInput, match="does not exist"):
        data.parse_spec(f"evol@{tmp_path / 'missing.parquet'}")


@pytest.mark.parametrize("entry", ["code:0", "code:-3"])
def test_bad_count(entry):
    with pytest.raises(InvalidInput, match="must be a positive integer"):
        data.parse_spec(entry)


def test_bad_count_text():
    with pytest.raises(InvalidInput, match="not an integer"):
        data.parse_spec("code:many")
    with pytest.raises(InvalidInput, match="positive"):
        data.parse_spec([SpecItem("code", "code", 0)])


def test_bad_schema(tmp_path, tok):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(InvalidInput, match=r"fields \['completion', 'prompt'\].*expected.*gsm8k: answer, question"):
        data.calibration_batches(f"odd@{path}", tok)


def test_bad_max_length(tok):
    with pytest.raises(InvalidInput, match="at least 8"):
        data.calibration_batches("math:2", tok, max_length=7)
    assert data.calibration_batches("math:2", tok, max_length=8)[0].input_ids.shape[1] == 8


def test_text_needs_tokenizer():
    with pytest.raises(InvalidInput, match="needs a tokenizer"):
        data.calibration_batches("math:2", None)


def test_duplicate_domain():
    with pytest.raises(InvalidInput, match="twice"):
        data.parse_spec("math:2,math:3")
