"""Processes launched together (``torchrun``, ``accelerate launch``): joining their group, and leaving
it before the interpreter exits.

A process that exits with its gloo or NCCL group still open can be killed at exit ("terminate called
without an active exception", SIGABRT) while the group's threads are still running; the launcher then
reports the whole run failed although every result was written. So every process that joins a group
leaves it at exit.
"""

from __future__ import annotations

import atexit
import os

import torch

_registered = False


def launched_world_size() -> int:
    """How many processes were launched together (1 when this one was started alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def leave_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits (registered once)."""
    global _registered
    if not _registered:
        atexit.register(_leave)
        _registered = True


def _leave() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def join_group() -> tuple[int, int]:
    """(this process's rank, the number of processes), joining the launched processes' group if no
    one has (through Accelerate: gloo without CUDA, NCCL with it); (0, 1) when started alone."""
    if launched_world_size() == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    leave_group_at_exit()
    return dist.get_rank(), dist.get_world_size()
