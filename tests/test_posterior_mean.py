"""PosteriorMean: ``μ = u w`` with a one-pass feature gradient, against autograd through the plain product."""

from __future__ import annotations

import pytest
import torch

from gpex_gpytorch.functions.posterior_mean import PosteriorMean

F64 = torch.float64


def _tensor(seed: int, *shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def test_gradcheck_in_float64() -> None:
    features, weights = _tensor(0, 3, 5, 4).requires_grad_(), _tensor(1, 3, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, w: PosteriorMean.apply(f, f.detach(), w), (features, weights))


@pytest.mark.parametrize("features_dtype", [torch.float32, F64])
def test_value_and_gradients_match_the_plain_product(features_dtype: torch.dtype) -> None:
    features = _tensor(2, 3, 6, 4, dtype=features_dtype).requires_grad_()
    weights = _tensor(3, 3, 4).requires_grad_()
    grad_out = _tensor(4, 3, 6)
    mean = PosteriorMean.apply(features, features.detach().to(F64), weights)
    grads = torch.autograd.grad(mean, (features, weights), grad_out)
    plain = (features.to(F64) @ weights.unsqueeze(-1)).squeeze(-1)
    ref = torch.autograd.grad(plain, (features, weights), grad_out)
    assert mean.dtype == F64
    assert torch.allclose(mean, plain, rtol=1e-14, atol=0)
    assert grads[0].dtype == features_dtype
    # ∂μ/∂f is a single product per entry, rounded the same way: equal, not just close.
    assert torch.equal(grads[0], ref[0])
    assert torch.allclose(grads[1], ref[1], rtol=1e-13, atol=1e-13 * ref[1].abs().max().item())


def test_weights_only_gradient() -> None:
    features, weights = _tensor(5, 2, 3, 4), _tensor(6, 2, 4).requires_grad_()
    (grad,) = torch.autograd.grad(PosteriorMean.apply(features, features, weights).sum(), weights)
    assert torch.allclose(grad, features.sum(-2))
