"""Property tests: LowRankPlusDiagonal against dense float64 linear algebra on random shapes.

Shapes cover M < D, M = D, M > D, rank-deficient roots, batch dimensions and noise from
1e-2 to 1e2 relative to a root of entries around 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpex_gpytorch.operators import LowRankPlusDiagonal

TOL = dict(rtol=1e-7, atol=1e-8)


@dataclass
class Case:
    root: torch.Tensor  # shape: (*batch, M, D)
    noise: torch.Tensor  # shape: (*batch, 1)

    @property
    def dense(self) -> torch.Tensor:  # shape: (*batch, M, M)
        eye = torch.eye(self.root.size(-2), dtype=torch.float64)
        return self.root @ self.root.mT + self.noise.unsqueeze(-1) * eye

    def leaves(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.root.detach().clone().requires_grad_(True), self.noise.detach().clone().requires_grad_(True)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    num_rows, rank = draw(st.integers(1, 12)), draw(st.integers(1, 6))
    log_noise = draw(st.floats(-2.0, 2.0))
    scale = draw(st.floats(0.1, 3.0))
    inner_rank = draw(st.integers(0, min(num_rows, rank)))  # < min(M, D): rank deficient
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):
        root = torch.randn(*batch, num_rows, rank, generator=gen, dtype=torch.float64)
    else:
        left = torch.randn(*batch, num_rows, inner_rank, generator=gen, dtype=torch.float64)
        root = left @ torch.randn(*batch, inner_rank, rank, generator=gen, dtype=torch.float64)
    noise = 10**log_noise * (0.5 + torch.rand(*batch, 1, generator=gen, dtype=torch.float64))
    return Case(scale * root, noise)


@settings(max_examples=40, deadline=None)
@given(case=cases(), num_rhs=st.integers(1, 3), with_left=st.booleans())
def test_solve_matches_dense(case: Case, num_rhs: int, with_left: bool) -> None:
    rhs = torch.randn(*case.root.shape[:-1], num_rhs, dtype=torch.float64)
    op = LowRankPlusDiagonal(case.root, case.noise)
    expected = torch.linalg.solve(case.dense, rhs)
    if with_left:
        left = torch.randn(*case.root.shape[:-2], 2, case.root.size(-2), dtype=torch.float64)
        torch.testing.assert_close(op.solve(rhs, left), left @ expected, **TOL)
    else:
        torch.testing.assert_close(op.solve(rhs), expected, **TOL)


@settings(max_examples=40, deadline=None)
@given(case=cases(), num_rhs=st.integers(1, 3), use_quad=st.booleans(), use_logdet=st.booleans())
def test_inv_quad_logdet_values_and_gradients(case: Case, num_rhs: int, use_quad: bool, use_logdet: bool) -> None:
    rhs = torch.randn(*case.root.shape[:-1], num_rhs, dtype=torch.float64)
    root, noise = case.leaves()
    rhs_ours = rhs.clone().requires_grad_(True)
    quad, logdet = LowRankPlusDiagonal(root, noise).inv_quad_logdet(rhs_ours, logdet=True, reduce_inv_quad=False)

    root_ref, noise_ref = case.leaves()
    rhs_ref = rhs.clone().requires_grad_(True)
    dense = Case(root_ref, noise_ref).dense
    quad_ref = (rhs_ref * torch.linalg.solve(dense, rhs_ref)).sum(-2)
    logdet_ref = torch.linalg.slogdet(dense)[1]
    torch.testing.assert_close(quad, quad_ref, **TOL)
    torch.testing.assert_close(logdet, logdet_ref, **TOL)

    weights = torch.randn_like(quad) if use_quad else torch.zeros_like(quad)
    weight_logdet = torch.randn_like(logdet) if use_logdet else torch.zeros_like(logdet)
    ((quad * weights).sum() + (logdet * weight_logdet).sum()).backward()
    ((quad_ref * weights).sum() + (logdet_ref * weight_logdet).sum()).backward()
    for ours, ref in ((root, root_ref), (noise, noise_ref), (rhs_ours, rhs_ref)):
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_diagonal_and_dense(case: Case) -> None:
    op = LowRankPlusDiagonal(case.root, case.noise)
    torch.testing.assert_close(op.diagonal(), case.dense.diagonal(dim1=-2, dim2=-1), **TOL)
    torch.testing.assert_close(op.to_dense(), case.dense, **TOL)


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_root_and_inverse_root_are_exact(case: Case) -> None:
    op = LowRankPlusDiagonal(case.root, case.noise)
    root = op.root_decomposition().root.to_dense()
    inv_root = op.root_inv_decomposition().root.to_dense()
    dense = case.dense
    eye = torch.eye(dense.size(-1), dtype=torch.float64).expand_as(dense)
    scale = dense.abs().amax(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(root @ root.mT / scale, dense / scale, **TOL)
    torch.testing.assert_close(root, root.mT, **TOL)  # the symmetric square root
    torch.testing.assert_close(inv_root @ inv_root.mT @ dense, eye, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(op.root_decomposition().matmul(eye), dense, **TOL)


@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_root_decomposition_gradients(case: Case) -> None:
    # The Sylvester-equation backward of the D×D square root against finite differences,
    # including rank-deficient roots and M < D where eigh's own backward would be NaN.
    root, noise = case.leaves()
    probe = torch.randn(*case.root.shape[:-1], 2, dtype=torch.float64)

    def fn(root_: torch.Tensor, noise_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        op = LowRankPlusDiagonal(root_, noise_)
        return op.root_decomposition().root.matmul(probe), op.root_inv_decomposition().root.matmul(probe)

    assert torch.autograd.gradcheck(fn, (root, noise), atol=1e-6, rtol=1e-4, fast_mode=True)


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_eigendecomposition_is_exact(case: Case) -> None:
    op = LowRankPlusDiagonal(case.root, case.noise)
    evals, evecs = op.diagonalization()
    evecs = evecs.to_dense()
    eye = torch.eye(evecs.size(-1), dtype=torch.float64).expand_as(evecs)
    torch.testing.assert_close(evecs.mT @ evecs, eye, **TOL)
    torch.testing.assert_close(evecs @ torch.diag_embed(evals) @ evecs.mT, case.dense, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(evals.sort(-1).values, torch.linalg.eigvalsh(case.dense), rtol=1e-7, atol=1e-7)
