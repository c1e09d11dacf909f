"""Calibration spread over processes started by `torchrun`: each rank observes its share, sums are all-reduced.

    torchrun --nproc-per-node 8 -m reapkit observe MODEL --data code:1024 --device cuda --out runs/obs

    >>> from reapkit.observe import observe
    >>> with process_group("cuda") as (rank, world):        # reads torchrun's environment
    ...     obs = observe(model, my_share(batches, rank, world))
    ...     obs = all_reduce_observations(obs, batches)    # every rank holds the total
    ...     if rank == 0: obs.save("runs/obs_all")
    PosixPath('runs/obs_all')
    >>> rank, world                                         # here without torchrun: one process
    (0, 1)

Observations are sums (and maxima), so the total over ranks equals one process over all batches.
Without torchrun (`WORLD_SIZE` unset or 1) everything here is a no-op. Backend: NCCL when the
model computes on CUDA, gloo otherwise.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch

from reapkit.errors import InvalidInput
from reapkit.observe.observations import Observations
from reapkit.observe.statistics import STATISTICS

#: a rank may wait this long for the others (big models load and calibrate for hours)
TIMEOUT = datetime.timedelta(hours=6)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: str) -> str:
    """`"cuda"` -> `"cuda:LOCAL_RANK"` under torchrun (one GPU per process); other devices unchanged."""
    if device == "cuda" and world_size() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextlib.contextmanager
def process_group(device="cpu"):
    """Join torchrun's process group for the duration; yields `(rank, world size)`, `(0, 1)` without torchrun."""
    if world_size() <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def my_share(batches: list, rank: int, world: int) -> list:
    """Every `world`-th batch from `rank` on; each rank gets at least one."""
    if len(batches) < world:
        raise InvalidInput(
            f"{len(batches)} calibration batch(es) cannot be shared by {world} processes; "
            "use more calibration data, a smaller --batch-size, or fewer processes"
        )
    return batches[rank::world]


def all_reduce_observations(obs: Observations, batches: list) -> Observations:
    """Every rank's `obs` combined (sums, and maxima where a statistic combines by max), on every rank.

    `batches` are all ranks' batches together; the calibration metadata (content hash and tokens
    per domain) is set for them, as a single process over all of them would.
    """
    import torch.distributed as dist

    from reapkit.data import content_hash

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obs
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, sorted(obs.stats))
    domains = sorted(set().union(*everyone))
    template = next(iter(obs.stats.values()))  # every rank has at least one domain
    stats = {}
    for domain in domains:
        mine = obs.stats.get(domain)
        stats[domain] = {}
        for name, like in template.items():  # the same statistics, in the table's order, on every rank
            value = (mine[name] if mine is not None else torch.zeros_like(like)).to(device).contiguous()
            op = dist.ReduceOp.MAX if STATISTICS[name].combine == "max" else dist.ReduceOp.SUM
            dist.all_reduce(value, op=op)
            stats[domain][name] = value.cpu()
    meta = dict(obs.meta)
    calibration = dict(meta["calibration"])
    calibration["content_hash"] = {d: content_hash([b for b in batches if b.domain == d]) for d in domains}
    calibration["tokens"] = {d: int(stats[d]["tokens"][0]) for d in domains}
    calibration["processes"] = dist.get_world_size()
    meta["calibration"] = calibration
    return Observations(stats=stats, meta=meta)
