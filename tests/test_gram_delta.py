"""GramDelta: ``(FᵀF − OᵀO, (F − O)ᵀv)`` in one product, with a one-product backward.

References are the plain float64 expressions (autograd through ``FᵀF − OᵀO``); gradients are also
checked by finite differences (``gradcheck``).
"""

from __future__ import annotations

import pytest
import torch

from gpex_gpytorch.functions.gram_delta import GramDelta
from gpex_gpytorch.utils import NonFiniteError
from gpex_gpytorch.utils.cholesky import capacitance_cholesky

F64 = torch.float64


def _rows(seed: int, heads: int = 3, rows: int = 7, dim: int = 4, dtype: torch.dtype = F64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(heads, rows, dim, generator=gen, dtype=F64).to(dtype)


def _plain(new: torch.Tensor, old: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fresh, stale = new.to(F64), old.to(F64)
    return fresh.mT @ fresh - stale.mT @ stale, ((fresh - stale).mT @ values.to(F64).unsqueeze(-1)).squeeze(-1)


def test_values_match_the_plain_expression_and_are_symmetric() -> None:
    new, old, values = _rows(0), _rows(1), _rows(2)[..., 0]
    gram, cross = GramDelta.apply(new, old, values, F64)
    ref_gram, ref_cross = _plain(new, old, values)
    scale = (new.square().sum((-2, -1)) + old.square().sum((-2, -1))).max()
    assert (gram - ref_gram).abs().max() <= 16 * torch.finfo(F64).eps * scale
    assert (cross - ref_cross).abs().max() <= 16 * torch.finfo(F64).eps * scale
    assert torch.equal(gram, gram.mT)  # exactly symmetric


def test_float32_rows_unchanged_rows_cancel_exactly() -> None:
    # A row kept as it was (a refresh of an up-to-date row) contributes exactly nothing, however large:
    # the direct FᵀF − OᵀO would cancel two 1e8-sized terms and leave their float64 rounding behind.
    new = _rows(3, dtype=torch.float32)
    new[:, 0] *= 1e4
    old = _rows(4, dtype=torch.float32) * 1e-3
    old[:, 0] = new[:, 0]
    values = _rows(5, dtype=torch.float32)[..., 0]
    gram, cross = GramDelta.apply(new, old, values, F64)
    ref_gram, ref_cross = _plain(new[:, 1:], old[:, 1:], values[:, 1:])  # the changed rows only
    assert gram.dtype == cross.dtype == F64
    assert (gram - ref_gram).abs().max() <= 16 * torch.finfo(F64).eps * ref_gram.abs().max()
    assert (cross - ref_cross).abs().max() <= 16 * torch.finfo(F64).eps * ref_cross.abs().max()


def test_gradient_matches_autograd_through_the_plain_expression() -> None:
    new, old, values = _rows(6).requires_grad_(), _rows(7), _rows(8)[..., 0]
    gen = torch.Generator().manual_seed(9)
    weight_g, weight_c = torch.randn(3, 4, 4, generator=gen, dtype=F64), torch.randn(3, 4, generator=gen, dtype=F64)
    gram, cross = GramDelta.apply(new, old, values, F64)
    (grad,) = torch.autograd.grad((gram * weight_g).sum() + (cross * weight_c).sum(), new)
    plain = new.detach().clone().requires_grad_()
    ref_gram, ref_cross = _plain(plain, old, values)
    (ref,) = torch.autograd.grad((ref_gram * weight_g).sum() + (ref_cross * weight_c).sum(), plain)
    assert torch.allclose(grad, ref, rtol=1e-12, atol=1e-12 * ref.abs().max().item())


@pytest.mark.parametrize("with_values", [True, False])
def test_gradcheck(with_values: bool) -> None:
    new, old = _rows(10).requires_grad_(), _rows(11)
    values = _rows(12)[..., 0] if with_values else None

    def fn(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gram, cross = GramDelta.apply(rows, old, values, F64)
        return (gram,) if cross is None else (gram, cross)

    assert torch.autograd.gradcheck(fn, (new,))
    # each output alone (the other's gradient is None)
    assert torch.autograd.gradcheck(lambda rows: fn(rows)[0], (new,))
    if with_values:
        assert torch.autograd.gradcheck(lambda rows: fn(rows)[1], (new,))


def test_no_values_gives_no_cross_and_float32_gradients_stay_float32() -> None:
    new = _rows(13, dtype=torch.float32).requires_grad_()
    gram, cross = GramDelta.apply(new, _rows(14, dtype=torch.float32), None, F64)
    assert cross is None
    (grad,) = torch.autograd.grad(gram.sum(), new)
    assert grad.dtype == torch.float32
    assert torch.allclose(grad.double(), 2 * new.detach().double() @ torch.ones(3, 4, 4, dtype=F64), rtol=1e-6)


def test_capacitance_cholesky_accepts_finite_entries_whose_sum_overflows() -> None:
    # The fast finiteness check sums G; an overflowing sum of finite entries is not a NaN.
    gram = torch.diag(torch.tensor([1e308, 1e308, 1.0], dtype=F64))
    chol = capacitance_cholesky(gram, torch.ones(1, dtype=F64))
    assert torch.allclose(chol, torch.linalg.cholesky(gram + torch.eye(3, dtype=F64)))
    gram[2, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="gram"):
        capacitance_cholesky(gram, torch.ones(1, dtype=F64))


def test_float32_rows_get_their_gradient_computed_in_float32_to_float32_roundoff() -> None:
    # The backward runs in the rows' dtype (the values need float64, the gradient does not): it must
    # still be the float64 gradient to a few float32 roundings, for both outputs.
    new = _rows(15, heads=4, rows=300, dim=16, dtype=torch.float32).requires_grad_()
    old, values = _rows(16, heads=4, rows=300, dim=16, dtype=torch.float32), _rows(17, heads=4, rows=300)[..., 0]
    gen = torch.Generator().manual_seed(18)
    weight_g, weight_c = torch.randn(4, 16, 16, generator=gen, dtype=F64), torch.randn(4, 16, generator=gen, dtype=F64)
    gram, cross = GramDelta.apply(new, old, values, F64)
    (grad,) = torch.autograd.grad((gram * weight_g).sum() + (cross * weight_c).sum(), new)
    plain = new.detach().double().requires_grad_()
    ref_gram, ref_cross = _plain(plain, old, values)
    (ref,) = torch.autograd.grad((ref_gram * weight_g).sum() + (ref_cross * weight_c).sum(), plain)
    assert grad.dtype == torch.float32
    error = (grad.double() - ref).abs().max() / ref.abs().max()
    assert error <= 16 * torch.finfo(torch.float32).eps
