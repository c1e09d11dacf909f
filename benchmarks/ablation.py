"""Cost of single-expert ablation on the bundled demo model: replayed forwards against full ones, and that they agree.

    python benchmarks/ablation.py                       # notebook 03's held-out data, all 4 layers (target: < 60 s)
    python benchmarks/ablation.py --threads 1 --plain-layer 0

`reapkit.study.ablation.single_expert_ablation` masks one expert at a time and runs each forward
from that expert's layer on, the layers before replayed from one unmasked pass
(`reapkit.measure.replay`). The plain path is what it did before: `mask_experts` with the
one-expert plan and a full `sequence_metrics` pass per expert. Both run in this process on the
same batches: the fast path on every MoE layer, the plain path on `--plain-layer` (a subset: it
is the slow one), then the fast path again on that layer alone, so the per-expert ratio compares
the same experts. Wall and process CPU time are printed (CPU time does not count time spent
waiting for a core on a shared machine); the largest difference between the two paths' costs
and intervals must stay below 1e-5 nats.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from reapkit.compress.prune import mask_experts
from reapkit.data import calibration_batches
from reapkit.measure.evaluate import sequence_metrics
from reapkit.measure.stats import bootstrap
from reapkit.model.layer import moe_layers
from reapkit.model.loading import load_model
from reapkit.study.ablation import single_expert_ablation, single_expert_plan


def plain_ablation(model, batches, layer: int) -> pd.DataFrame:
    """The full-forward path: per expert of `layer`, mask it and evaluate every sequence from the embeddings on."""
    base = sequence_metrics(model, batches, progress=False)
    tokens = base["tokens"].to_numpy(np.float64)
    unpruned = base["loss"].to_numpy(np.float64) * tokens
    rows = []
    for expert in range(moe_layers(model)[0].num_experts):
        with mask_experts(model, single_expert_plan(model, layer, expert)):
            masked = sequence_metrics(model, batches, progress=False)["loss"].to_numpy(np.float64) * tokens
        rows.append((layer, expert, *bootstrap(masked, tokens, minus=unpruned), int(tokens.sum())))
    return pd.DataFrame(rows, columns=["layer", "expert", "loss_change", "lo", "hi", "tokens"])


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluation", default="code:8,tools:8,prose:8,math:8", help="held-out spec (notebook 03's)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--plain-layer", type=int, default=3, help="the layer the plain path ablates")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model("demo")
    batches = calibration_batches(
        args.evaluation, tokenizer, batch_size=args.batch_size, max_length=args.length, split="validation", seed=0
    )
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    layers = [moe.index for moe in moe_layers(model)]
    print(
        f"demo model, {len(layers)} MoE layers x {moe_layers(model)[0].num_experts} experts; {len(batches)} batches, "
        f"{tokens} held-out tokens; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    fast, wall, cpu = timed(lambda: single_expert_ablation(model, batches, progress=False))
    print(f"fast path, every layer ({len(fast)} experts): {wall:6.1f} s wall, {cpu:6.1f} s CPU")
    one = [args.plain_layer]
    fast_one, fast_wall, fast_cpu = timed(lambda: single_expert_ablation(model, batches, layers=one, progress=False))
    plain, plain_wall, plain_cpu = timed(lambda: plain_ablation(model, batches, args.plain_layer))
    n = len(plain)
    print(f"layer {args.plain_layer} ({n} experts), per expert: fast {fast_wall / n * 1e3:6.1f} ms wall, "
          f"{fast_cpu / n * 1e3:6.1f} ms CPU; plain {plain_wall / n * 1e3:6.1f} ms wall, "
          f"{plain_cpu / n * 1e3:6.1f} ms CPU")  # fmt: skip
    print(f"plain / fast per expert of layer {args.plain_layer}: {plain_wall / fast_wall:.2f} wall, "
          f"{plain_cpu / fast_cpu:.2f} CPU")  # fmt: skip
    every_wall, every_cpu = (
        plain_wall / n * len(fast),
        plain_cpu / n * len(fast),
    )  # a full forward costs the same anywhere
    print(f"every layer, plain path estimated from layer {args.plain_layer}: {every_wall:.1f} s wall, "
          f"{every_cpu:.1f} s CPU; plain / fast {every_wall / wall:.2f} wall, {every_cpu / cpu:.2f} CPU")  # fmt: skip
    columns = ["loss_change", "lo", "hi"]
    worst = max(
        np.abs(fast_one[columns].to_numpy() - plain[columns].to_numpy()).max(),
        np.abs(fast[fast.layer == args.plain_layer][columns].to_numpy() - plain[columns].to_numpy()).max(),
    )
    print(f"largest difference fast - plain (loss change, lo, hi): {worst:.2e} nats per token")
    if not worst < 1e-5:
        raise SystemExit("the fast and plain paths disagree")


if __name__ == "__main__":
    main()
