"""Cost of observing: observed forward / plain forward, and peak memory against calibration tokens.

    python benchmarks/observe_overhead.py            # both shapes, CPU (or --device cuda)

The plain baseline is the model's default experts implementation. Plain and observed forwards
are interleaved in one process and the median of each is reported, so background load affects
both alike. Peak memory is the max RSS (CPU) or max allocated (CUDA) of a fresh subprocess that
runs N batches plainly or observed: flat in N means no buffer grows with the calibration set
(the allocator's own creep shows in both rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from reapkit.data import Batch
from reapkit.observe.recorder import recording

SHAPES = {
    "demo (h128, 16 experts, top-2)": dict(
        hidden_size=128, num_experts=16, num_experts_per_tok=2, moe_intermediate_size=256
    ),
    "wide (h256, 64 experts, top-8)": dict(
        hidden_size=256, num_experts=64, num_experts_per_tok=8, moe_intermediate_size=128
    ),
}


def build(shape: dict, device: str):
    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        vocab_size=4096,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=512,
        norm_topk_prob=True,
        **shape,
    )
    model = AutoModelForCausalLM.from_config(config).to(device).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.2)
    return model


def batch(tokens: int, device: str, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 4096, (tokens // 256, 256), generator=g)
    return Batch(ids.to(device), torch.ones_like(ids).to(device), "bench")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_forwards(model, b: Batch, device: str, repeats: int) -> tuple[float, float]:
    def plain():
        model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def observed():
        with recording(model) as rec:
            rec.start_batch(b.domain, b.attention_mask)
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    for f in (plain, observed):  # warm up
        f()
    times = {plain: [], observed: []}
    for _ in range(repeats):
        for f in (plain, observed):
            sync(device)
            start = time.perf_counter()
            f()
            sync(device)
            times[f].append(time.perf_counter() - start)
    return statistics.median(times[plain]), statistics.median(times[observed])


def peak_memory_child(shape_name: str, batches: int, device: str, mode: str) -> None:
    """Run in a subprocess: forward (`plain`) or observe `batches` batches of 2,048 tokens; print peak MiB."""
    import resource

    from reapkit.observe.recorder import observe

    model = build(SHAPES[shape_name], device)
    data = [batch(2048, device, seed=i) for i in range(batches)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if mode == "observed":
        observe(model, data, progress=False)
    else:
        with torch.no_grad():
            for b in data:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    print(json.dumps({"peak_mib": peak}))


def peak_memory(shape_name: str, batches: int, device: str, mode: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", shape_name, str(batches), mode, "--device", device],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return peak_memory_child(args.child[0], int(args.child[1]), args.device, args.child[2])

    print(
        f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.tokens} tokens per forward"
    )
    for name, shape in SHAPES.items():
        model = build(shape, args.device)
        impl = model.config._experts_implementation
        plain, observed = time_forwards(model, batch(args.tokens, args.device), args.device, args.repeats)
        print(f"\n{name}")
        print(f"  plain forward ({impl}) {plain * 1e3:8.1f} ms   {args.tokens / plain:9.0f} tok/s")
        print(f"  observed forward      {observed * 1e3:8.1f} ms   {args.tokens / observed:9.0f} tok/s")
        print(f"  ratio observed / plain {observed / plain:.3f}   (target <= 1.10)")
        for mode in ("plain", "observed"):
            peaks = {n: peak_memory(name, n, args.device, mode) for n in (1, 16, 64)}
            line = "   ".join(f"{n * 2048:>6} tokens {mib:6.0f} MiB" for n, mib in peaks.items())
            print(f"  peak memory, {mode:8s}: {line}   (64 / 1 batches {peaks[64] / peaks[1]:.3f})")


if __name__ == "__main__":
    main()
