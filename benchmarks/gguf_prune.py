"""Memory and speed of `reapkit prune MODEL.gguf`, next to `cp` of the same file on the same disk.

    python benchmarks/gguf_prune.py                    # 12 layers x 64 experts, Q8_0: a 3.4 GB GGUF
    python benchmarks/gguf_prune.py --layers 2 --vocab 32000 --repeat 1     # a quick run
    python benchmarks/gguf_prune.py --keep             # keep the GGUF under --work for the next run

It writes a qwen3moe GGUF with the `gguf` package's `GGUFWriter`, one tensor at a time: stacked
experts in Q8_0 ([64, 768, 1536] per tensor, 80 MiB), F32 routers, Q8_0 token embedding and
output (the largest tensors), a Qwen3-sized vocabulary in the metadata (151,936 tokens and merges,
as real files carry). Tensor bytes are random: the prune copies bytes and never looks at them.
The observations to prune from are synthetic too (random statistics), but they carry the file's
real fingerprint (router hash, layers, expert counts), so the prune runs every check it runs on a
real model.

Each command is a real subprocess measured from a fresh wrapper process
(`getrusage(RUSAGE_CHILDREN)` peak RSS, wall time including start-up): an import baseline (the
command line's modules, torch included), `cp MODEL copy` and `reapkit prune MODEL ... --ratio
0.25`, alternated `--repeat` times (the page cache holds the source after the first read, for both).
The bound the prune must stay under: import baseline + the largest tensor. It ends with a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MIB = 2**20
#: What `reapkit prune MODEL.gguf` imports before it reads the file (torch comes with the observations).
BASELINE_MODULES = [
    "reapkit.run.cli",
    "reapkit.compress.gguf",
    "reapkit.observe.observations",
    "reapkit.select.plan",
    "reapkit.select.criteria",
    "tqdm.auto",
]

#: Runs the command given as its arguments, then prints that child's peak RSS (KiB) as its last stderr line.
_PEAK = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def run_measured(args: list[str]) -> dict:
    """`{"peak_rss_mib", "seconds"}` of a child process, measured from a fresh wrapper. Raises if it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _PEAK, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{run.stderr[-3000:]}")
    return {"peak_rss_mib": int(run.stderr.strip().splitlines()[-1]) / 1024, "seconds": seconds, "stdout": run.stdout}


def write_model(path: Path, *, layers: int, experts: int, hidden: int, intermediate: int, vocab: int, seed=0) -> dict:
    """A random qwen3moe GGUF at `path`, written tensor by tensor; returns {name: nbytes}."""
    import gguf
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(seed)
    arch = "qwen3moe"
    shapes = {"token_embd.weight": ((vocab, hidden), T.Q8_0), "output_norm.weight": ((hidden,), T.F32)}
    for b in range(layers):
        shapes |= {
            f"blk.{b}.attn_norm.weight": ((hidden,), T.F32),
            f"blk.{b}.attn_q.weight": ((hidden, hidden), T.Q8_0),
            f"blk.{b}.attn_k.weight": ((hidden // 4, hidden), T.Q8_0),
            f"blk.{b}.attn_v.weight": ((hidden // 4, hidden), T.Q8_0),
            f"blk.{b}.attn_output.weight": ((hidden, hidden), T.Q8_0),
            f"blk.{b}.ffn_norm.weight": ((hidden,), T.F32),
            f"blk.{b}.ffn_gate_inp.weight": ((experts, hidden), T.F32),
            f"blk.{b}.ffn_gate_exps.weight": ((experts, intermediate, hidden), T.Q8_0),
            f"blk.{b}.ffn_up_exps.weight": ((experts, intermediate, hidden), T.Q8_0),
            f"blk.{b}.ffn_down_exps.weight": ((experts, hidden, intermediate), T.Q8_0),
        }
    shapes["output.weight"] = ((vocab, hidden), T.Q8_0)
    writer = gguf.GGUFWriter(path, arch)
    for key, value in dict(
        block_count=layers,
        context_length=4096,
        embedding_length=hidden,
        feed_forward_length=intermediate,
        expert_count=experts,
        expert_used_count=8,
        expert_feed_forward_length=intermediate,
    ).items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_string("general.name", "reapkit GGUF benchmark (random weights)")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", [f"token-{i:06d}" for i in range(vocab)])
    writer.add_array("tokenizer.ggml.token_type", [1] * vocab)
    writer.add_array("tokenizer.ggml.merges", [f"t{i} k{i}" for i in range(vocab)])
    sizes = {}
    for name, (shape, qtype) in shapes.items():
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        sizes[name] = int(np.prod(shape)) // block * size
        writer.add_tensor_info(name, shape, np.dtype(np.float32), sizes[name], raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, (shape, qtype) in shapes.items():  # one tensor in memory at a time
        if qtype == T.F32:
            data = rng.standard_normal(int(np.prod(shape)), dtype=np.float32)
        else:
            data = np.frombuffer(rng.bytes(sizes[name]), dtype=np.uint8)
        writer.write_tensor_data(data)
    writer.close()
    return sizes


def write_observations(model_path: Path, out: Path, seed=0) -> None:
    """Random statistics with the GGUF's real fingerprint (what `reapkit observe` would record of its model)."""
    import torch

    from reapkit.compress.gguf_experts import gguf_fingerprint, moe_layers
    from reapkit.compress.gguf_file import open_gguf
    from reapkit.observe.observations import Observations
    from reapkit.observe.recorder import EXPERT_STATS

    model = open_gguf(model_path)
    layers = moe_layers(model)
    fingerprint = gguf_fingerprint(model, layers) | {"model_type": "qwen3_moe"}
    g = torch.Generator().manual_seed(seed)
    shape = (len(layers), fingerprint["num_experts"][0])
    stats = {name: torch.rand(shape, generator=g, dtype=torch.float64) * 100 for name in EXPERT_STATS}
    stats["tokens"] = torch.full((len(layers),), 1000.0, dtype=torch.float64)
    meta = {
        "architecture": "qwen3_moe",
        "fingerprint": fingerprint,
        "layers": sorted(layers),
        "num_experts": fingerprint["num_experts"],
        "top_k": 8,
        "n_group": 1,
        "topk_group": None,
        "calibration": {"synthetic": "random statistics for benchmarks/gguf_prune.py"},
    }
    Observations({"calibration": stats}, meta).save(out, force=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "gguf-bench"))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated GGUF for the next run")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, obs, out, copy = work / "model.gguf", work / "obs", work / "pruned.gguf", work / "copy.gguf"
    spec = [args.layers, args.experts, args.hidden, args.intermediate, args.vocab]
    stamp = work / "model.json"
    if not (model.is_file() and stamp.is_file() and json.loads(stamp.read_text())["spec"] == spec):
        start = time.perf_counter()
        sizes = write_model(
            model, layers=args.layers, experts=args.experts, hidden=args.hidden, intermediate=args.intermediate,
            vocab=args.vocab,
        )  # fmt: skip
        stamp.write_text(json.dumps({"spec": spec, "sizes": sizes}))
        print(f"wrote {model} ({model.stat().st_size / MIB:.0f} MiB) in {time.perf_counter() - start:.0f}s", flush=True)
    sizes = json.loads(stamp.read_text())["sizes"]
    write_observations(model, obs)
    size = model.stat().st_size / MIB
    largest = max(sizes.values()) / MIB
    baseline = run_measured([sys.executable, "-c", f"import {', '.join(BASELINE_MODULES)}"])
    rows = [{"what": "import baseline (the modules the command uses, torch included)", **baseline}]
    command = [sys.executable, "-m", "reapkit", "prune", model, "--observations", obs, "--ratio", "0.25"]
    for attempt in range(args.repeat):
        rows.append({"what": f"cp MODEL copy (run {attempt + 1})", **run_measured(["cp", model, copy])})
        copy.unlink()
        rows.append({"what": f"reapkit prune MODEL.gguf --ratio 0.25 (run {attempt + 1})",
                     **run_measured([*command, "--out", out, "--force"])})  # fmt: skip
    written = out.stat().st_size / MIB
    expected = size - sum(v for k, v in sizes.items() if "_exps." in k or "gate_inp" in k) / MIB * 0.25
    prunes = [r for r in rows if r["what"].startswith("reapkit")]
    copies = [r for r in rows if r["what"].startswith("cp")]
    bound = baseline["peak_rss_mib"] + largest
    peak = max(r["peak_rss_mib"] for r in prunes)
    print(
        f"\nGGUF {size:.0f} MiB ({args.layers} layers x {args.experts} experts, Q8_0), largest tensor {largest:.0f} MiB;"
    )
    print(f"pruned to {written:.0f} MiB (expected {expected:.0f}); machine: {os.cpu_count()} cores, shared\n")
    print(f"{'what':<62} {'peak RSS MiB':>12} {'seconds':>8} {'MiB/s':>8}")
    for row in rows:
        moved = size if row["what"].startswith("cp") else written if row["what"].startswith("reapkit") else 0
        rate = f"{moved / row['seconds']:8.0f}" if moved else f"{'':>8}"
        print(f"{row['what']:<62} {row['peak_rss_mib']:12.0f} {row['seconds']:8.1f} {rate}")
    best_prune, best_cp = min(r["seconds"] for r in prunes), min(r["seconds"] for r in copies)
    summary = {
        "gguf_mib": size,
        "largest_tensor_mib": largest,
        "bound_mib": bound,
        "prune_peak_rss_mib": peak,
        "prune_peak_above_baseline_mib": peak - baseline["peak_rss_mib"],
        "gguf_over_bound": size / bound,
        "prune_seconds": best_prune,
        "cp_seconds": best_cp,
        "prune_over_cp_time": best_prune / best_cp,
        "rows": [{k: v for k, v in r.items() if k != "stdout"} for r in rows],
    }
    print(
        f"\nbound: import baseline {baseline['peak_rss_mib']:.0f} + largest tensor {largest:.0f} = {bound:.0f} MiB; "
        f"prune peak {peak:.0f} MiB ({'within' if peak <= bound else 'OVER'}; {peak - baseline['peak_rss_mib']:.0f} "
        f"MiB above the baseline); the GGUF is {size / bound:.1f}x the bound"
    )
    work_seconds = best_prune - baseline["seconds"]
    summary["prune_work_seconds"] = work_seconds
    print(
        f"time: prune {best_prune:.1f}s (writes {written:.0f} MiB) vs cp {best_cp:.1f}s ({size:.0f} MiB): "
        f"{best_prune / best_cp:.2f}x cp's time, {written / best_prune:.0f} vs {size / best_cp:.0f} MiB/s (best of "
        f"{args.repeat}); without the {baseline['seconds']:.1f}s of Python start-up and imports: {work_seconds:.1f}s, "
        f"{written / max(work_seconds, 1e-9):.0f} MiB/s"
    )
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")  # after the line above adds to it
    out.unlink()
    shutil.rmtree(obs)
    if not args.keep:
        model.unlink()
        stamp.unlink()


if __name__ == "__main__":
    main()
