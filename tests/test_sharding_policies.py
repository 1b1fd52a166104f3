"""The same cache checks against every sharding policy (the ``LinearOperatorTestCase`` pattern).

:class:`ShardingPolicyChecks` holds the checks; each subclass says how to run the scenario
(:func:`cache_scenario`) under its policy: in this process for :class:`SingleProcess`, on spawned
gloo ranks for :class:`TorchDistributed`. Every check compares with a dense float64 reference
computed here from the kernel network itself (``U = f(x̃)`` row by row, the M×M kernel matrix of
the exact GP), never with the other policy's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from spawned_ranks import run_on_ranks
from torch import nn

from gpex_gpytorch import ANNMatchingELBO, CachedDeepKernel, GPEXModel
from gpex_gpytorch.distributed import TorchDistributed
from gpex_gpytorch.kernels import Sharding, SingleProcess

H, D, M, IN, N = 2, 3, 13, 5, 6  # M not a multiple of 2 or 3: uneven shards
FRESH = torch.tensor([12, 0, 7, 3, 5])
REFRESH = torch.tensor([1, 4, 6, 9, 11, 2])
NOISE = 0.3


def _problem() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    return {
        "net": nn.Sequential(nn.Linear(IN, 8), nn.Tanh(), nn.Linear(8, H * D)).double(),
        "inducing": torch.randn(M, IN, dtype=torch.float64, generator=generator),
        "values": torch.randn(M, H, dtype=torch.float64, generator=generator),
        "x": torch.randn(N, IN, dtype=torch.float64, generator=generator),
        "target": torch.randn(N, H, dtype=torch.float64, generator=generator),
        "queries": torch.randn(4, IN, dtype=torch.float64, generator=generator),
        "shift": torch.randn(H * D, dtype=torch.float64, generator=generator),
    }


def cache_scenario(sharding: Sharding) -> dict[str, Any]:
    """Build, fill, step and refresh a cache under ``sharding``; return what the checks compare."""
    problem = _problem()
    kernel = CachedDeepKernel(problem["net"], M, H, D, embedding_dtype=torch.float64, sharding=sharding)
    kernel.fill(problem["inducing"], progress=False)
    out: dict[str, Any] = {"filled_gram": kernel.gram.clone(), "rows": (kernel.shard_start, kernel.shard_stop)}
    model = GPEXModel(kernel, problem["values"], noise=NOISE)
    out["cross"], out["values_sq"] = kernel.cross.clone(), kernel.values_sq.clone()
    out["local_embeddings"] = kernel.embeddings.clone()
    with torch.no_grad():
        out["mean"], out["variance"] = model.predict(problem["queries"])
    # One step's statistics with fresh rows: with gradient, summed over the processes.
    model.train()
    local = sharding.local_batch(N)
    fresh = kernel.local_part(FRESH)
    output = model(problem["x"][local], fresh_indices=fresh, fresh_inputs=problem["inducing"][fresh])
    loss = -ANNMatchingELBO(None, model, num_data=50)(output, problem["target"][local])
    loss.backward()
    out["loss"] = sharding.average_gradients(loss, []).item()
    # The network moves; a refresh must bring G and b to the products over the new rows.
    with torch.no_grad():
        problem["net"][2].bias.add_(problem["shift"])
    rows = kernel.local_part(REFRESH)
    out["staleness"] = kernel.staleness(rows, problem["inducing"][rows])
    kernel.refresh(rows, problem["inducing"][rows])
    out["refreshed_gram"], out["refreshed_cross"] = kernel.gram.clone(), kernel.cross.clone()
    out["drift"] = kernel.gram_drift()
    return out


def _reference() -> dict[str, Any]:
    """Dense float64 answers, row by row from the kernel network (no cache, no D×D identity)."""
    problem = _problem()
    # The cache stores inducing values in float32 (torch's default dtype): the reference uses those.
    net, inducing, values = problem["net"], problem["inducing"], problem["values"].float().double()
    with torch.no_grad():
        u = torch.stack([net(row[None])[0].reshape(H, D) for row in inducing], 1)  # shape: (H, M, D)
        q = net(problem["queries"]).reshape(-1, H, D).transpose(0, 1)  # shape: (H, Q, D)
        ref: dict[str, Any] = {"gram": u.mT @ u, "cross": torch.einsum("hmd,mh->hd", u, values)}
        ref["values_sq"] = values.square().sum(0)
        # The exact GP with kernel f(x)ᵀf(x') and noise σ² on the M inducing values, per head.
        k_uu = u @ u.mT + NOISE * torch.eye(M, dtype=torch.float64)  # shape: (H, M, M)
        k_qu = q @ u.mT  # shape: (H, Q, M)
        ref["mean"] = (k_qu @ torch.linalg.solve(k_uu, values.T.unsqueeze(-1))).squeeze(-1).T
        prior = (q * q).sum(-1)
        ref["variance"] = (prior - (k_qu * torch.linalg.solve(k_uu, k_qu.mT).mT).sum(-1)).T
        net[2].bias.add_(problem["shift"])
        new = torch.stack([net(row[None])[0].reshape(H, D) for row in inducing], 1)
        ref["staleness"] = float((u[:, REFRESH] - new[:, REFRESH]).norm() / new[:, REFRESH].norm())
        mixed = u.clone()
        mixed[:, REFRESH] = new[:, REFRESH]
        ref["refreshed_gram"] = mixed.mT @ mixed
        ref["refreshed_cross"] = torch.einsum("hmd,mh->hd", mixed, values)
        ref["u"] = u
    return ref


class ShardingPolicyChecks:
    """Checks every policy must pass; subclasses provide the ``results`` fixture (one dict per process)."""

    world: int

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls) -> dict[str, Any]:
        return _reference()

    def test_every_row_is_held_by_exactly_one_process(self, results: list[dict]) -> None:
        assert len(results) == self.world
        bounds = [r["rows"] for r in results]
        assert bounds[0][0] == 0 and bounds[-1][1] == M
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))

    def test_each_process_holds_the_dense_embeddings_of_its_rows(self, results: list[dict], reference: dict) -> None:
        for r in results:
            start, stop = r["rows"]
            torch.testing.assert_close(r["local_embeddings"], reference["u"][:, start:stop], rtol=1e-12, atol=1e-12)

    def test_statistics_after_fill_are_the_dense_products_in_every_process(
        self, results: list[dict], reference: dict
    ) -> None:
        for r in results:
            torch.testing.assert_close(r["filled_gram"], reference["gram"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(r["cross"], reference["cross"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(r["values_sq"], reference["values_sq"], rtol=1e-12, atol=1e-12)

    def test_posterior_is_the_exact_gp_on_the_inducing_values(self, results: list[dict], reference: dict) -> None:
        for r in results:
            torch.testing.assert_close(r["mean"].double(), reference["mean"], rtol=1e-9, atol=1e-10)
            # Eq. 3's variance is σ² f(x)ᵀ(G+σ²I)⁻¹f(x); the exact GP's k(x,x) - k_xU K⁻¹ k_Ux equals it.
            torch.testing.assert_close(r["variance"].double(), reference["variance"], rtol=1e-8, atol=1e-10)

    def test_refresh_brings_the_statistics_to_the_products_over_the_new_rows(
        self, results: list[dict], reference: dict
    ) -> None:
        for r in results:
            torch.testing.assert_close(r["refreshed_gram"], reference["refreshed_gram"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(r["refreshed_cross"], reference["refreshed_cross"], rtol=1e-12, atol=1e-12)
            assert r["drift"] < 1e-13

    def test_staleness_is_that_of_the_whole_sample(self, results: list[dict], reference: dict) -> None:
        for r in results:
            assert r["staleness"] == pytest.approx(reference["staleness"], rel=1e-12)

    def test_every_process_reports_the_same_loss(self, results: list[dict]) -> None:
        losses = [r["loss"] for r in results]
        assert all(loss == pytest.approx(losses[0], rel=1e-12) for loss in losses)


class TestSingleProcess(ShardingPolicyChecks):
    world = 1

    @pytest.fixture(scope="class")
    @classmethod
    def results(cls) -> list[dict]:
        return [cache_scenario(SingleProcess())]


# ---------------------------------------------------------------------- spawned gloo ranks
def _policy_scenario(rank: int, world: int, folder: Path) -> dict[str, Any]:
    return cache_scenario(TorchDistributed())


class TestTorchDistributedOnThreeRanks(ShardingPolicyChecks):
    world = 3

    @pytest.fixture(scope="class")
    @classmethod
    def results(cls, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
        return run_on_ranks("policy", _policy_scenario, cls.world, tmp_path_factory.mktemp("policy"), deadline_s=90.0)


def test_the_single_process_policy_reduces_nothing() -> None:
    parts = [torch.ones(2, 2), torch.zeros(3)]
    policy = SingleProcess()
    assert policy.sum(parts, "x") is parts and policy.differentiable_sum(parts, "x") is parts
    assert policy.local_batch(10) == slice(0, 10)
    assert (policy.rank, policy.world_size, policy.is_main) == (0, 1, True)
