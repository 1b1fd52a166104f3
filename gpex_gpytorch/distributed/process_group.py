"""Start (and stop) the process group that a ``torchrun`` launch describes, with a bounded timeout."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

__all__ = ["destroy_distributed", "init_distributed"]


def init_distributed(
    backend: str | None = None,
    *,
    timeout_s: float = 300.0,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> torch.device:
    """Initialise the default process group and return this rank's device.

    Under ``torchrun`` the rank, world size and rendezvous come from the environment
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    :param backend: ``"nccl"`` when CUDA is available, else ``"gloo"`` (the default choice).
    :param timeout_s: how long a collective may wait for the other ranks before failing. A rank
        that dies mid-step then makes the others raise
        :class:`~gpex_gpytorch.distributed.DistributedStepError` within about this time instead of
        hanging. (With NCCL, ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` must not be disabled.)
    :param init_method: rendezvous URL (default ``env://``).
    :param rank: this process's rank (default: from the environment).
    :param world_size: the number of processes (default: from the environment).
    :returns: ``cuda:<LOCAL_RANK>`` under NCCL, else ``cpu``.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a value > 0, got {timeout_s}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=-1 if rank is None else rank,
            world_size=-1 if world_size is None else world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return device


def destroy_distributed() -> None:
    """Tear the default process group down (no-op if none)."""
    if dist.is_initialized():
        dist.destroy_process_group()
