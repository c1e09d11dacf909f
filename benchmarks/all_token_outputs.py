"""Cost of `observe --all-token-outputs` against its floor: every expert on every token, E/k times the routed work.

    python benchmarks/all_token_outputs.py                  # demo model, CPU, 9 rounds
    python benchmarks/all_token_outputs.py --threads 1 --rounds 15

In one run, on the same batches, in rotating order: a plain forward with hooks timing the calls of
the experts modules (the expert part of a plain forward: each routed expert once), a forward
observed with the default statistics, and one observed with `all_output_sum`. Running every expert
on every token is E/k times the routed expert work, so the floor of the observed forward is about
the plain forward plus (E/k - 1) x the expert part; the target is

    observed with --all-token-outputs  <=  1.2 x (E/k) x expert part of a plain forward

printed as a ratio (median over rounds, each round's times paired), with the extra time of the
all-token outputs over default observing in the same units.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reapkit.data import calibration_batches
from reapkit.model.layer import moe_layers
from reapkit.model.loading import load_model
from reapkit.observe.recorder import recording


@torch.no_grad()
def run(model, data, names=None, experts_clock=None):
    """Seconds of one pass over `data`: plain (`names` None) or inside a `recording` of `names`."""
    start = time.perf_counter()
    if names is None:
        for b in data:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    else:
        with recording(model, statistics=names) as recorder:
            for b in data:
                recorder.start_batch(b.domain, b.attention_mask)
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    return time.perf_counter() - start


def timing_hooks(model, clock: list[float]):
    """Hooks adding the wall time spent inside each experts module's forward to `clock[0]`."""
    started = {}
    handles = []
    for layer in moe_layers(model):
        experts = layer.experts

        def before(module, args):
            started[id(module)] = time.perf_counter()

        def after(module, args, output):
            clock[0] += time.perf_counter() - started.pop(id(module))

        handles += [experts.register_forward_pre_hook(before), experts.register_forward_hook(after)]
    return handles


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model("demo")
    spec = f"code:{args.batches * args.batch_size}"
    data = calibration_batches(spec, tokenizer, batch_size=args.batch_size, max_length=args.length, seed=0)
    data = data[: args.batches]
    config = model.config
    ratio_ek = config.num_experts / config.num_experts_per_tok
    tokens = sum(b.num_tokens for b in data)
    print(
        f"demo model: {config.num_experts} experts, top-{config.num_experts_per_tok} (E/k = {ratio_ek:g}), "
        f"{config.num_hidden_layers} layers; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{len(data)} batches, {tokens} real tokens per pass; {args.rounds} rounds"
    )

    def plain_with_expert_clock():
        clock = [0.0]
        handles = timing_hooks(model, clock)
        try:
            total = run(model, data)
        finally:
            for h in handles:
                h.remove()
        return total, clock[0]

    variants = {
        "plain": lambda: (run(model, data), None),
        "plain+clock": plain_with_expert_clock,
        "observed": lambda: (run(model, data, names=[]), None),
        "all_tokens": lambda: (run(model, data, names=["all_output_sum"]), None),
    }
    for fn in variants.values():  # warm up
        fn()
    times = {name: [] for name in variants}
    expert_part = []
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            total, experts = variants[name]()
            times[name].append(total)
            if experts is not None:
                expert_part.append(experts)
    med = {name: statistics.median(values) for name, values in times.items()}
    part = statistics.median(expert_part)
    floor = ratio_ek * part
    paired = [a / (ratio_ek * e) for a, e in zip(times["all_tokens"], expert_part)]
    extra = [(a - o) / (ratio_ek * e) for a, o, e in zip(times["all_tokens"], times["observed"], expert_part)]
    print(f"plain forward              {med['plain'] * 1e3:8.1f} ms")
    print(f"  expert part (hooks)      {part * 1e3:8.1f} ms  ({part / med['plain+clock']:.0%} of a plain forward)")
    print(f"observed, default          {med['observed'] * 1e3:8.1f} ms")
    print(f"observed, all-token outputs{med['all_tokens'] * 1e3:8.1f} ms")
    print(f"(E/k) x expert part        {floor * 1e3:8.1f} ms")
    print(
        f"observed all-token / ((E/k) x expert part): median {statistics.median(paired):.3f} "
        f"(min {min(paired):.3f}, max {max(paired):.3f}); target <= 1.2"
    )
    print(f"extra of all-token outputs over default observing / ((E/k) x expert part): {statistics.median(extra):.3f}")


if __name__ == "__main__":
    main()
