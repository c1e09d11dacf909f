"""Cost of a candidate in the budget search: one fitness evaluation / one plain forward, on the demo model.

    python benchmarks/budget_search.py                     # demo model, CPU, 11 rounds
    python benchmarks/budget_search.py --rounds 21 --threads 1 --fitness agreement

A fitness evaluation (`reapkit.measure.budget_search.candidate_fitness`) builds nothing: it masks a
plan on the model (`mask_experts`), runs the search tokens through it and compares its log-probs
with the unpruned model's, cached once (`reference_outputs`). So its cost is one forward plus the
comparison over the vocabulary. Each round times the plain forward, the fitness of a uniform plan
and the fitness of a non-uniform one on the same batches, in an order that rotates from round to
round; each is divided by the plain forward of the same round, and the median ratio over rounds
is reported with its quartiles (background load on a shared machine hits both alike). Both clocks
are reported: wall time, and the CPU time of this process (use it with --threads 1 on a busy
machine). The one-off cost of the reference (one forward, log-softmax kept) is reported apart.
A search costs about generations x (population - survivors) such evaluations, fewer when
candidates repeat (scores are cached per count vector).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reapkit.data import calibration_batches
from reapkit.measure.budget_search import candidate_fitness
from reapkit.measure.evaluate import reference_outputs
from reapkit.model.loading import load_model
from reapkit.observe.recorder import observe
from reapkit.select.budget import water_plan
from reapkit.select.plan import PruningPlan


@torch.no_grad()
def plain(model, data):
    for b in data:
        model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `fn()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return q1, median, q3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--sequences", type=int, default=4, help="search sequences per domain (4 domains)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--fitness", default="kl", help="kl, agreement or acceptance")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model("demo")
    n = args.sequences
    spec = f"code:{n},prose:{n},tools:{n},math:{n}"
    data = calibration_batches(spec, tokenizer, batch_size=n, max_length=args.length, split="train")
    obs = observe(model, calibration_batches(spec, tokenizer, batch_size=n, max_length=args.length), progress=False)
    uniform = PruningPlan.from_observations(obs, "reap", ratio=0.5)
    water = water_plan(obs, "reap", total=uniform.total_kept)
    tokens = sum(int(b.attention_mask.sum()) for b in data)
    reference_seconds = timed(lambda: reference_outputs(model, data, progress=False))[0]
    reference = reference_outputs(model, data, progress=False)
    print(
        f"demo model, torch {torch.__version__}, {torch.get_num_threads()} threads; {len(data)} batches, {tokens} "
        f"real tokens per run; fitness {args.fitness}; {args.rounds} rounds; reference (once per search) "
        f"{reference_seconds * 1e3:.0f} ms, {reference.nbytes / 2**20:.1f} MiB"
    )
    runs = {
        "plain": lambda: plain(model, data),
        "uniform": lambda: candidate_fitness(model, uniform, data, reference, args.fitness),
        "water": lambda: candidate_fitness(model, water, data, reference, args.fitness),
    }
    names = list(runs)
    for name in names:  # warm up
        runs[name]()
    times = {clock: {name: [] for name in names} for clock in ("wall", "cpu")}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for clock, seconds in zip(times, timed(runs[name])):
                times[clock][name].append(seconds)
    for clock, by_name in times.items():
        base = by_name.pop("plain")
        print(f"\n{clock} clock: plain forward median {statistics.median(base) * 1e3:.1f} ms per run")
        print(f"{'candidate':>10}  {'s/eval':>7}  {'ratio':>6}  {'q1':>6}  {'q3':>6}  {'min':>6}  {'max':>6}")
        for name, values in by_name.items():
            ratios = [t / p for t, p in zip(values, base)]  # paired: the same round
            q1, median, q3 = quartiles(ratios)
            seconds = statistics.median(values)
            print(
                f"{name:>10}  {seconds:7.3f}  {median:6.3f}  {q1:6.3f}  {q3:6.3f}  {min(ratios):6.3f}  {max(ratios):6.3f}"
            )


if __name__ == "__main__":
    main()
