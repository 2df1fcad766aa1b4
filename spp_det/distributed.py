"""torch.distributed set-up for torchrun (NCCL on GPUs, gloo on CPU)."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import SppDetError

T = TypeVar("T")


def init_distributed(device: str) -> tuple[int, int]:
    """(rank, world size). Starts the process group when launched by torchrun (WORLD_SIZE
    set); a plain ``python`` run is rank 0 of 1 without a group."""
    # torchrun sets WORLD_SIZE, also to 1: then the group starts too, so that
    # `torchrun --nproc_per_node=1` runs the real DistributedDataParallel path on one GPU
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # long single-rank phases (rank 0's selective search or conv-map pass over VOC/COCO)
        # run while the others wait in a collective: NCCL's default 10 min would abort them
        dist.init_process_group(backend, timeout=timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size()


def gather_lists(items: list, world: int) -> list[list]:
    """All ranks' lists, in rank order (rank 0 uses them)."""
    if world == 1:
        return [items]
    out: list = [None] * world
    dist.all_gather_object(out, items)
    return out


def raise_if_any_failed(error: BaseException | None, world: int) -> None:
    """Collective: every rank passes the exception it met (or None) at the same point.
    If any rank failed, every rank raises, so no rank is left waiting in a later
    collective for one that has gone: the failing rank re-raises its own exception (its
    traceback intact), the others a SppDetError naming that rank and its message. With
    one process this simply re-raises ``error``."""
    if world == 1:
        if error is not None:
            raise error
        return
    messages: list = [None] * world
    dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    for rank, msg in enumerate(messages):
        if msg is not None:
            raise SppDetError(f"rank {rank} failed: {msg}")


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """Collective: True when ``flag`` is True on any rank (one tiny all-reduce), so that a
    decision to stop is taken by every rank at the same step."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def on_rank0(fn: Callable[[], T], rank: int, world: int, default: T) -> T:
    """Run ``fn`` on rank 0 only (work done once for all: selective search, the conv-map
    pass) while the other ranks wait; an exception on rank 0 ends every rank
    (:func:`raise_if_any_failed`). Returns fn's result on rank 0, ``default`` elsewhere."""
    result, error = default, None
    if rank == 0:
        try:
            result = fn()
        except Exception as exc:  # shared below, so no rank waits for rank 0 forever
            error = exc
    raise_if_any_failed(error, world)
    return result
