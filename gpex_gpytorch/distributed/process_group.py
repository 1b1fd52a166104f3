"""Start (and stop) the process group that a ``torchrun`` launch describes, with a bounded timeout."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

__all__ = ["destroy_distributed", "group_timeout", "init_distributed", "new_group_like_default"]


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


def group_timeout(group: dist.ProcessGroup | None = None) -> datetime.timedelta | None:
    """The timeout configured for ``group`` (default: the default group), or ``None`` if torch does not say.

    torch has no public getter; the backend's options hold it (gloo and NCCL alike).
    """
    pg = dist.group.WORLD if group is None else group
    if pg is None:
        return None
    for device in getattr(pg, "_device_types", []):
        try:
            timeout = pg._get_backend(device).options._timeout
        except (AttributeError, RuntimeError):
            continue
        if isinstance(timeout, datetime.timedelta):
            return timeout
    return None


def new_group_like_default() -> dist.ProcessGroup:
    """A new group of all ranks with the default group's timeout (collective).

    ``dist.new_group()`` alone gets the backend's built-in default (30 minutes on gloo), not the
    ``timeout`` given to :func:`init_process_group`: a frozen peer would then hang the others for
    half an hour instead of ``timeout_s``.
    """
    return dist.new_group(timeout=group_timeout())


def destroy_distributed() -> None:
    """Tear the default process group down (no-op if none)."""
    if dist.is_initialized():
        dist.destroy_process_group()
