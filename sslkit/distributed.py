"""torch.distributed plumbing for ``torchrun``: process group, rank facts, and the few collectives the
trainer needs. With one process every function is a cheap no-op, so the loop reads the same either way."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from sslkit.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank among ``world`` processes, its device index on the node, and how many
    processes share the node (and, on CPUs, its memory)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device | None]:
    """Joins the process group that ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPUs).

    Returns:
        The rank facts, and the device this rank must use (None: let the caller choose, single process).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device_name.startswith("cuda") and not torch.cuda.is_available():  # as one process refuses it
        raise UserError(f"train.device is {device_name!r} but no CUDA device is available — use train.device: "
                        "auto or cpu")
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return DistInfo(rank, world, local_rank, local_world), torch.device("cuda", local_rank)
    return DistInfo(rank, world, local_rank, local_world), torch.device("cpu")


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def mean_across(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a tensor over all ranks (a copy; the input is untouched)."""
    if not info.active:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / info.world


def any_across(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when it is True on any rank (e.g. a signal received by one process)."""
    if not info.active:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
