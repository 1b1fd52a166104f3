"""``InvQuadLogdet``: the inverse quadratic form and log-determinant of ``R Rᵀ + s I`` with a hand-written backward.

The autograd function behind :meth:`gpex_gpytorch.operators.LowRankPlusDiagonal.inv_quad_logdet`
(as linear_operator's ``functions/_inv_quad_logdet.py`` is behind ``LinearOperator.inv_quad_logdet``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from ..utils.blocked_reductions import (
    batch_indices,
    blocked_gram,
    blocked_reductions,
    column_major,
    refine_inv_quad,
)
from ..utils.cholesky import capacitance_cholesky, factor_dtype

__all__ = ["InvQuadLogdet"]


def _max_cancellation(dtype: torch.dtype) -> float:
    """Largest ``yᵀy / (s · yᵀA⁻¹y)`` for which the inverse quadratic form skips its refinement pass.

    The direct form ``yᵀA⁻¹y = (yᵀy − bᵀh) / s`` cancels: its relative error is a few ``eps`` times
    that ratio (measured in float32, M = 2·10⁵, D = 64, well-conditioned roots: ≤ 4 eps · ratio).
    16 keeps float32 near 2e-6, about the error of a float32 sum of 10⁶ terms; float64 tolerates
    2²⁰ (≈ 1e-10). Lower precisions always refine.

    :param dtype: the root's dtype.
    """
    ratio = 16 * torch.finfo(torch.float32).eps / torch.finfo(dtype).eps
    return min(max(ratio, 1.0), 2.0**20)


class InvQuadLogdet(torch.autograd.Function):
    """``(diag(Yᵀ A⁻¹ Y), log|A|)`` for ``A = R Rᵀ + s I`` with a hand-written backward.

    Forward (``C = G + s I``, ``b_k = Rᵀy_k``, ``h_k = C⁻¹ b_k``)::

        log|A|     = (M − D) log s + logdet C
        y_kᵀA⁻¹y_k = (‖y_k‖² − b_kᵀh_k) / s

    ``G`` is the GEMM (:func:`blocked_gram`), ``RᵀY`` and ``‖y_k‖²`` one more pass over ``R``
    (:func:`blocked_reductions`), both with float32 partial sums over row blocks added in float64.
    The subtraction cancels by the ratio ``‖y_k‖² / (s y_kᵀA⁻¹y_k)``; when a column's ratio exceeds
    :func:`_max_cancellation` (y close to the range of ``R`` and small ``s``: high signal-to-noise),
    one more pass refines the values (:func:`refine_inv_quad`).

    Backward, with upstream weights ``g`` (log-det) and ``w`` (one per column of ``Y``); with
    ``r_k = y_k − R h_k``, ``‖r_k‖² = s (q_k − ‖h_k‖²)``::

        ∂/∂R = R (2 g C⁻¹ + (2/s) H diag(w) Hᵀ) − (2/s) Y diag(w) Hᵀ      (= R 2gC⁻¹ − (2/s) r diag(w) Hᵀ)
        ∂/∂s = g ((M − D)/s + tr C⁻¹) − Σ_k w_k ‖r_k‖² / s²
        ∂/∂Y = (2/s) r diag(w)

    The residual never exists as an M×K tensor (except for ``∂/∂Y``): the root gradient is the
    rank-K product ``Y (−(2/s) diag(w) Hᵀ)`` written once into the fresh gradient, then
    ``R @ (D×D)`` accumulated onto it by the GEMM itself. M-sized work in total: the two floor GEMMs
    and one (or, after cancellation, two) memory-bound passes over ``R`` in the forward.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        root: Tensor,  # shape: (*batch, M, D)
        noise: Tensor,  # shape: (*batch, 1)
        rhs: Tensor | None,  # shape: (*batch, M, K)
    ) -> tuple[Tensor, Tensor]:  # shape: (*batch, K), (*batch)
        ctx.set_materialize_grads(False)
        fdt = factor_dtype(root.dtype)
        num_rows, rank = root.shape[-2:]
        chol = capacitance_cholesky(
            blocked_gram(root), noise, rounding=root.dtype, source="root", context="LowRankPlusDiagonal"
        )
        s = noise.to(fdt)  # shape: (*batch, 1)
        logdet = (num_rows - rank) * s.squeeze(-1).log() + 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ctx.num_rows = num_rows

        if rhs is None:
            quad = torch.zeros(*root.shape[:-2], 0, dtype=root.dtype, device=root.device)
            ctx.save_for_backward(root, noise, chol, None, None)
            return quad, logdet.to(root.dtype)

        cross, rhs_sq = blocked_reductions(root, rhs)  # shape: (*batch, D, K), (*batch, K)
        coeffs = torch.cholesky_solve(cross, chol)  # shape: (*batch, D, K)
        quad = (rhs_sq - (cross * coeffs).sum(-2)) / s
        # False also for NaN: a quad that cancelled to ≤ 0 always gets the residual pass
        if bool((s * quad * _max_cancellation(root.dtype) >= rhs_sq).all()):
            resid_sq = s * (quad - coeffs.square().sum(-2))  # ≥ s·quad / ratio: bounded cancellation
        else:
            quad, coeffs, resid_sq = refine_inv_quad(root, rhs, s, chol, coeffs, quad)
        ctx.save_for_backward(root, noise, chol, coeffs, rhs)
        ctx.resid_sq = resid_sq
        return quad.to(root.dtype), logdet.to(root.dtype)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_quad: Tensor | None, grad_logdet: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        root, noise, chol, coeffs, rhs = ctx.saved_tensors
        need_root, need_noise, need_rhs = ctx.needs_input_grad
        dtype, fdt = root.dtype, chol.dtype
        num_rows, rank = ctx.num_rows, root.size(-1)
        s = noise.to(fdt)  # shape: (*batch, 1)
        if rhs is None:
            grad_quad = None

        core = None  # D×D factor of the root gradient
        grad_s = torch.zeros_like(s.squeeze(-1)) if need_noise else None
        if grad_logdet is not None:
            cap_inv = torch.cholesky_inverse(chol)  # shape: (*batch, D, D)
            g = grad_logdet.to(fdt)
            if need_root:
                core = (2 * g).unsqueeze(-1).unsqueeze(-1) * cap_inv
            if need_noise:
                trace = cap_inv.diagonal(dim1=-2, dim2=-1).sum(-1)
                grad_s = grad_s + g * ((num_rows - rank) / s.squeeze(-1) + trace)

        outer = None  # K×D factor of the rank-K term
        grad_rhs = None
        if grad_quad is not None:
            w = grad_quad.to(fdt)  # shape: (*batch, K)
            scaled = (2 / s).unsqueeze(-1) * (w.unsqueeze(-1) * coeffs.mT)  # (2/s) diag(w) Hᵀ, (*batch, K, D)
            if need_root:
                core = coeffs @ scaled if core is None else core + coeffs @ scaled
                outer = -scaled
            if need_noise:
                grad_s = grad_s - (w * ctx.resid_sq).sum(-1) / s.squeeze(-1).square()
            if need_rhs:
                resid = (root @ column_major(-coeffs.to(dtype))).add_(rhs)  # shape: (*batch, M, K)
                grad_rhs = resid.mul_(((2 / s) * w).to(dtype).unsqueeze(-2))

        grad_root = None
        if need_root and core is not None:
            core = core.to(dtype)
            if outer is None:
                grad_root = root @ core
            else:
                # the gradient's one M×D allocation is written by the rank-K product; the GEMM then
                # accumulates onto it (beta = 1) instead of a separate pass to add the two. For K = 1
                # a broadcast multiply, not a matmul: MKL runs k = 1 on one thread, ≈ 50 ms at M = 1e6
                outer = outer.to(dtype)
                grad_root = rhs * outer if rhs.size(-1) == 1 else rhs @ outer  # shape: (*batch, M, D)
                for index in batch_indices(grad_root.shape[:-2]):
                    grad_root[index].addmm_(root[index], core[index])
        return grad_root, (grad_s.unsqueeze(-1).to(noise.dtype) if need_noise else None), grad_rhs
