"""Memory and time at scale, side by side: streaming prune vs in-memory prune of a generated checkpoint.

    python benchmarks/scale.py                          # ~2.6 GB qwen3_moe, 8 layers x 64 experts, bf16
    python benchmarks/scale.py --layers 2 --hidden 256  # a quick run

It writes a random qwen3_moe checkpoint in the hub layout (per-expert tensors, `num_experts` in
config.json, 4 shards and an index) straight to safetensors, one decoder layer in memory at a
time, observes it once with `reapkit observe` (a few hundred tokens, for the observations the
pruner needs), then runs the same `python -m reapkit prune` twice, streaming (the default for a
folder) and `--in-memory`, and prints each child's peak RSS (`RUSAGE_CHILDREN` of a small wrapper
process) and wall time, the import baseline, the streaming bound (baseline + 2 x largest
tensor + 200 MB) and whether both outputs hold bitwise equal tensors. Checkpoint and observations
are kept under --work between runs when --keep is given.

Other measurements at the same scale plug in as sections: functions `section(checkpoint, work)
-> list of rows` (dicts with `what`, optional `peak_rss_mb` and `seconds`, `note`) listed in SECTIONS;
e.g. `from scale_observe import observe_rows; SECTIONS.append(observe_rows)`.
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

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reapkit.checkpoint import checkpoint_size, largest_tensor

MB = 2**20


#: Runs the command given as its arguments and prints that child's peak RSS (KB). Started from a small
#: process, so the child's own figure does not include pages it inherited from this (larger) one at fork.
_PEAK = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def run_measured(args: list[str], *, cwd=ROOT) -> dict:
    """Run a child process; its peak RSS (MB, `RUSAGE_CHILDREN` of a small wrapper) and wall time. Raises if it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return {"peak_rss_mb": int(run.stderr.strip().splitlines()[-1]) / 1024, "seconds": seconds, "stdout": run.stdout}


def make_checkpoint(
    folder, *, layers=8, experts=64, hidden=1024, moe_intermediate=768, vocab=32000, top_k=8, shards=4, seed=0
) -> Path:
    """A random qwen3_moe checkpoint in the hub layout, written one decoder layer at a time."""
    from safetensors.torch import save_file
    from transformers import Qwen3MoeConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    heads, kv_heads, head_dim = hidden // 64, max(1, hidden // 256), 64
    config = Qwen3MoeConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        num_experts=experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=moe_intermediate,
        intermediate_size=4 * hidden,
        norm_topk_prob=True,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    config.save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    data["num_experts"] = data.pop("num_local_experts", experts)  # as the hub's Qwen3-MoE configs say it
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    shards = min(shards, layers)
    groups = [[] for _ in range(shards)]
    for layer in range(layers):
        groups[layer * shards // layers].append(layer)
    weight_map, total = {}, 0
    for number, group in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        for layer in group:
            p = f"model.layers.{layer}."
            t = {
                p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                p + "self_attn.q_proj.weight": rand(heads * head_dim, hidden),
                p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, hidden),
                p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, hidden),
                p + "self_attn.o_proj.weight": rand(hidden, heads * head_dim),
                p + "self_attn.q_norm.weight": torch.ones(head_dim, dtype=torch.bfloat16),
                p + "self_attn.k_norm.weight": torch.ones(head_dim, dtype=torch.bfloat16),
                p + "mlp.gate.weight": rand(experts, hidden, std=0.3),
            }
            for e in range(experts):
                q = f"{p}mlp.experts.{e}."
                t |= {
                    q + "gate_proj.weight": rand(moe_intermediate, hidden),
                    q + "up_proj.weight": rand(moe_intermediate, hidden),
                    q + "down_proj.weight": rand(hidden, moe_intermediate),
                }
            if number == 1 and layer == group[0]:
                t["model.embed_tokens.weight"] = rand(vocab, hidden)
            if number == shards and layer == group[-1]:
                t |= {
                    "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                    "lm_head.weight": rand(vocab, hidden),
                }
            part = folder / f".part-{layer}.safetensors"
            save_file(t, str(part), metadata={"format": "pt"})
            weight_map |= {k: name for k in t}
            total += sum(v.numel() * v.element_size() for v in t.values())
            del t
        _concatenate_parts(folder, group, folder / name)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": False, "eos_token_id": 2}))
    return folder


def _concatenate_parts(folder: Path, layers: list[int], target: Path) -> None:
    """Merge one-layer safetensors files into one shard by copying bytes (headers merged, data appended)."""
    from reapkit.checkpoint import read_header

    parts = [folder / f".part-{layer}.safetensors" for layer in layers]
    header, offset, starts = {"__metadata__": {"format": "pt"}}, 0, []
    for part in parts:
        _, entries = read_header(part)
        for name, info in sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"]):
            begin, end = info["data_offsets"]
            header[name] = {**info, "data_offsets": [offset + begin, offset + end]}
        size = part.stat().st_size
        with open(part, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
        starts.append(8 + length)
        offset += size - 8 - length
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(target, "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for part, start in zip(parts, starts):
            with open(part, "rb") as f:
                f.seek(start)
                shutil.copyfileobj(f, out, 64 * MB)
            part.unlink()


def tensors_equal(a, b) -> bool:
    """True when two checkpoint folders hold the same tensor names with bitwise equal values (one tensor at a time)."""
    from safetensors import safe_open

    from reapkit.checkpoint import stored_tensors

    ta, tb = stored_tensors(a)[0], stored_tensors(b)[0]
    if set(ta) != set(tb):
        return False
    for name in ta:
        with safe_open(str(Path(a) / ta[name].shard), "pt") as fa, safe_open(str(Path(b) / tb[name].shard), "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            if x.dtype != y.dtype or not torch.equal(x, y):
                return False
    return True


def prune_rows(checkpoint: Path, work: Path, *, ratio: float = 0.5) -> list[dict]:
    """Streaming vs in-memory `reapkit prune` of `checkpoint`, plus the import baseline and the bound."""
    py = sys.executable
    tokens = work / "tokens.jsonl"
    g = torch.Generator().manual_seed(0)
    tokens.write_text("".join(json.dumps(torch.randint(3, 1000, (64,), generator=g).tolist()) + "\n" for _ in range(8)))
    rows = []
    base = run_measured([py, "-c", "import torch, transformers, reapkit.cli"])
    rows.append({"what": "import baseline (python, torch, transformers, reapkit)", **base})
    if not (work / "obs" / "observations.json").is_file():  # observations to prune from (kept between runs)
        observe = run_measured(
            [
                py,
                "-m",
                "reapkit",
                "observe",
                str(checkpoint),
                "--data",
                str(tokens),
                "--out",
                str(work / "obs"),
                "--batch-size",
                "4",
                "--force",
            ]
        )
        rows.append({"what": "in-memory observe (512 tokens, for the observations)", **observe})
    for label, extra in (("streaming prune", []), ("in-memory prune", ["--in-memory"])):
        out = work / ("pruned-" + ("memory" if extra else "stream"))
        result = run_measured(
            [
                py,
                "-m",
                "reapkit",
                "prune",
                str(checkpoint),
                "--observations",
                str(work / "obs"),
                "--ratio",
                str(ratio),
                "--out",
                str(out),
                "--force",
                *extra,
            ]
        )
        rows.append({"what": f"{label} ({ratio:.0%} of experts)", **result})
    size, largest = checkpoint_size(checkpoint) / MB, largest_tensor(checkpoint) / MB
    bound = base["peak_rss_mb"] + 2 * largest + 200
    stream, memory = rows[-2], rows[-1]
    stream["note"] = (
        f"checkpoint / peak = {size / stream['peak_rss_mb']:.1f}x; bound {bound:.0f} MB "
        f"({'within' if stream['peak_rss_mb'] <= bound else 'OVER'})"
    )
    memory["note"] = (
        f"checkpoint / peak = {size / memory['peak_rss_mb']:.2f}x; "
        f"streaming is {memory['seconds'] / stream['seconds']:.1f}x faster, "
        f"{memory['peak_rss_mb'] / stream['peak_rss_mb']:.1f}x less memory"
    )
    equal = tensors_equal(work / "pruned-stream", work / "pruned-memory")
    rows.append({"what": f"outputs bitwise equal: {equal}"})
    return rows


#: Sections of the benchmark: each takes (checkpoint folder, work folder) and returns rows.
SECTIONS = [prune_rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "scale"))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--moe-intermediate", type=int, default=768)
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint for the next run")
    args = parser.parse_args(argv)
    work = Path(args.work)
    checkpoint = work / f"qwen3_moe-{args.layers}x{args.experts}-h{args.hidden}-i{args.moe_intermediate}"
    if not (checkpoint / "model.safetensors.index.json").is_file():
        start = time.perf_counter()
        shutil.rmtree(checkpoint, ignore_errors=True)
        make_checkpoint(
            checkpoint,
            layers=args.layers,
            experts=args.experts,
            hidden=args.hidden,
            moe_intermediate=args.moe_intermediate,
        )
        print(f"generated {checkpoint} in {time.perf_counter() - start:.0f}s", flush=True)
    size, largest = checkpoint_size(checkpoint) / MB, largest_tensor(checkpoint) / MB
    print(
        f"checkpoint: {size:,.0f} MB of tensors in {len(list(checkpoint.glob('*.safetensors')))} shards, "
        f"largest tensor {largest:.1f} MB; {os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}"
    )
    print(f"{'':58s} {'peak RSS':>10s} {'time':>8s}", flush=True)
    for section in SECTIONS:
        for row in section(checkpoint, work):
            figures = f"{row['peak_rss_mb']:8.0f} MB {row['seconds']:7.1f}s" if "seconds" in row else ""
            print(f"{row['what']:58s} {figures:19s}  {row.get('note', '')}".rstrip(), flush=True)
    if not args.keep:
        shutil.rmtree(checkpoint)


if __name__ == "__main__":
    main()
