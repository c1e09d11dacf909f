"""The parts of `make check-handoffs` that live in this repository, checked without the tools' environments.

The tools themselves (vLLM, lm-eval, AutoRound) run only in `make check-handoffs`; here: the Makefile
target, the script's command line, its comparison helpers on the demo model, and that every block
of docs/serving.md marked "checked by make check-handoffs" is what the script runs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_handoffs.py"
DOC = ROOT / "docs" / "serving.md"
MARK = re.compile(
    r"<!-- checked by make check-handoffs(?::\s*(?P<what>[^>]*?))?\s*-->\n```(?P<lang>\w+)\n(?P<body>.*?)```", re.S
)


@pytest.fixture(scope="module")
def handoffs():
    spec = importlib.util.spec_from_file_location("check_handoffs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks the module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def checked_blocks():
    blocks = [(m["what"] or "", m["lang"], m["body"]) for m in MARK.finditer(DOC.read_text())]
    assert blocks, "docs/serving.md marks no block as checked"
    return blocks


def test_makefile_target_runs_the_script_outside_make_test():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^check-handoffs:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "scripts/check_handoffs.py" in recipe[1]
    test_line = re.search(r"^test:(.*)$", makefile, re.M)[1]
    assert "check-handoffs" not in test_line
    assert ".handoffs/" in (ROOT / ".gitignore").read_text().splitlines()


def test_command_line(tmp_path):
    run = [sys.executable, str(SCRIPT)]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--only" in helped.stdout
    listed = subprocess.run([*run, "--print-commands"], capture_output=True, text=True)
    assert listed.returncode == 0 and "openai.api_server" in listed.stdout and "lm_eval --model hf" in listed.stdout
    missing = subprocess.run([*run, "--python311", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "--python311" in missing.stderr
    assert not (tmp_path / "nope").exists()


def test_compare_greedy_counts_only_while_the_tokens_agree(handoffs):
    same = {"tokens": [5, 6], "logprobs": [-1.0, -2.0], "prompt_logprobs": [-3.0, -0.5]}
    assert handoffs.compare_greedy([same], [same]) == {"same_tokens": True, "max_abs_diff": 0.0, "compared": 4}
    split = {"tokens": [5, 9], "logprobs": [-1.25, -9.0], "prompt_logprobs": [-3.0, -0.5]}
    got = handoffs.compare_greedy([split], [same])  # the split token's own log-prob counts, nothing after it
    assert got == {"same_tokens": False, "max_abs_diff": 7.0, "compared": 4}
    after = {"tokens": [5, 6, 9], "logprobs": [-1.0, -2.0, -9.0], "prompt_logprobs": [-3.0, -0.5]}
    ref = dict(same, tokens=[5, 7, 9], logprobs=[-1.0, -2.5, -1.0])
    assert handoffs.compare_greedy([after], [ref]) == {"same_tokens": False, "max_abs_diff": 0.5, "compared": 4}
    prompt_off = dict(same, prompt_logprobs=[-3.0, -0.75])
    assert handoffs.compare_greedy([prompt_off], [same])["max_abs_diff"] == 0.25


def test_references_agree_with_each_other_on_the_demo_model(handoffs):
    """Two independent index paths: a continuation's log-likelihood equals the sum of its prompt log-probs."""
    from transformers import AutoTokenizer

    demo = ROOT / "data" / "demo"
    tok = AutoTokenizer.from_pretrained(demo)
    context, continuation = "def add(a, b):", "\n    return a + b"
    whole, n_ctx = tok.encode(context + continuation), len(tok.encode(context))
    assert whole[:n_ctx] == tok.encode(context)  # a clean boundary, so both see the same tokens
    (loglik,) = handoffs.loglik_reference(demo, [(context, continuation)])
    (greedy,) = handoffs.greedy_reference(demo, [whole], 2)
    assert loglik == pytest.approx(sum(greedy["prompt_logprobs"][n_ctx - 1 :]), abs=1e-4)
    # a trailing space in the context moves to the continuation, as in lm-eval
    assert handoffs.loglik_reference(demo, [(context + " ", "x")]) == handoffs.loglik_reference(demo, [(context, " x")])


def test_task_file_and_the_documented_yaml(handoffs, tmp_path, checked_blocks):
    folder = handoffs.write_task(tmp_path / "tasks", n=6)
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["label"] == 0 and r["choices"][0] != r["choices"][1] for r in rows)
    yaml = (folder / f"{handoffs.TASK}.yaml").read_text().replace(str(folder.resolve()), "tasks")
    (documented,) = [body for what, lang, body in checked_blocks if what == "task yaml"]
    assert documented == yaml


def _code_lines(text: str) -> list[str]:
    """Lines without comments or blank lines; a line that is a whole `name = literal` statement is an input."""
    out = []
    for line in text.splitlines():
        code = line.split("  #")[0].strip()
        if not code or code.startswith("#"):
            continue
        try:
            node = ast.parse(code).body[0]
            if isinstance(node, ast.Assign):
                ast.literal_eval(node.value)
                continue
        except (SyntaxError, ValueError, IndexError):
            pass
        out.append(code)
    return out


def test_checked_doc_blocks_are_what_the_script_runs(handoffs, checked_blocks):
    names = handoffs.DOC_NAMES | {"port": 8000, "task": handoffs.TASK, "tasks": "tasks", "results": "results"}
    expected = {n: handoffs.command(n, **names, env="vllm-env") for n in ("observe", "prune", "serve")}
    expected["lm_eval"] = handoffs.command("lm_eval", **names, env="lmeval-env")
    expected["llama_cpp_source"] = handoffs.command("llama_cpp_source", env="llama-env", dest="llama-cpp-source")
    expected["gguf"] = handoffs.command("gguf", **names, llama_cpp="llama.cpp", gguf="pruned-f32.gguf")
    expected["plugin"] = handoffs.command("plugin", **names, env="vllm-env")
    expected["prune_gguf"] = handoffs.command("prune_gguf", **names, gguf="demo-q8_0.gguf", out="pruned-q8_0.gguf")
    for env in handoffs.ENVS:
        expected |= {f"{env}:{i}": c for i, c in enumerate(handoffs.env_commands(env, f"{env}-env"))}
    shown = set()
    for what, lang, body in checked_blocks:
        if lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                assert " ".join(line.split()) in expected.values(), f"docs/serving.md: not what the script runs: {line}"
                shown.add(" ".join(line.split()))
        elif lang == "python":
            source = {_line for _line in _code_lines((ROOT / what).read_text())}
            for code in _code_lines(body):
                assert code in source, f"docs/serving.md: {code!r} is not in {what}"
    assert shown == set(expected.values()), f"checked commands missing from the doc: {set(expected.values()) - shown}"
