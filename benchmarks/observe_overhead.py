"""Cost of observing: observed forward / plain forward on the bundled demo model, paired and alternating.

    python benchmarks/observe_overhead.py                 # demo model, CPU, 15 rounds (target: default <= 1.05)
    python benchmarks/observe_overhead.py --rounds 31 --threads 1 --memory

Each round runs every variant once on the same batches, in an order that rotates from round to
round, and each variant's time is divided by the plain forward of the same round; the median
ratio over rounds is reported with its quartiles and extremes, so background load on a shared
machine hits numerator and denominator alike. Both clocks are reported: wall time, and the CPU
time of the process, which does not count time spent waiting for a core (use it with --threads 1
on a busy machine). `fastest` is the fastest run of a variant over the fastest plain run, the
estimate least disturbed by other processes. A variant is one set of recorded statistics:
the default ones, each optional one added alone, and all. The plain forward is the model's
default experts implementation; an observed forward enters `recording` as `observe` does per
run (its one-off cost is measured apart). `--memory` adds the peak memory of fresh subprocesses
that observe 1, 8 and 32 batches: flat in N means no buffer grows with the calibration set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from reapkit.data import calibration_batches
from reapkit.model.loading import load_model
from reapkit.observe.recorder import observe, recording
from reapkit.observe.statistics import OPTIONAL

VARIANTS = {"default": None, **{f"+{name}": [name] for name in OPTIONAL}, "all": "all"}


def batches(tokenizer, count: int, batch_size: int, length: int):
    spec = f"code:{count * batch_size // 2},prose:{count * batch_size - count * batch_size // 2}"
    return calibration_batches(spec, tokenizer, batch_size=batch_size, max_length=length, seed=0)[:count]


@torch.no_grad()
def forwards(model, data, statistics=...):
    """Run `data` through `model`: plainly (`...`) or inside one `recording` of `statistics`."""
    if statistics is ...:
        for b in data:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        return
    with recording(model, statistics=statistics) as recorder:
        for b in data:
            recorder.start_batch(b.domain, b.attention_mask)
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `fn()`; CPU time ignores time spent descheduled."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def paired_times(model, data, rounds: int) -> dict[str, dict[str, list[float]]]:
    """{clock: {"plain" or variant: [seconds per round]}} over `rounds` rounds in rotating order."""
    runs = {
        "plain": lambda: forwards(model, data),
        **{v: (lambda s=s: forwards(model, data, s)) for v, s in VARIANTS.items()},
    }
    names = list(runs)
    for name in names:  # warm up
        runs[name]()
    times = {clock: {name: [] for name in names} for clock in ("wall", "cpu")}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for clock, seconds in zip(times, timed(runs[name])):
                times[clock][name].append(seconds)
    return times


def setup_cost(model, repeats: int = 20) -> float:
    """Median seconds to enter and leave `recording` with nothing run inside."""

    def enter():
        with recording(model):
            pass

    return statistics.median(timed(enter)[0] for _ in range(repeats))


def peak_memory_child(count: int, batch_size: int, length: int) -> None:
    """In a subprocess: observe `count` batches; print the peak resident memory in MiB."""
    import resource

    model, tokenizer = load_model("demo")
    observe(model, batches(tokenizer, count, batch_size, length), progress=False)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_memory(count: int, batch_size: int, length: int) -> float:
    command = [
        sys.executable,
        __file__,
        "--child",
        str(count),
        "--batch-size",
        str(batch_size),
        "--length",
        str(length),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return q1, median, q3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batches", type=int, default=2, help="batches per forward run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory against calibration size")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return peak_memory_child(args.child, args.batch_size, args.length)

    model, tokenizer = load_model("demo")
    data = batches(tokenizer, args.batches, args.batch_size, args.length)
    tokens = sum(int(b.attention_mask.sum()) for b in data)
    config = model.config
    print(
        f"demo model: hidden {config.hidden_size}, {config.num_experts} experts, top-{config.num_experts_per_tok}, "
        f"{config.num_hidden_layers} layers; {model.config._experts_implementation} plain; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {len(data)} batches, {tokens} real tokens per run; {args.rounds} rounds"
    )
    for clock, times in paired_times(model, data, args.rounds).items():
        plain = times.pop("plain")
        print(f"\n{clock} clock: plain forward median {statistics.median(plain) * 1e3:.1f} ms per run; ratio to plain:")
        print(f"{'statistics':>16}  {'median':>7}  {'q1':>6}  {'q3':>6}  {'min':>6}  {'max':>6}  {'fastest':>7}")
        for name, values in times.items():
            ratios = [t / p for t, p in zip(values, plain)]  # paired: the same round
            q1, median, q3 = quartiles(ratios)
            best = min(values) / min(plain)
            print(
                f"{name:>16}  {median:7.3f}  {q1:6.3f}  {q3:6.3f}  {min(ratios):6.3f}  {max(ratios):6.3f}  {best:7.3f}"
            )
    print(f"entering recording once per run: {setup_cost(model) * 1e3:.2f} ms (included above)")
    if args.memory:
        peaks = {n: peak_memory(n, args.batch_size, args.length) for n in (1, 8, 32)}
        print("peak memory, observe: " + "   ".join(f"{n:>3} batches {mib:6.0f} MiB" for n, mib in peaks.items()))


if __name__ == "__main__":
    main()
