"""Observing a checkpoint bigger than memory: `observe --sequential` against in-memory `observe`.

    python benchmarks/scale_observe.py                      # writes a random 3.2 GB qwen3_moe checkpoint, measures
    python benchmarks/scale_observe.py --checkpoint DIR     # measures an existing checkpoint folder

    >>> from scale_observe import measure_observe, write_random_checkpoint
    >>> write_random_checkpoint("ckpt/", layers=16)
    >>> rows = measure_observe("ckpt/")          # {"in-memory observe": {...}, "sequential observe": {...}, ...}

Side by side, in one run: the peak RSS (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` of a fresh
wrapper around each real `python -m reapkit observe` subprocess) and wall time of `--sequential`
observe and in-memory observe; the peak of a process that only imports reapkit (the floor); and
tokens/s of an observed forward against a plain forward of the same model on the same batches.
Both observe runs must give the same statistics; the largest relative difference is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: runs a command and prints its peak RSS (MiB) and wall time as JSON: a fresh process per measurement,
#: since RUSAGE_CHILDREN keeps the maximum over every child a process ever waited for
_PEAK = ("import json, resource, subprocess, sys, time; start = time.perf_counter(); "
         "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
         "print(json.dumps({'rc': code, 'seconds': time.perf_counter() - start, "
         "'peak_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def write_random_checkpoint(folder, *, layers: int = 16, experts: int = 64, hidden: int = 1024, moe_intermediate: int = 512,
                            vocab: int = 32000, top_k: int = 2, shard_mib: int = 512, seed: int = 0) -> Path:
    """A random bf16 qwen3_moe checkpoint in hub layout (one tensor per expert), written shard by shard."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3MoeConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    heads, kv_heads, head_dim = 16, 4, 64
    config = Qwen3MoeConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            num_key_value_heads=kv_heads, head_dim=head_dim, num_experts=experts, num_experts_per_tok=top_k,
                            moe_intermediate_size=moe_intermediate, intermediate_size=4 * hidden, norm_topk_prob=True,
                            max_position_embeddings=4096, dtype="bfloat16")
    config.save_pretrained(folder)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (heads * head_dim, hidden), p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                       p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden), p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                       p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,),
                       p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                       p + "mlp.gate.weight": (experts, hidden)})
        for e in range(experts):
            shapes.update({f"{p}mlp.experts.{e}.gate_proj.weight": (moe_intermediate, hidden),
                           f"{p}mlp.experts.{e}.up_proj.weight": (moe_intermediate, hidden),
                           f"{p}mlp.experts.{e}.down_proj.weight": (hidden, moe_intermediate)})
    g = torch.Generator().manual_seed(seed)

    def tensor(name, shape):
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        std = 0.1 if name.endswith("mlp.gate.weight") else 0.02  # routers peaked enough that experts differ
        return (torch.randn(shape, generator=g) * std).to(torch.bfloat16)

    weight_map, shard, size, total, files = {}, {}, 0, 0, []

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update({key: name for key in shard})
            shard, size = {}, 0

    for name, shape in shapes.items():
        t = tensor(name, shape)
        if size + t.nbytes > shard_mib * 2**20:
            flush()
        shard[name] = t
        size += t.nbytes
        total += t.nbytes
    flush()
    count = len(files)
    renamed = {f: f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i, f in enumerate(files)}
    for old, new in renamed.items():
        (folder / old).rename(folder / new)
    index = {"metadata": {"total_size": total}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def checkpoint_bytes(folder) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "TQDM_DISABLE": "1"}


def peak(command: list[str]) -> dict:
    """Peak RSS (MiB) and seconds of `command`, measured from a fresh wrapper process."""
    out = subprocess.run([sys.executable, "-c", _PEAK, *command], capture_output=True, text=True, env=_env(), check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {result['rc']}")
    return result


def _calibration_file(path: Path, tokens: int, length: int, vocab: int) -> Path:
    import random

    rng = random.Random(0)
    path.write_text("".join(json.dumps([rng.randrange(3, vocab) for _ in range(length)]) + "\n" for _ in range(tokens // length)))
    return path


def throughput_child(checkpoint: str, data: str, batch_size: int, max_length: int) -> None:
    """In a subprocess: tokens/s of plain and observed forwards of the loaded model over the same batches."""
    import torch

    from reapkit.data import calibration_batches
    from reapkit.loading import load_model
    from reapkit.observe import recording

    model, _ = load_model(checkpoint, dtype="auto")
    batches = calibration_batches(data, None, batch_size=batch_size, max_length=max_length)
    tokens = sum(b.num_tokens for b in batches)
    seconds = {"plain": 0.0, "observed": 0.0}
    with torch.no_grad():
        model(input_ids=batches[0].input_ids, attention_mask=batches[0].attention_mask, use_cache=False)  # warm-up
        for b in batches:  # interleaved, so background load hits both alike
            start = time.perf_counter()
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            seconds["plain"] += time.perf_counter() - start
            start = time.perf_counter()
            with recording(model) as recorder:
                recorder.start_batch(b.domain, b.attention_mask)
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            seconds["observed"] += time.perf_counter() - start
    print(json.dumps({mode: tokens / s for mode, s in seconds.items()}))


def measure_observe(checkpoint_dir, *, tokens: int = 512, max_length: int = 256, batch_size: int = 4, group_size: int = 4,
                    work_dir=None, throughput: bool = True) -> dict:
    """Peak RSS and time of in-memory vs `--sequential` observe of `checkpoint_dir`, plus observe/plain tokens/s.

    Returns `{"checkpoint_mib", "import_peak_mib", "in-memory observe": {peak_mib, seconds},
    "sequential observe": {...}, "sequential / checkpoint", "max_relative_difference", "tokens_per_s": {plain, observed}}`.
    """
    from reapkit.observations import Observations

    checkpoint_dir = Path(checkpoint_dir)
    vocab = json.loads((checkpoint_dir / "config.json").read_text()).get("vocab_size", 1000)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        data = str(_calibration_file(tmp / "calibration.jsonl", tokens, max_length, vocab))
        observe = [sys.executable, "-m", "reapkit", "observe", str(checkpoint_dir), "--data", data,
                   "--batch-size", str(batch_size), "--max-length", str(max_length)]
        rows = {"checkpoint_mib": checkpoint_bytes(checkpoint_dir) / 2**20, "tokens": tokens,
                "import_peak_mib": peak([sys.executable, "-c", "import reapkit.cli, reapkit.observe, reapkit.sequential"])["peak_mib"]}
        rows["sequential observe"] = peak([*observe, "--sequential", "--group-size", str(group_size), "--out", str(tmp / "seq")])
        rows["in-memory observe"] = peak([*observe, "--out", str(tmp / "mem")])
        rows["sequential / checkpoint"] = rows["sequential observe"]["peak_mib"] / rows["checkpoint_mib"]
        a, b = Observations.load(tmp / "mem"), Observations.load(tmp / "seq")
        rows["max_relative_difference"] = max(
            float((a.stats[d][k].double() - b.stats[d][k].double()).abs().max() / a.stats[d][k].double().abs().max().clamp_min(1e-30))
            for d in a.domains for k in a.stats[d])
        if throughput:
            out = subprocess.run([sys.executable, __file__, "--throughput-child", str(checkpoint_dir), data, str(batch_size), str(max_length)],
                                 capture_output=True, text=True, env=_env(), check=True)
            rows["tokens_per_s"] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def report(rows: dict) -> str:
    mem, seq = rows["in-memory observe"], rows["sequential observe"]
    lines = [f"checkpoint {rows['checkpoint_mib']:.0f} MiB, {rows['tokens']} calibration tokens; "
             f"a process that only imports reapkit peaks at {rows['import_peak_mib']:.0f} MiB",
             f"{'':22s} {'peak RSS MiB':>13s} {'seconds':>8s}",
             f"{'in-memory observe':22s} {mem['peak_mib']:13.0f} {mem['seconds']:8.1f}",
             f"{'sequential observe':22s} {seq['peak_mib']:13.0f} {seq['seconds']:8.1f}",
             f"sequential peak / checkpoint size: {rows['sequential / checkpoint']:.3f}; "
             f"sequential / in-memory peak: {seq['peak_mib'] / mem['peak_mib']:.3f}; time ratio {seq['seconds'] / mem['seconds']:.2f}",
             f"largest relative difference of the statistics: {rows['max_relative_difference']:.2e}"]
    if "tokens_per_s" in rows:
        t = rows["tokens_per_s"]
        lines.append(f"tokens/s: plain forward {t['plain']:.0f}, observed {t['observed']:.0f} (observed/plain {t['observed'] / t['plain']:.2f})")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--throughput-child"]:
        throughput_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="existing checkpoint folder (default: write a random one to a temp dir)")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--top-k", type=int, default=2, help="routed experts per token (few: CPU bf16 compute is slow)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--work-dir", help="where the temporary checkpoint and outputs go")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        folder = args.checkpoint or write_random_checkpoint(Path(tmp) / "checkpoint", layers=args.layers, experts=args.experts,
                                                            hidden=args.hidden, top_k=args.top_k)
        rows = measure_observe(folder, tokens=args.tokens, work_dir=args.work_dir)
    print(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
