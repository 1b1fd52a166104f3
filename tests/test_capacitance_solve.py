"""CapacitanceSolve: ``w = (G + sI)⁻¹b`` with a direct backward, against autograd through a dense solve.

``G`` is parametrised as a symmetric matrix (``sym(X) + c I``): the gradient with respect to a
symmetric argument is defined up to its antisymmetric part, which both sides drop.
"""

from __future__ import annotations

import torch

from gpex_gpytorch.functions.capacitance_solve import CapacitanceSolve

F64 = torch.float64


def _inputs(seed: int, heads: int = 3, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(heads, dim, dim, generator=gen, dtype=F64)
    b = torch.randn(heads, dim, generator=gen, dtype=F64)
    s = torch.rand(heads, 1, generator=gen, dtype=F64) + 0.5
    return x, b, s


def _gram(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x + x.mT) + x.size(-1) * torch.eye(x.size(-1), dtype=x.dtype)


def _weights(x: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    gram = _gram(x)
    chol = torch.linalg.cholesky(gram + s.unsqueeze(-1) * torch.eye(gram.size(-1), dtype=gram.dtype))
    return CapacitanceSolve.apply(chol.detach(), gram, b, s)


def test_value_is_the_dense_solve() -> None:
    x, b, s = _inputs(0)
    dense = torch.linalg.solve(_gram(x) + s.unsqueeze(-1) * torch.eye(5, dtype=F64), b.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(_weights(x, b, s), dense, rtol=1e-12, atol=1e-14)


def test_gradcheck() -> None:
    x, b, s = (t.requires_grad_() for t in _inputs(1))
    assert torch.autograd.gradcheck(_weights, (x, b, s))


def test_gradients_match_autograd_through_cholesky_and_cholesky_solve() -> None:
    x, b, s = (t.requires_grad_() for t in _inputs(2))
    grad_out = torch.randn(3, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    ours = torch.autograd.grad(_weights(x, b, s), (x, b, s), grad_out)
    gram = _gram(x)
    chol = torch.linalg.cholesky(gram + s.unsqueeze(-1) * torch.eye(5, dtype=F64))
    plain = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)  # the expression it replaces
    ref = torch.autograd.grad(plain, (x, b, s), grad_out)
    for mine, theirs in zip(ours, ref, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-12, atol=1e-13 * theirs.abs().max().item())
