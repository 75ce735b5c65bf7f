"""torch.distributed plumbing for ``torchrun``: process group, rank facts, and the few collectives the
trainer needs. With one process every function is a cheap no-op, so the loop reads the same either way."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from sslkit.devices import TRAIN_KINDS, checked_device
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


def launched() -> DistInfo:
    """The rank facts that ``torchrun`` puts in the environment (one process without it), read without joining
    the process group: for what a process says before it joins, or after it left."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device | None]:
    """Joins the process group that ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPUs).

    Returns:
        The rank facts, and the device this rank must use (None: let the caller choose, single process).
    """
    info = launched()
    if not info.active:
        return info, None
    local_rank = info.local_rank
    # As one process refuses it (the device number is this rank's own: local_rank, below)
    use_cuda = checked_device(device_name, "train.device", kinds=TRAIN_KINDS).type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return info, torch.device("cuda", local_rank)
    return info, torch.device("cpu")


_failed_together = False  # main_work ended in a failure that every rank knows of: shutdown() waits for all


class OtherRankFailed(SystemExit):
    """Ends a rank whose own work went well because another rank's failed: rank 0 could not write a checkpoint,
    say (:func:`main_work`). The failing rank raises its own error and says what went wrong; every other rank
    raises this, which exits the process with the same status (``code``) and prints nothing, as ``sys.exit``
    does: one message for the run, not one per process. A ``SystemExit``, so that a script run under
    ``torchrun`` ends the same way without handling it."""


def _exit_status(e: BaseException) -> int:
    """The exit status that ``sslkit``'s CLI gives ``e``: its ``exit_code`` (a WriteError's 74, a UserError's 2),
    1 for any other error."""
    code = getattr(e, "exit_code", 1)
    return code if isinstance(code, int) and code > 0 else 1


@contextlib.contextmanager
def main_work(info: DistInfo, device: torch.device) -> Iterator[None]:
    """A block of work that one rank does (rank 0 writes the checkpoint, the metrics, the export) while the
    others pass through: every rank leaves it together, as from a barrier, and knows whether it failed.

    Without it, a rank 0 that failed a write left the others waiting at the next collective: until the process
    group's timeout (minutes, on NCCL), or ending in a traceback of their own ("Connection closed by peer" from
    gloo) that hid rank 0's message. The block costs one all-reduce of one number, at the points (checkpoints,
    log lines) where the ranks met at a barrier or did no more than that.

    Raises:
        The failing rank's own error, on that rank (an error raised on several ranks, on each of them).
        OtherRankFailed: on every other rank, with the failing rank's exit status.
    """
    if not info.active:
        yield
        return
    status, error = 0, None
    try:
        yield
    except Exception as e:  # noqa: BLE001 — re-raised below, once every rank knows
        status, error = _exit_status(e), e
    worst = max_across(status, info, device)
    global _failed_together
    _failed_together = worst > 0
    if error is not None:
        raise error
    if worst:
        raise OtherRankFailed(worst)


def stop_together(error: Exception, info: DistInfo) -> NoReturn:
    """Ends every rank on ``error``, which each of them reached at the same point: a signal that
    :func:`any_across` made known to all. Rank 0 raises ``error`` and says it; every other rank raises
    :class:`OtherRankFailed` with its exit status and says nothing: one message for the run, not one per process.
    The ranks then leave the process group together (:func:`shutdown`), as after a failed :func:`main_work`."""
    global _failed_together
    if info.active:
        _failed_together = True
        if not info.is_main:
            raise OtherRankFailed(_exit_status(error))
    raise error


@contextlib.contextmanager
def checked_alike() -> Iterator[None]:
    """Checks that every process makes alike before it joins the process group: of the recipe, which each reads
    from the same command line. A :class:`~sslkit.errors.UserError` raised inside is said by rank 0 alone (each
    process said it before, once per process); every other rank raises :class:`OtherRankFailed` with its exit
    status (2) and says nothing.

    The processes meet before they end, in a gloo group joined for that alone: one that ended first would have
    ``torchrun`` stop the others (SIGTERM), rank 0 perhaps before it said the error. With one process, inside a
    process group, or with processes on several machines, the error is raised as it is, by each process that
    meets it: machines may differ in what the checks read (a ``data.root`` that one of them lacks, a CUDA device),
    and a rank whose checks passed would never come to the meeting.
    """
    try:
        yield
    except UserError as e:
        info = launched()
        if not info.active or dist.is_initialized() or info.local_world != info.world:
            raise
        dist.init_process_group("gloo")
        dist.barrier()
        dist.destroy_process_group()
        if not info.is_main:
            raise OtherRankFailed(_exit_status(e)) from None
        raise


@contextlib.contextmanager
def signals_said_by_rank_0(status: int) -> Iterator[None]:
    """Under ``torchrun``, SIGINT and SIGTERM end a rank other than 0 at once, wherever it is, with exit status
    ``status`` (:class:`OtherRankFailed`), saying nothing; rank 0 keeps its handlers and says what the signal
    stopped. ``torchrun`` passes a signal on to every process, and each one said it before, once per process,
    when it came outside the training loop (loading the data, the k-NN at step 0), where no collective tells the
    others. The training loop catches both signals itself, to stop every rank after the same step
    (:func:`stop_together`). One process, or a thread other than the main one, keeps its handlers."""
    info = launched()
    old: dict[int, Any] = {}

    def quiet(signum: int, frame: Any) -> None:
        raise OtherRankFailed(status)

    if info.active and not info.is_main:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                old[s] = signal.signal(s, quiet)
            except ValueError:  # not the main thread
                pass
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


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


def max_across(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest of every rank's ``value``, on every rank."""
    if not info.active:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_across(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when it is True on any rank (e.g. a signal received by one process)."""
    return bool(max_across(int(flag), info, device))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Leaves the process group, if this process joined one.

    After a failure that :func:`main_work` made known to every rank, the ranks leave together, so that the
    failing one has its error ready to tell before any other exits: ``torchrun`` stops the processes left (SIGTERM)
    as soon as one of them exits.
    """
    global _failed_together
    if dist.is_available() and dist.is_initialized():
        if _failed_together:
            dist.barrier()
        dist.destroy_process_group()
    _failed_together = False
