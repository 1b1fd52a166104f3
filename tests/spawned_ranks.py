"""Run a scenario on spawned gloo ranks and collect each rank's result (shared by the distributed tests)."""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from gpex_gpytorch.distributed import init_distributed

Scenario = Callable[[int, int, Path], dict[str, Any]]


def _child(rank: int, world: int, port: int, folder: str, name: str, scenario: Scenario, timeout_s: float) -> None:
    torch.set_num_threads(1)
    path = Path(folder)
    try:
        init_distributed(
            "gloo", timeout_s=timeout_s, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        result = scenario(rank, world, path)
    except BaseException:  # noqa: BLE001 - reported to the parent
        result = {"crash": traceback.format_exc()}
    torch.save(result, path / f"{name}-{rank}.pt")
    os._exit(0)  # no teardown: a peer may be gone (the fault scenarios)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_ranks(
    name: str,
    scenario: Scenario,
    world: int,
    folder: Path,
    *,
    timeout_s: float = 30.0,
    deadline_s: float = 60.0,
    survivors: list[int] | None = None,
) -> list[dict[str, Any] | None]:
    """Run ``scenario(rank, world, folder)`` on ``world`` spawned ranks; each rank's result (``None`` if it died).

    :param timeout_s: the process group's timeout.
    :param survivors: the ranks to wait for (default all); the others are killed once these are done.
    """
    context = mp.get_context("spawn")
    port = free_port()
    processes = [
        context.Process(target=_child, args=(r, world, port, str(folder), name, scenario, timeout_s))
        for r in range(world)
    ]
    for process in processes:
        process.start()
    end = time.monotonic() + deadline_s
    waited = range(world) if survivors is None else survivors
    for rank in waited:
        processes[rank].join(max(0.0, end - time.monotonic()))
    hung = [rank for rank in waited if processes[rank].is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()  # SIGKILL also ends a stopped process
        process.join()
    assert not hung, f"{name}: ranks {hung} still running after {deadline_s} s"
    results: list[dict[str, Any] | None] = []
    for rank in range(world):
        path = folder / f"{name}-{rank}.pt"
        result = torch.load(path, weights_only=False) if path.exists() else None
        assert result is None or "crash" not in result, f"{name}, rank {rank}:\n{result['crash']}"
        results.append(result)
    return results
