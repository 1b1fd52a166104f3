"""Nearest-neighbour explanations equal brute force, for every similarity metric."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gpex_gpytorch.explain import (
    SIMILARITY_METRICS,
    HubnessWarning,
    StaleCacheWarning,
    check_cache_fresh,
    hubness,
    nearest_neighbours,
)
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel


def _model(m: int = 300, h: int = 4, d: int = 5, seed: int = 0) -> GPEXModel:
    torch.manual_seed(seed)
    kernel = CachedDeepKernel(nn.Linear(6, h * d), m, h, d)
    kernel.fill(torch.randn(m, 6), progress=False)
    return GPEXModel(kernel, torch.randn(m, h))


def _brute_force_scores(model: GPEXModel, query: torch.Tensor, head: int, metric: str) -> torch.Tensor:
    """Every inducing row's score, in float64, straight from the definitions."""
    u = model.covar_module.embeddings[head].double()  # (M, D)
    q = query.double()
    if metric == "kernel":
        return u @ q
    if metric == "correlation":
        return (u @ q) / (u.norm(dim=1) * q.norm())
    if metric == "distance":
        return -torch.cdist(q[None], u)[0]
    # contribution: k(x, x̃_m) α_m with α = (U Uᵀ + σ² I_M)⁻¹ v, solved densely (M × M).
    noise = float(model.noise)
    v = model.covar_module.inducing_values[:, head].double()
    alpha = torch.linalg.solve(u @ u.T + noise * torch.eye(u.shape[0], dtype=torch.float64), v)
    return (u @ q) * alpha


@pytest.mark.parametrize("metric", SIMILARITY_METRICS)
@pytest.mark.parametrize(("chunk_size", "query_batch_size"), [(7, 2), (64, 1024), (10_000, 4)])
@pytest.mark.parametrize("heads", ["predicted", 2, "tensor"])
def test_equals_brute_force(metric: str, chunk_size: int, query_batch_size: int, heads: object) -> None:
    model = _model()
    x = torch.randn(9, 6)
    if heads == "tensor":
        heads = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3])
    result = nearest_neighbours(
        model, x, k=10, heads=heads, metric=metric, chunk_size=chunk_size, query_batch_size=query_batch_size
    )  # type: ignore[arg-type]
    mean, variance = model.predict(x)
    if isinstance(heads, torch.Tensor):
        chosen = heads
    else:
        chosen = mean.argmax(1) if heads == "predicted" else torch.full((9,), 2)
    with torch.no_grad():
        queries = model.covar_module.embed(x)
    assert result.metric == metric
    for i in range(9):
        h = int(chosen[i])
        expected_sim, expected_idx = _brute_force_scores(model, queries[h, i], h, metric).topk(10)
        assert torch.equal(result.indices[i], expected_idx)
        torch.testing.assert_close(result.similarities[i].double(), expected_sim, rtol=1e-5, atol=1e-6)
        kernel_values = model.covar_module.embeddings[h, expected_idx] @ queries[h, i]
        torch.testing.assert_close(result.kernel_values[i], kernel_values, rtol=1e-5, atol=1e-6)
        assert int(result.heads[i]) == h
        torch.testing.assert_close(result.mean[i], mean[i, h])
        torch.testing.assert_close(result.variance[i], variance[i, h])


def test_correlation_is_invariant_to_row_norms_and_kernel_is_not() -> None:
    """Scaling one inducing row up makes it everyone's raw-kernel neighbour, not a correlation one."""
    model = _model(m=50, h=1, d=5)
    kernel = model.covar_module
    x = torch.randn(40, 6)
    before = nearest_neighbours(model, x, k=1, heads=0, metric="correlation", hub_warning=None).indices
    with torch.no_grad():
        kernel.embeddings[0, 7] *= 1e3
        kernel.recompute_statistics()
    after = nearest_neighbours(model, x, k=1, heads=0, metric="correlation", hub_warning=None).indices
    assert torch.equal(before, after)
    with pytest.warns(HubnessWarning, match="training instance 7"):
        raw = nearest_neighbours(model, x, k=1, heads=0, metric="kernel").indices
    # Row 7 wins for every query whose embedding points its way (about half of them).
    assert 10 < int((raw[:, 0] == 7).sum()) < 40


def test_hubness_statistics_by_hand() -> None:
    indices = torch.tensor([[3, 1, 2], [3, 2, 2], [5, 3, 0], [3, 4, 1]])
    stats = hubness(indices)
    assert stats.num_queries == 4
    assert stats.distinct_top1 == 2  # 3 and 5
    assert stats.distinct == 6  # 0..5
    assert stats.max_occurrence == 4  # instance 3 is in every list
    assert stats.max_top1_share == 0.75 and stats.hub == 3


def test_no_hubness_warning_for_spread_neighbours() -> None:
    model = _model(m=400, h=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HubnessWarning)
        found = nearest_neighbours(model, torch.randn(60, 6), k=5)
    assert found.hubness().max_top1_share <= 0.1


def test_stale_cache_is_detected_and_fill_cures_it() -> None:
    model = _model(m=100, h=2)
    kernel = model.covar_module
    inducing = torch.randn(100, 6)
    kernel.fill(inducing, progress=False)
    assert check_cache_fresh(model, inducing) < 1e-6
    with torch.no_grad():
        for parameter in kernel.feature_extractor.parameters():  # f ← 1.5 f: the cache does not follow
            parameter.mul_(1.5)
    x = torch.randn(3, 6)
    with pytest.warns(StaleCacheWarning, match="fill"):
        nearest_neighbours(model, x, k=2, inducing_inputs=inducing)
    # ‖U − 1.5 U‖ / ‖1.5 U‖ = 1/3 exactly.
    assert check_cache_fresh(model, inducing, tolerance=1.0) == pytest.approx(1 / 3, rel=1e-5)
    kernel.fill(inducing, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCacheWarning)
        found = nearest_neighbours(model, x, k=2, inducing_inputs=inducing)
    # Every similarity shown is the current network's kernel value k(x, x̃) = f(x)ᵀ f(x̃).
    with torch.no_grad():
        fx, fz = kernel.embed(x), kernel.embed(inducing)
    for i in range(3):
        h = int(found.heads[i])
        torch.testing.assert_close(found.kernel_values[i], fz[h, found.indices[i]] @ fx[h, i])


def test_bad_input_is_named() -> None:
    model = _model(m=20)
    x = torch.randn(3, 6)
    cases = [
        ({"k": 21}, ValueError, "k"),
        ({"k": 0}, ValueError, "k"),
        ({"k": 2.0}, ValueError, "k"),
        ({"heads": 4}, ValueError, "heads"),
        ({"heads": "largest"}, ValueError, "heads"),
        ({"heads": torch.tensor([0.0, 1.0, 1.0])}, TypeError, "heads.*integer"),
        ({"metric": "cosine"}, ValueError, "metric: expected one of 'correlation', 'distance', 'kernel'"),
        ({"chunk_size": -1}, ValueError, "chunk_size"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 1.5}, ValueError, "chunk_size"),
        ({"query_batch_size": 0}, ValueError, "query_batch_size"),
        ({"hub_warning": 1.5}, ValueError, "hub_warning"),
        ({"inducing_inputs": torch.randn(19, 6)}, ValueError, "inducing_inputs"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            nearest_neighbours(model, x, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inputs"):
        nearest_neighbours(model, torch.zeros(0, 6))


def test_exact_at_a_large_inducing_set_in_small_chunks() -> None:
    """M = 300,000 scored in chunks of 50,000 and query batches of 2 equals one dense brute force."""
    torch.manual_seed(3)
    m = 300_000
    kernel = CachedDeepKernel(nn.Linear(3, 2 * 4), m, 2, 4)
    kernel.fill(torch.randn(m, 3), batch_size=65536, progress=False)
    model = GPEXModel(kernel, torch.randn(m, 2))
    x = torch.randn(5, 3)
    with torch.no_grad():
        queries = kernel.embed(x)
    for metric in ("correlation", "distance", "kernel"):
        found = nearest_neighbours(
            model, x, k=3, heads=1, metric=metric, chunk_size=50_000, query_batch_size=2, hub_warning=None
        )
        for i in range(5):
            expected = _brute_force_scores(model, queries[1, i], 1, metric).topk(3)
            assert torch.equal(found.indices[i], expected.indices)
