"""The sharded inducing cache under torch.distributed (gloo, processes spawned here) equals one process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from spawned_ranks import run_on_ranks
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from gpex_gpytorch import ANNMatchingELBO, CachedDeepKernel, Distiller, GPEXModel
from gpex_gpytorch.distributed import (
    DistributedDistiller,
    ShardedCachedDeepKernel,
    ShardLayout,
    TorchDistributed,
    load_sharded_checkpoint,
    sharded_nearest_neighbours,
)
from gpex_gpytorch.explain.nearest_neighbours import nearest_neighbours

H, D, M, IN, N = 3, 4, 11, 6, 8  # M not a multiple of the world size: uneven shards
FRESH = torch.tensor([9, 1, 4, 3, 10, 6])  # shard 0 of 2 holds rows 0..5, shard 1 rows 6..10
REFRESH = torch.tensor([0, 2, 5, 7, 8])
DEAD_RANK_TIMEOUT_S = 6.0


# ---------------------------------------------------------------------- the problem, in every process
def _problem() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(IN, 16), nn.Tanh(), nn.Linear(16, H * D)).double()
    return {
        "net": net,
        "inducing": torch.randn(M, IN, dtype=torch.float64, generator=generator),
        "values": torch.randn(M, H, generator=generator),
        "x": torch.randn(N, IN, dtype=torch.float64, generator=generator),
        "target": torch.randn(N, H, dtype=torch.float64, generator=generator),
        "queries": torch.randn(5, IN, dtype=torch.float64, generator=generator),
    }


def _posterior_step(model: GPEXModel, x: Tensor, target: Tensor, fresh: Tensor, inducing: Tensor) -> dict[str, Any]:
    """One Alg. 1 step's forward and backward; returns what must match between the runs."""
    output = model(x, fresh_indices=fresh, fresh_inputs=inducing[fresh])
    mll = ANNMatchingELBO(None, model, num_data=50)
    loss = -mll(output, target)
    loss.backward()
    return {"mean": output.mean.detach(), "variance": output.variance.detach(), "loss": loss.detach()}


def _distiller_data() -> tuple[TensorDataset, nn.Module]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(40, IN, generator=generator)
    torch.manual_seed(3)
    ann = nn.Sequential(nn.Linear(IN, 12), nn.ReLU(), nn.Linear(12, H)).eval()
    return TensorDataset(x), ann


def _distiller_settings(steps: int, **kwargs: Any) -> dict[str, Any]:
    settings: dict[str, Any] = dict(
        embedding_dim=D,
        steps=steps,
        batch_size=12,
        inducing_batch_size=8,
        refresh_batch_size=6,
        lr=1e-2,
        learn_noise=True,
        detach_variance=False,
        recompute_every=4,
        eval_every=3,
        eval_size=16,
        seed=5,
        progress=False,
    )
    settings.update(kwargs)
    return settings


# ---------------------------------------------------------------------- spawned scenarios
def _scenario_equivalence(rank: int, world: int, folder: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    problem = _problem()
    layout = ShardLayout(M, world)
    kernel = ShardedCachedDeepKernel(problem["net"], M, H, D, embedding_dtype=torch.float64)
    kernel.fill(problem["inducing"])
    model = GPEXModel(kernel, problem["values"], noise=0.5, learn_noise=True)
    kernel.data_parallel()
    local = slice(rank * N // world, (rank + 1) * N // world)
    kernel.communication.reset()
    out = _posterior_step(
        model, problem["x"][local], problem["target"][local], layout.local_part(FRESH, rank), problem["inducing"]
    )
    stats_bytes = kernel.communication.bytes
    noise_grad = model.variational_strategy.raw_noise.grad.clone()
    torch.distributed.all_reduce(noise_grad)  # DDP does not see the noise: averaged by hand, as the trainer does
    out["network_grads"] = [p.grad.clone() for p in kernel.feature_extractor.parameters()]
    out["noise_grad"] = noise_grad / world
    out["stats_bytes"] = stats_bytes
    kernel.refresh(layout.local_part(REFRESH, rank), problem["inducing"][layout.local_part(REFRESH, rank)])
    out["gram"], out["cross"] = kernel.gram.clone(), kernel.cross.clone()
    out["drift"] = kernel.gram_drift()
    out["staleness"] = kernel.staleness(
        layout.local_part(FRESH, rank), problem["inducing"][layout.local_part(FRESH, rank)]
    )
    out["kl"] = model.variational_strategy.kl_divergence().detach()
    out["predict"] = model.predict(problem["queries"])
    found = sharded_nearest_neighbours(model, problem["queries"], k=4)
    out["neighbours"] = (found.indices, found.similarities)

    dataset, ann = _distiller_data()
    # The plain Distiller with the torch.distributed policy: the same loop as one process.
    settings = _distiller_settings(6, checkpoint_every=3, checkpoint_path=folder / "checkpoint")
    distiller = Distiller(ann, sharding=TorchDistributed(), **settings).fit(dataset)
    trained = distiller.model_
    out["trained_network"] = [p.detach().clone() for p in trained.covar_module.feature_extractor.parameters()]
    out["trained_noise"] = trained.noise.detach().clone()
    out["trained_gram"] = trained.covar_module.gram.clone()
    out["trained_cross"] = trained.covar_module.cross.clone()
    out["trained_predict"] = trained.predict(dataset.tensors[0][:10])
    out["history"] = distiller.history_
    out["communication"] = {k: (v.calls, v.bytes) for k, v in distiller.communication_.items()}
    return out


def _scenario_resume(rank: int, world: int, folder: Path) -> dict[str, Any]:
    """Continue on ``world`` ranks the run that 2 ranks checkpointed at step 3."""
    dataset, ann = _distiller_data()
    distiller = DistributedDistiller(ann, **_distiller_settings(6)).fit(dataset, resume=folder / "checkpoint")
    trained = distiller.model_
    return {
        "trained_network": [p.detach().clone() for p in trained.covar_module.feature_extractor.parameters()],
        "trained_gram": trained.covar_module.gram.clone(),
        "history": distiller.history_,
    }


def _scenario_dead_rank(rank: int, world: int, folder: Path) -> dict[str, Any]:
    problem = _problem()
    kernel = ShardedCachedDeepKernel(problem["net"], M, H, D, embedding_dtype=torch.float64)
    kernel.fill(problem["inducing"])
    model = GPEXModel(kernel, problem["values"], noise=0.5)
    kernel.data_parallel()
    fresh = ShardLayout(M, world).local_part(FRESH, rank)
    output = model(problem["x"], fresh_indices=fresh, fresh_inputs=problem["inducing"][fresh])
    if rank == world - 1:
        os._exit(3)  # dies mid-step: after the forward, before its part of the backward
    start = time.monotonic()
    try:
        (-ANNMatchingELBO(None, model, num_data=50)(output, problem["target"])).backward()
        kernel.refresh(fresh, problem["inducing"][fresh])
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return {"error": type(error).__name__, "message": str(error), "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


_SCENARIOS: dict[str, Callable[[int, int, Path], dict[str, Any]]] = {
    "equivalence": _scenario_equivalence,
    "resume": _scenario_resume,
    "dead_rank": _scenario_dead_rank,
}


def _spawn(scenario: str, world: int, folder: Path, timeout_s: float = 30.0, deadline_s: float = 60.0) -> list[dict]:
    """Run a scenario on ``world`` spawned ranks; returns each rank's result (``None`` for a rank that died)."""
    return run_on_ranks(scenario, _SCENARIOS[scenario], world, folder, timeout_s=timeout_s, deadline_s=deadline_s)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("distributed")
    start = time.monotonic()
    equivalence = _spawn("equivalence", 2, folder)
    resumed = _spawn("resume", 3, folder)
    return {"equivalence": equivalence, "resume": resumed, "folder": folder, "seconds": time.monotonic() - start}


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    """The single-process reference: the same problem and the same global batches."""
    problem = _problem()
    kernel = CachedDeepKernel(problem["net"], M, H, D, embedding_dtype=torch.float64)
    kernel.fill(problem["inducing"], progress=False)
    model = GPEXModel(kernel, problem["values"], noise=0.5, learn_noise=True)
    out = _posterior_step(model, problem["x"], problem["target"], FRESH, problem["inducing"])
    out["network_grads"] = [p.grad.clone() for p in kernel.feature_extractor.parameters()]
    out["noise_grad"] = model.variational_strategy.raw_noise.grad.clone()
    kernel.refresh(REFRESH, problem["inducing"][REFRESH])
    out["gram"], out["cross"] = kernel.gram.clone(), kernel.cross.clone()
    out["staleness"] = kernel.staleness(FRESH, problem["inducing"][FRESH])
    out["kl"] = model.variational_strategy.kl_divergence().detach()
    out["predict"] = model.predict(problem["queries"])
    found = nearest_neighbours(model, problem["queries"], k=4)
    out["neighbours"] = (found.indices, found.similarities)
    dataset, ann = _distiller_data()
    distiller = Distiller(ann, **_distiller_settings(6)).fit(dataset)
    trained = distiller.model_
    out["trained_network"] = [p.detach().clone() for p in trained.covar_module.feature_extractor.parameters()]
    out["trained_noise"] = trained.noise.detach().clone()
    out["trained_gram"] = trained.covar_module.gram.clone()
    out["trained_cross"] = trained.covar_module.cross.clone()
    out["trained_predict"] = trained.predict(dataset.tensors[0][:10])
    out["history"] = distiller.history_
    return out


# ---------------------------------------------------------------------- the tests
def test_layout_splits_rows_contiguously_and_finds_owners() -> None:
    layout = ShardLayout(11, 4)
    assert [layout.bounds(r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 11)]
    owners = layout.owners(torch.arange(11))
    assert owners.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert layout.local_part(torch.tensor([10, 4, 3, 0]), 1).tolist() == [4, 3]
    with pytest.raises(ValueError, match="world_size"):
        ShardLayout(3, 4)


def test_sharded_kernel_requires_an_initialised_process_group() -> None:
    with pytest.raises(RuntimeError, match="not initialised"):
        ShardedCachedDeepKernel(nn.Linear(IN, H * D), M, H, D)


def test_posterior_means_and_variances_equal_one_process(runs: dict, single: dict) -> None:
    ranks = runs["equivalence"]
    torch.testing.assert_close(torch.cat([r["mean"] for r in ranks]), single["mean"])
    torch.testing.assert_close(torch.cat([r["variance"] for r in ranks]), single["variance"])
    for r in ranks:  # evaluation needs no communication and gives the same answer everywhere
        torch.testing.assert_close(r["predict"], single["predict"])
        torch.testing.assert_close(r["kl"], single["kl"])


def test_gradients_through_the_fresh_rows_equal_one_process(runs: dict, single: dict) -> None:
    for r in runs["equivalence"]:
        for sharded, reference in zip(r["network_grads"], single["network_grads"], strict=True):
            torch.testing.assert_close(sharded, reference, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(r["noise_grad"], single["noise_grad"], rtol=1e-6, atol=1e-9)


def test_refresh_keeps_the_global_statistics_identical_on_every_rank(runs: dict, single: dict) -> None:
    for r in runs["equivalence"]:
        torch.testing.assert_close(r["gram"], single["gram"])
        torch.testing.assert_close(r["cross"], single["cross"])
        assert r["drift"] < 1e-12
        assert r["staleness"] == pytest.approx(single["staleness"], rel=1e-9)


def test_statistics_travel_as_one_all_reduce_of_heads_times_d_squared(runs: dict) -> None:
    # Forward delta + its gradient in the backward: 2 all-reduces of H*D*D + H*D float64, whatever M.
    for r in runs["equivalence"]:
        assert r["stats_bytes"] == 2 * (H * D * D + H * D) * 8


def test_neighbours_gathered_from_shards_equal_one_process(runs: dict, single: dict) -> None:
    for r in runs["equivalence"]:
        torch.testing.assert_close(r["neighbours"][1], single["neighbours"][1])
        assert torch.equal(r["neighbours"][0], single["neighbours"][0])


def test_distributed_distiller_reproduces_the_single_process_run(runs: dict, single: dict) -> None:
    for r in runs["equivalence"]:
        for sharded, reference in zip(r["trained_network"], single["trained_network"], strict=True):
            torch.testing.assert_close(sharded, reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r["trained_noise"], single["trained_noise"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r["trained_gram"], single["trained_gram"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r["trained_cross"], single["trained_cross"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r["trained_predict"], single["trained_predict"], rtol=1e-4, atol=1e-5)
        losses = [h["loss"] for h in r["history"]]
        assert losses == pytest.approx([h["loss"] for h in single["history"]], rel=1e-4)
        for mine, theirs in zip(r["history"], single["history"], strict=True):
            if "pearson" in theirs:
                assert mine["pearson"] == pytest.approx(theirs["pearson"], rel=1e-4)
                assert mine["staleness"] == pytest.approx(theirs["staleness"], rel=1e-3, abs=1e-6)


def test_checkpoint_resumes_on_another_number_of_ranks(runs: dict, single: dict) -> None:
    # Written by 2 ranks at step 3, resumed on 3 ranks: the same trajectory as one process.
    for r in runs["resume"]:
        for sharded, reference in zip(r["trained_network"], single["trained_network"], strict=True):
            torch.testing.assert_close(sharded, reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r["trained_gram"], single["trained_gram"], rtol=1e-4, atol=1e-5)
        assert len(r["history"]) == 6


def test_a_sharded_checkpoint_loads_whole_or_re_sharded(runs: dict) -> None:
    folder = runs["folder"] / "checkpoint"
    whole = load_sharded_checkpoint(folder)
    key = "variational_strategy.kernel.embeddings"
    assert whole.step == 6 and whole.manifest["world_size"] == 2
    assert whole.model_state[key].shape == (H, 40, D)
    layout = ShardLayout(40, 3)
    parts = [load_sharded_checkpoint(folder, layout, r).model_state[key] for r in range(3)]
    assert [p.shape[1] for p in parts] == [layout.size(r) for r in range(3)]
    torch.testing.assert_close(torch.cat(parts, 1), whole.model_state[key])
    dataset, ann = _distiller_data()
    model = Distiller(ann, **_distiller_settings(1)).fit(dataset).model_  # a single-process model of the same shape
    model.load_state_dict(whole.model_state)
    assert [p.name for p in folder.glob("step-*")] == ["step-00000006"]


def test_a_dead_rank_makes_the_others_fail_quickly_with_a_clear_error(tmp_path: Path) -> None:
    start = time.monotonic()
    results = _spawn("dead_rank", 2, tmp_path, timeout_s=DEAD_RANK_TIMEOUT_S, deadline_s=45.0)
    assert results[1] is None  # it died
    survivor = results[0]
    assert survivor["error"] == "DistributedStepError", survivor
    assert "another rank died" in survivor["message"]
    assert survivor["seconds"] < DEAD_RANK_TIMEOUT_S + 5
    assert time.monotonic() - start < 45.0
