"""CachedDeepKernel: the cache, its incremental statistics, and its use as a GPyTorch kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpex_gpytorch.kernels import CachedDeepKernel

H, D, M, IN = 3, 4, 40, 5


def _kernel(m: int = M, dtype: torch.dtype = torch.float64, **kwargs: object) -> tuple[CachedDeepKernel, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(IN, 16), nn.Tanh(), nn.Linear(16, H * D)).to(dtype)
    kernel = CachedDeepKernel(net, m, H, D, embedding_dtype=kwargs.pop("embedding_dtype", dtype), **kwargs)
    inputs = torch.randn(m, IN, dtype=dtype)
    kernel.fill(inputs, batch_size=7, progress=False)
    return kernel, inputs


def _dense_embeddings(kernel: CachedDeepKernel, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return kernel.feature_extractor(inputs).reshape(-1, H, D).transpose(0, 1)


def test_fill_computes_every_row_and_exact_statistics() -> None:
    kernel, inputs = _kernel()
    u = _dense_embeddings(kernel, inputs)
    torch.testing.assert_close(kernel.embeddings, u)
    torch.testing.assert_close(kernel.gram, u.mT @ u)
    values = torch.randn(M, H, dtype=torch.float64)
    kernel.set_inducing_values(values)
    torch.testing.assert_close(kernel.cross, torch.einsum("hmd,mh->hd", u, values.float().double()))


def test_fill_from_an_iterable_of_batches() -> None:
    kernel, inputs = _kernel()
    other, _ = _kernel()
    other.embeddings.zero_()
    other.fill(iter(inputs.split(9)), progress=False)
    torch.testing.assert_close(other.embeddings, kernel.embeddings)
    with pytest.raises(ValueError, match="inputs"):
        other.fill(iter(inputs[:-1].split(9)), progress=False)
    torch.testing.assert_close(other.gram, other.embeddings.mT @ other.embeddings)  # still consistent


@pytest.mark.parametrize("staged", [True, False])
def test_fill_failure_leaves_a_consistent_cache(staged: bool) -> None:
    """Staged: nothing changes. In place: rows before the failing batch are new, the rest old; G matches."""
    kernel, inputs = _kernel()
    old = kernel.embeddings.clone()
    with torch.no_grad():
        for parameter in kernel.feature_extractor.parameters():
            parameter.mul_(2.0)
    bad = inputs.clone()
    bad[20] = float("nan")
    with pytest.raises(ValueError, match="inducing rows"):
        kernel.fill(bad, batch_size=9, progress=False, staged=staged)
    if staged:
        assert torch.equal(kernel.embeddings, old)
    else:
        new = _dense_embeddings(kernel, inputs)  # the changed network's embeddings
        torch.testing.assert_close(kernel.embeddings[:, :18], new[:, :18])  # batches [0:9] and [9:18]
        assert not torch.allclose(new[:, :18], old[:, :18])
        assert torch.equal(kernel.embeddings[:, 18:], old[:, 18:])
    torch.testing.assert_close(kernel.gram, kernel.embeddings.mT.double() @ kernel.embeddings.double())


def test_refresh_updates_rows_and_statistics_incrementally() -> None:
    kernel, inputs = _kernel()
    kernel.set_inducing_values(torch.randn(M, H, dtype=torch.float64))
    with torch.no_grad():
        kernel.feature_extractor[0].weight.mul_(1.5)  # the network trains: the cache goes stale
    idx = torch.tensor([3, 0, 17])
    assert kernel.staleness(idx, inputs[idx]) > 0.01
    kernel.refresh(idx, inputs[idx])
    assert kernel.staleness(idx, inputs[idx]) == 0.0
    u = kernel.embeddings
    torch.testing.assert_close(kernel.embeddings[:, idx], _dense_embeddings(kernel, inputs[idx]))
    torch.testing.assert_close(kernel.gram, u.mT @ u)
    torch.testing.assert_close(kernel.cross, torch.einsum("hmd,mh->hd", u, kernel.inducing_values.double()))


@pytest.mark.parametrize("stats_dtype, bound", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_gram_drift_after_thousands_of_refreshes(stats_dtype: torch.dtype, bound: float) -> None:
    """Measured: float64 accumulation ~1e-15 relative after 5,000 refreshes; float32 ~1e-6."""
    torch.manual_seed(1)
    net = nn.Linear(IN, H * D)
    kernel = CachedDeepKernel(net, 500, H, D, statistics_dtype=stats_dtype)
    inputs = torch.randn(500, IN)
    kernel.fill(inputs, progress=False)
    kernel.set_inducing_values(torch.randn(500, H))
    generator = torch.Generator().manual_seed(0)
    for _ in range(5000):
        with torch.no_grad():
            net.weight.add_(1e-3 * torch.randn(net.weight.shape, generator=generator))
        idx = torch.randperm(500, generator=generator)[:16]
        kernel.refresh(idx, inputs[idx])
    assert kernel.gram_drift() < bound


def test_bfloat16_storage_keeps_statistics_consistent_with_what_is_stored() -> None:
    kernel, inputs = _kernel(dtype=torch.float32, embedding_dtype=torch.bfloat16)
    assert kernel.embeddings.dtype == torch.bfloat16
    kernel.refresh(torch.tensor([1, 2]), inputs[1:3] * 2)
    u = kernel.embeddings.double()
    torch.testing.assert_close(kernel.gram, u.mT @ u)


def test_statistics_with_fresh_rows_carry_gradient_to_the_network() -> None:
    kernel, inputs = _kernel()
    kernel.set_inducing_values(torch.randn(M, H, dtype=torch.float64))
    idx = torch.tensor([5, 6])
    stats = kernel.statistics(idx, inputs[idx] + 0.1)
    u = kernel.embeddings.clone()
    u[:, idx] = kernel.embed(inputs[idx] + 0.1)
    torch.testing.assert_close(stats.gram, u.mT @ u)
    stats.gram.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in kernel.feature_extractor.parameters())
    # The cache itself is untouched by a forward with fresh rows.
    torch.testing.assert_close(kernel.embeddings, _dense_embeddings(kernel, inputs))


def test_used_as_a_kernel_it_is_a_lazy_low_rank_operator_per_head() -> None:
    kernel, inputs = _kernel()
    x1, x2 = inputs[:6], inputs[6:10]
    f1, f2 = _dense_embeddings(kernel, x1), _dense_embeddings(kernel, x2)
    op = kernel(x1)
    assert op.shape == (H, 6, 6)
    torch.testing.assert_close(op.to_dense(), f1 @ f1.mT)
    torch.testing.assert_close(kernel(x1, x2).to_dense(), f1 @ f2.mT)
    torch.testing.assert_close(kernel(x1, diag=True), (f1 * f1).sum(-1))


def test_state_dict_round_trip_and_to() -> None:
    kernel, _ = _kernel()
    kernel.set_inducing_values(torch.randn(M, H))
    state = kernel.state_dict()
    assert {"embeddings", "gram", "cross", "inducing_values", "values_sq", "values_set"} <= set(state)
    fresh = CachedDeepKernel(
        nn.Sequential(nn.Linear(IN, 16), nn.Tanh(), nn.Linear(16, H * D)).double(),
        M,
        H,
        D,
        embedding_dtype=torch.float64,
    )
    fresh.load_state_dict(state)
    for name in ("embeddings", "gram", "cross", "inducing_values"):
        torch.testing.assert_close(getattr(fresh, name), getattr(kernel, name))
    assert fresh.has_inducing_values
    moved = kernel.to(torch.device("meta"))
    assert moved.embeddings.device.type == "meta" and moved.gram.device.type == "meta"


def test_feature_extractor_output_of_flat_and_3d_shapes() -> None:
    class ThreeD(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, : H * D].reshape(-1, H, D)

    kernel = CachedDeepKernel(ThreeD(), 4, H, D)
    x = torch.randn(2, H * D + 1)
    torch.testing.assert_close(kernel.embed(x), x[:, : H * D].reshape(2, H, D).transpose(0, 1))


def test_bad_input_is_named_and_leaves_state_untouched() -> None:
    kernel, inputs = _kernel()
    kernel.set_inducing_values(torch.randn(M, H, dtype=torch.float64))
    before = {k: v.clone() for k, v in kernel.state_dict().items()}
    with pytest.raises(ValueError, match="indices"):
        kernel.refresh(torch.tensor([0, M]), inputs[:2])
    with pytest.raises(ValueError, match="indices"):
        kernel.refresh(torch.tensor([1, 1]), inputs[:2])
    with pytest.raises(TypeError, match="indices"):
        kernel.refresh(torch.tensor([1.0]), inputs[:1])
    with pytest.raises(ValueError, match="inputs"):
        kernel.refresh(torch.tensor([0, 1]), inputs[:3])
    with pytest.raises(ValueError, match="inputs"):
        kernel.refresh(torch.tensor([0]), torch.full((1, IN), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="inducing_values"):
        kernel.set_inducing_values(torch.full((M, H), float("nan")))
    with pytest.raises(ValueError, match="inducing_values"):
        kernel.set_inducing_values(torch.zeros(M, H + 1))
    with pytest.raises(ValueError, match="fresh_inputs"):
        kernel.statistics(fresh_indices=torch.tensor([0]))
    for key, value in kernel.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="num_inducing"):
        CachedDeepKernel(nn.Identity(), 0, H, D)
    with pytest.raises(TypeError, match="feature_extractor"):
        CachedDeepKernel(lambda x: x, 3, H, D)  # type: ignore[arg-type]
    bad_width = CachedDeepKernel(nn.Linear(IN, H * D + 1).double(), M, H, D)
    with pytest.raises(ValueError, match="feature_extractor"):
        bad_width.embed(inputs)


def test_a_cache_that_cannot_fit_is_refused_before_allocation() -> None:
    with pytest.raises(MemoryError, match="GiB"):
        CachedDeepKernel(nn.Identity(), 10**12, 10, 64)


def test_the_cache_is_row_major_and_head_major_checkpoints_load_into_it() -> None:
    """Rows are contiguous (one read per row in a step); a state_dict saved head-major loads unchanged."""
    torch.manual_seed(4)
    net = nn.Linear(IN, H * D)
    inputs = torch.randn(40, IN)
    kernel = CachedDeepKernel(net, 40, H, D)
    kernel.fill(inputs, progress=False)
    assert kernel.embeddings.shape == (H, 40, D) and kernel.embeddings.transpose(0, 1).is_contiguous()
    # What an earlier version saved: the same values in a contiguous (H, M, D) tensor.
    state = {k: v.contiguous() for k, v in kernel.state_dict().items()}
    assert state["embeddings"].is_contiguous() and not kernel.embeddings.is_contiguous()
    other = CachedDeepKernel(nn.Linear(IN, H * D), 40, H, D)
    other.load_state_dict(state)
    assert other.embeddings.transpose(0, 1).is_contiguous()
    assert torch.equal(other.embeddings, kernel.embeddings)
    # Gathers and scatters through the row-major storage address the same rows as the (H, M, D) view.
    idx = torch.tensor([3, 17, 0, 39])
    torch.testing.assert_close(other._gather(idx), kernel.embeddings[:, idx], rtol=0, atol=0)
    new = torch.randn(H, 4, D)
    other._scatter(idx, new)
    assert torch.equal(other.embeddings[:, idx], new)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(other.embeddings[:, untouched], kernel.embeddings[:, untouched])
