"""A frozen or killed rank makes its peers raise DistributedStepError within the timeout (gloo, 127.0.0.1).

Each scenario spawns 2 or 3 ranks with a short process-group timeout (``TIMEOUT_S``); one rank
freezes itself (SIGSTOP) or dies (``os._exit``) at a chosen point, and the survivors must raise
:class:`DistributedStepError` within ``TIMEOUT_S`` + a few seconds, never a raw ``RuntimeError``
and never the backend's 30-minute default.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from spawned_ranks import run_on_ranks
from test_distributed import FRESH, D, H, M, _distiller_data, _distiller_settings, _problem
from torch import Tensor, nn

from gpex_gpytorch import GPEXModel
from gpex_gpytorch.distributed import (
    DistributedDistiller,
    DistributedStepError,
    ShardedCachedDeepKernel,
    ShardLayout,
    save_sharded_checkpoint,
)
from gpex_gpytorch.distributed.communication import collective_errors, is_communication_failure
from gpex_gpytorch.distributed.process_group import group_timeout

TIMEOUT_S = 3.0
SLACK_S = 5.0  # detection after the timeout, plus a loaded machine


def _failure(call: Callable[[], object]) -> dict[str, Any]:
    start = time.monotonic()
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return {"error": type(error).__name__, "message": str(error), "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


def _model(rank: int, world: int) -> tuple[GPEXModel, ShardedCachedDeepKernel, dict[str, Any]]:
    problem = _problem()
    kernel = ShardedCachedDeepKernel(problem["net"], M, H, D, embedding_dtype=torch.float64)
    kernel.fill(problem["inducing"])
    return GPEXModel(kernel, problem["values"], noise=0.5), kernel, problem


def _scenario_frozen_in_statistics(rank: int, world: int, folder: Path) -> dict[str, Any]:
    """The last rank stops (SIGSTOP) before the fresh rows' all-reduce on the statistics group."""
    model, kernel, problem = _model(rank, world)
    timeouts = {"statistics_group_s": group_timeout(kernel.process_group).total_seconds()}
    fresh = ShardLayout(M, world).local_part(FRESH, rank)
    if rank == world - 1:
        torch.save(timeouts, folder / f"frozen-{rank}.pt")
        os.kill(os.getpid(), signal.SIGSTOP)
    result = _failure(lambda: model(problem["x"], fresh_indices=fresh, fresh_inputs=problem["inducing"][fresh]))
    return {**result, **timeouts}


def _scenario_killed_at_checkpoint_barrier(rank: int, world: int, folder: Path) -> dict[str, Any]:
    """The last rank dies instead of saving: the others' checkpoint barrier finds it gone."""
    model, kernel, _ = _model(rank, world)
    if rank == world - 1:
        os._exit(3)
    return _failure(lambda: save_sharded_checkpoint(folder / "checkpoint", model, kernel, {}, step=1))


def _scenario_killed_in_ddp_all_reduce(rank: int, world: int, folder: Path) -> dict[str, Any]:
    """In DistributedDistiller.fit, the last rank dies once its gradient is ready, before DDP's all-reduce."""
    dataset, ann = _distiller_data()
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(dataset.tensors[0].shape[1], 16), nn.Tanh(), nn.Linear(16, H * D))
    death = folder / "death-time.pt"
    if rank == world - 1:

        def die(grad: Tensor) -> None:
            torch.save(time.time(), death)
            os._exit(3)

        # A leaf's hook runs once its gradient is complete: after the statistics' backward
        # all-reduce, before DDP hands the bucket to its all-reduce.
        network[0].weight.register_hook(die)
    distiller = DistributedDistiller(ann, network, **_distiller_settings(3))
    result = _failure(lambda: distiller.fit(dataset))
    # Time from the peer's death (fit's set-up before it does not count against the timeout).
    return {**result, "seconds": time.time() - torch.load(death)}


def _scenario_killed_before_ddp_forward(rank: int, world: int, folder: Path) -> dict[str, Any]:
    """The last rank dies at step 2 before its model forward: the others fail in DDP's bucket rebuild."""
    dataset, ann = _distiller_data()
    if rank == world - 1:
        calls = [0]

        def die_at_step_2(module: nn.Module, args: tuple[Any, ...]) -> None:
            # ANN calls: the sample check, the inducing values, the evaluation batch, step 1, step 2.
            calls[0] += 1
            if calls[0] == 5:
                os._exit(3)

        ann.register_forward_pre_hook(die_at_step_2)
    distiller = DistributedDistiller(ann, **_distiller_settings(3))
    return _failure(lambda: distiller.fit(dataset))


_SCENARIOS: dict[str, Callable[[int, int, Path], dict[str, Any]]] = {
    "frozen_in_statistics": _scenario_frozen_in_statistics,
    "killed_at_checkpoint_barrier": _scenario_killed_at_checkpoint_barrier,
    "killed_in_ddp_all_reduce": _scenario_killed_in_ddp_all_reduce,
    "killed_before_ddp_forward": _scenario_killed_before_ddp_forward,
}


def _spawn(scenario: str, world: int, folder: Path, survivors: list[int], deadline_s: float = 60.0) -> list[Any]:
    """Run ``scenario`` on ``world`` ranks; wait for the ``survivors`` only, then kill whatever is left."""
    return run_on_ranks(
        scenario, _SCENARIOS[scenario], world, folder, timeout_s=TIMEOUT_S, deadline_s=deadline_s, survivors=survivors
    )


def _assert_step_error(result: dict[str, Any]) -> None:
    assert result["error"] == "DistributedStepError", result
    assert "another rank died or did not answer" in result["message"]
    assert result["seconds"] < TIMEOUT_S + SLACK_S, result


def test_a_frozen_rank_makes_the_others_fail_after_the_timeout_not_thirty_minutes(tmp_path: Path) -> None:
    results = _spawn("frozen_in_statistics", 3, tmp_path, survivors=[0, 1])
    for result in results[:2]:
        # The statistics group inherits the configured timeout (dist.new_group() alone: 30 minutes).
        assert result["statistics_group_s"] == pytest.approx(TIMEOUT_S)
        _assert_step_error(result)
        assert "the all-reduce of the fresh rows" in result["message"]
        assert result["seconds"] >= TIMEOUT_S * 0.9  # it waited for the frozen peer, then gave up


def test_a_rank_killed_before_the_checkpoint_barrier_gives_a_step_error(tmp_path: Path) -> None:
    results = _spawn("killed_at_checkpoint_barrier", 2, tmp_path, survivors=[0])
    assert results[1] is None
    _assert_step_error(results[0])
    assert "checkpoint barrier" in results[0]["message"]
    assert not (tmp_path / "checkpoint" / "manifest.json").exists()  # nothing claims an incomplete step


def test_a_rank_killed_in_ddp_all_reduce_gives_a_step_error(tmp_path: Path) -> None:
    results = _spawn("killed_in_ddp_all_reduce", 2, tmp_path, survivors=[0])
    assert results[1] is None
    _assert_step_error(results[0])
    assert "step 1" in results[0]["message"]


def test_a_rank_killed_before_ddps_forward_gives_a_step_error(tmp_path: Path) -> None:
    results = _spawn("killed_before_ddp_forward", 2, tmp_path, survivors=[0])
    assert results[1] is None
    assert results[0]["error"] == "DistributedStepError", results[0]
    assert "another rank died or did not answer" in results[0]["message"]


def test_only_backend_failures_are_reported_as_step_errors() -> None:
    gloo = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    assert is_communication_failure(gloo)
    # A network's own error inside DDP's forward stays what it is.
    assert not is_communication_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x6 and 5x16)"))
    with pytest.raises(RuntimeError, match="mat1 and mat2") as info:
        with collective_errors("a forward", mixed=True):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x6 and 5x16)")
    assert type(info.value) is RuntimeError
    with pytest.raises(DistributedStepError, match="a forward failed - another rank died"):
        with collective_errors("a forward", mixed=True):
            raise gloo
