"""Memory estimates, so that an inducing cache that cannot fit is refused before it is allocated."""

from __future__ import annotations

import os

import torch


def available_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Bytes that can still be allocated on ``device``, or ``None`` when it cannot be told.

    CPU: ``MemAvailable`` from ``/proc/meminfo`` (Linux). CUDA: ``torch.cuda.mem_get_info``.
    """
    try:
        device = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from error
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu" or not os.path.exists("/proc/meminfo"):
        return None
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_allocation(nbytes: int, device: torch.device | str | None, what: str, *, force: bool = False) -> None:
    """Raise ``MemoryError`` if ``nbytes`` will not fit on ``device`` (unless ``force``).

    :param what: a description of the allocation, repeated in the message.
    """
    if force:
        return
    available = available_memory_bytes(device)
    if available is not None and nbytes > available:
        raise MemoryError(
            f"{what} needs {nbytes / 2**30:.2f} GiB on {torch.device('cpu' if device is None else device)} "
            f"but only {available / 2**30:.2f} GiB is available; reduce num_inducing / embedding_dim, "
            "store embeddings in bfloat16 (embedding_dtype=torch.bfloat16), or pass force_allocation=True"
        )
