"""``LowRankPlusDiagonal``: the linear operator ``root @ rootᵀ + noise · I_M``, exactly and in O(M·D²).

This is the covariance of one GPEX head (design notes §1): ``U Uᵀ + σ² I`` with ``U`` the M×D kernel
features of the inducing points. Everything the operator does goes through the D×D matrix
``G = rootᵀ root``:

* solves and the inverse quadratic form by the push-through identity
  ``(R Rᵀ + s I)⁻¹ y = (y − R (G + s I)⁻¹ Rᵀ y) / s``;
* the log-determinant by the matrix determinant lemma ``(M − D) log s + logdet(G + s I)``;
* the symmetric square root and inverse square root in closed form,
  ``(R Rᵀ + s I)^{±1/2} = s^{±1/2} I + R W± Rᵀ`` with ``W±`` D×D functions of ``G``;
* the full eigendecomposition from a Householder QR of ``root``.

Nothing on these paths forms an M×M matrix or calls CG / Lanczos, whatever
``linear_operator.settings.max_cholesky_size`` says. Only :meth:`to_dense` and
:meth:`~linear_operator.LinearOperator.cholesky` (dense by definition) build M×M matrices.
"""

from __future__ import annotations

import itertools
import numbers
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from linear_operator.operators import (
    AddedDiagLinearOperator,
    ConstantDiagLinearOperator,
    DiagLinearOperator,
    LinearOperator,
    RootLinearOperator,
    ZeroLinearOperator,
    to_dense,
)
from linear_operator.operators._linear_operator import IndexType, _is_noop_index
from linear_operator.utils.memoize import cached
from linear_operator.utils.warnings import NumericalWarning
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from gpex_gpytorch.utils.numerics import check_precision
from gpex_gpytorch.utils.validation import NonFiniteError, broadcasts_to, check_positive

__all__ = ["LowRankPlusDiagonal", "LowRankPlusDiagonalLinearOperator"]

_NOOP = slice(None, None, None)


def _factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype for the D×D factorisations: float64 unless the operator is already float64.

    The D×D work is negligible next to the O(M·D²) products, and doing it in float64 keeps
    ``G + s I`` well factorised in float32 even when ``s`` is small against ``‖G‖``.
    """
    return torch.float64 if dtype in (torch.float16, torch.bfloat16, torch.float32) else dtype


def _sum_to_shape(tensor: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``tensor`` over the dimensions that broadcasting added to reach it from ``shape``."""
    if tensor.shape == shape:
        return tensor
    extra = tensor.dim() - len(shape)
    if extra > 0:
        tensor = tensor.sum(dim=tuple(range(extra)))
    dims = tuple(i for i, (have, want) in enumerate(zip(tensor.shape, shape, strict=True)) if want == 1 and have != 1)
    if dims:
        tensor = tensor.sum(dim=dims, keepdim=True)
    return tensor


def _capacitance_cholesky(gram: Tensor, noise: Tensor, rounding: torch.dtype | None = None) -> Tensor:
    """Lower Cholesky factor of ``G + s I_D`` in the factor dtype.

    :param gram: ``rootᵀ root``.  # shape: (*batch, D, D)
    :param noise: ``s``.  # shape: (*batch, 1)
    :param rounding: the root's dtype, whose rounding ``gram`` carries (default ``gram.dtype``; differs
        when ``gram`` was accumulated in float64 from a float32 root).
    """
    rounding = gram.dtype if rounding is None else rounding
    if not bool(torch.isfinite(gram).all()):
        # Checked on the D×D Gram, not on the M rows at construction: free on the fast paths.
        raise NonFiniteError("root: expected finite values, got NaN or inf (rootᵀroot is not finite)")
    fdt = _factor_dtype(rounding)
    eye = torch.eye(gram.size(-1), dtype=fdt, device=gram.device)
    cap = gram.to(fdt) + noise.to(fdt).unsqueeze(-1) * eye
    chol, info = torch.linalg.cholesky_ex(cap)  # G is PSD and s > 0: positive definite in exact arithmetic
    if not bool(info.any()):
        return chol
    # G's rounding error (float32 products over many rows) can exceed a tiny s when root is rank
    # deficient, leaving G + s I numerically indefinite. Shift by the size of that error.
    scale = gram.detach().diagonal(dim1=-2, dim2=-1).abs().amax(-1).to(fdt).clamp_min(1.0)
    jitter = torch.finfo(rounding).eps * gram.size(-1) * scale
    for _ in range(4):
        chol, info = torch.linalg.cholesky_ex(cap + jitter.unsqueeze(-1).unsqueeze(-1) * eye)
        if not bool(info.any()):
            warnings.warn(
                f"LowRankPlusDiagonal: rootᵀroot + noise·I was not numerically positive definite (noise "
                f"{noise.detach().min().item():.3g} is below the rounding error of rootᵀroot); added "
                f"{jitter.max().item():.3g} to its diagonal.",
                NumericalWarning,
                stacklevel=3,
            )
            return chol
        jitter = 10 * jitter
    raise ValueError(
        f"noise: rootᵀroot + noise·I is not positive definite even after a jitter of {jitter.max().item():.3g}; "
        f"noise ({noise.detach().min().item():.3g}) is far below the rounding error of rootᵀroot"
    )


class _SqrtPD(torch.autograd.Function):
    """Symmetric square root of a symmetric positive definite D×D matrix.

    The backward pass solves the Sylvester equation ``S dS + dS S = dX`` in the eigenbasis:
    ``dS = Q ((Qᵀ dX Q) / (μ_i + μ_j)) Qᵀ``. Every ``μ_i + μ_j`` is positive, so repeated
    eigenvalues (a rank-deficient root, M < D) are harmless, unlike backpropagating
    through ``torch.linalg.eigh``.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, matrix: Tensor) -> Tensor:  # shape: (*batch, D, D)
        evals, evecs = torch.linalg.eigh(matrix)
        roots = evals.clamp_min(torch.finfo(matrix.dtype).tiny).sqrt()
        ctx.save_for_backward(evecs, roots)
        return (evecs * roots.unsqueeze(-2)) @ evecs.mT

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:  # shape: (*batch, D, D)
        evecs, roots = ctx.saved_tensors
        inner = evecs.mT @ grad @ evecs
        return evecs @ (inner / (roots.unsqueeze(-1) + roots.unsqueeze(-2))) @ evecs.mT


def _sqrt_cores(root: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """D×D cores of the exact square root and inverse square root of ``R Rᵀ + s I``.

    With ``S = (G + s I)^{1/2}`` and ``σ = √s`` (eigenvalues ``μ = √(λ + s)``, ``λ`` those of ``G``):

    * ``(R Rᵀ + s I)^{1/2}  = σ I + R W Rᵀ``,   ``W = (S + σ I)⁻¹``         (``1/(μ + σ)``)
    * ``(R Rᵀ + s I)^{-1/2} = σ⁻¹ I + R V Rᵀ``, ``V = −(σ (G + s I + σ S))⁻¹`` (``−1/(σ μ (μ + σ))``)

    Squaring either verifies it on every eigenvector of ``G``; neither divides by ``λ``, so zero
    or tiny singular values of ``root`` need no special treatment.

    :returns: ``(W, V)`` in the factor dtype.  # shape: (*batch, D, D), (*batch, D, D)
    """
    fdt = _factor_dtype(root.dtype)
    gram = _blocked_gram(root)
    s = noise.to(fdt).unsqueeze(-1)  # shape: (*batch, 1, 1)
    sigma = s.sqrt()
    eye = torch.eye(gram.size(-1), dtype=fdt, device=root.device)
    shifted = gram + s * eye
    sqrt_shifted = _SqrtPD.apply(0.5 * (shifted + shifted.mT))
    core_root = torch.linalg.inv(sqrt_shifted + sigma * eye)
    core_inv_root = -torch.linalg.inv(shifted + sigma * sqrt_shifted) / sigma
    sym = lambda m: 0.5 * (m + m.mT)  # noqa: E731 - inversion leaves a rounding-level asymmetry
    return sym(core_root), sym(core_inv_root)


_BLOCK_ROWS = 8192
"""Rows per block of the reductions over M that are summed in the factor dtype (float64 for float32 roots)."""


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


def _column_major(matrix: Tensor) -> Tensor:
    """``matrix`` stored column-major: MKL's M×D @ D×K with K > 1 is ≈ 3× faster with that layout of the D×K side."""
    return matrix.mT.contiguous().mT


def _batch_indices(batch: torch.Size) -> Iterator[tuple[int, ...]]:
    """Every index into a batch shape (one empty tuple for no batch)."""
    return itertools.product(*(range(n) for n in batch))


def _blocked_gram(root: Tensor) -> Tensor:
    """``rootᵀ root`` in the factor dtype (:func:`_blocked_gram_sums`), also for a finite root whose squares overflow.

    A float32 root with entries near 1e20 is finite, but its products overflow float32 partial
    sums: then the root is scaled by a power of two (exact), summed, and scaled back in the factor
    dtype. Only a root that is itself not finite, or whose Gram exceeds even the factor dtype, is
    rejected. The check costs nothing on the normal path (a D×D finiteness test).

    :param root: ``R``.  # shape: (*batch, M, D)
    :returns: ``Rᵀ R``.  # shape: (*batch, D, D)
    """
    gram = _blocked_gram_sums(root)
    if bool(torch.isfinite(gram).all()) or not bool(torch.isfinite(root).all()):
        return gram  # finite, or a NaN/inf root: _capacitance_cholesky names it
    exponent = torch.frexp(root.detach().abs().amax()).exponent
    scaled = torch.ldexp(root, -exponent)  # max |entry| in [0.5, 1): no product can overflow
    gram = torch.ldexp(_blocked_gram_sums(scaled), 2 * exponent.to(_factor_dtype(root.dtype)))
    if not bool(torch.isfinite(gram).all()):
        raise NonFiniteError(
            f"root: finite, but rootᵀroot exceeds the range of {gram.dtype} (max |root| = "
            f"{root.detach().abs().amax().item():.3g}); scale the root and the noise down together"
        )
    return gram


def _blocked_gram_sums(root: Tensor) -> Tensor:
    """``rootᵀ root`` in the factor dtype, float32 partial sums over ``_BLOCK_ROWS`` rows added in float64.

    One batched product over row blocks costs the same as the single GEMM (measured at M = 10⁶, D = 64:
    ≤ 2 % slower on one thread, no slower on two, where the blocks need no cross-thread reduction) and
    its relative error is ≈ 30× smaller at M = 2·10⁵ and ≈ 100× at 10⁶ (1e-8 against 1.2e-6), which
    the log-determinant and the direct inverse quadratic form inherit.

    :param root: ``R``.  # shape: (*batch, M, D)
    :returns: ``Rᵀ R``.  # shape: (*batch, D, D)
    """
    fdt = _factor_dtype(root.dtype)
    if fdt == root.dtype:
        return root.mT @ root
    batch, num_rows = root.shape[:-2], root.size(-2)
    full = num_rows - num_rows % _BLOCK_ROWS
    grams = []
    for index in _batch_indices(batch):  # 2-D slices: their row blocks are views (a flattened batch may copy)
        left = root[index]
        gram = (left[full:].mT @ left[full:]).to(fdt)
        if full:
            blocks = left[:full].unflatten(0, (-1, _BLOCK_ROWS))  # shape: (M // block, block, D)
            gram = gram + (blocks.mT @ blocks).sum(0, dtype=fdt)
        grams.append(gram)
    return torch.stack(grams).reshape(*batch, *grams[0].shape)


def _blocked_reductions(root: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """``rootᵀ rhs`` and the squared column norms of ``rhs``, one pass over ``root``, summed in the factor dtype.

    One BLAS reduction over 10⁶ float32 rows is good to ≈ 2e-5 (measured), and the direct inverse
    quadratic form multiplies that by its cancellation ratio. Here one batched product forms a
    float32 partial sum per ``_BLOCK_ROWS`` rows and the partials are added in float64: the same
    single pass over ``root``, with an error set by the block length instead of M (≈ 2e-6).

    :param root: ``R``.  # shape: (*batch, M, D)
    :param rhs: ``Y`` with the same batch shape.  # shape: (*batch, M, K)
    :returns: ``Rᵀ Y`` and ``‖y_k‖²`` in the factor dtype.  # shape: (*batch, D, K), (*batch, K)
    """
    fdt = _factor_dtype(root.dtype)
    if fdt == root.dtype:
        return (rhs.mT @ root).mT, torch.linalg.vector_norm(rhs, dim=-2).square()
    batch, num_rows = root.shape[:-2], root.size(-2)
    full = num_rows - num_rows % _BLOCK_ROWS
    products, norms = [], []
    for index in _batch_indices(batch):  # 2-D slices: their row blocks are views (a flattened batch may copy)
        left, right = root[index], rhs[index]
        prod = (right[full:].mT @ left[full:]).to(fdt).mT
        sq = torch.linalg.vector_norm(right[full:], dim=0).to(fdt).square()
        if full:
            left_blocks = left[:full].unflatten(0, (-1, _BLOCK_ROWS))  # shape: (M // block, block, D)
            right_blocks = right[:full].unflatten(0, (-1, _BLOCK_ROWS))
            # (Yᵀ R)ᵀ, not Rᵀ Y: BLAS is several times slower with the transposed M×D operand on the left
            prod = prod + (right_blocks.mT @ left_blocks).sum(0, dtype=fdt).mT
            sq = sq + torch.linalg.vector_norm(right_blocks, dim=1).to(fdt).square().sum(0)
        products.append(prod)
        norms.append(sq)
    return torch.stack(products).reshape(*batch, *products[0].shape), torch.stack(norms).reshape(*batch, -1)


def _residual_reductions(root: Tensor, rhs: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
    """``rootᵀ r`` and ``‖r_k‖²`` for ``r = rhs − root @ coeffs``, summed in the factor dtype, ``r`` never stored.

    Block by block, so each block of ``root`` comes from memory once and is reused from cache for
    ``rootᵀ r``: one pass over ``root`` and no M×K allocation.

    :param root: ``R``.  # shape: (*batch, M, D)
    :param rhs: ``Y``.  # shape: (*batch, M, K)
    :param coeffs: ``H``.  # shape: (*batch, D, K)
    :returns: ``Rᵀ r`` and ``‖r_k‖²``.  # shape: (*batch, D, K), (*batch, K)
    """
    fdt = _factor_dtype(root.dtype)
    neg = _column_major((-coeffs).to(root.dtype))
    if fdt == root.dtype:
        resid = (root @ neg).add_(rhs)
        return (resid.mT @ root).mT, torch.linalg.vector_norm(resid, dim=-2).square()
    batch, num_rows, rank = root.shape[:-2], root.size(-2), root.size(-1)
    num_blocks = -(-num_rows // _BLOCK_ROWS)
    products, norms = [], []
    for index in _batch_indices(batch):
        left, right, step = root[index], rhs[index], neg[index]
        prod = torch.empty(num_blocks, rhs.size(-1), rank, dtype=root.dtype, device=root.device)
        norm = torch.empty(num_blocks, rhs.size(-1), dtype=root.dtype, device=root.device)
        for block, start in enumerate(range(0, num_rows, _BLOCK_ROWS)):
            rows = left[start : start + _BLOCK_ROWS]
            resid = torch.addmm(right[start : start + _BLOCK_ROWS], rows, step)
            torch.mm(resid.mT, rows, out=prod[block])
            torch.linalg.vector_norm(resid, dim=0, out=norm[block])
        products.append(prod.to(fdt).sum(0).mT)
        norms.append(norm.to(fdt).square().sum(0))
    return torch.stack(products).reshape(*batch, *products[0].shape), torch.stack(norms).reshape(*batch, -1)


def _refine(
    root: Tensor,  # shape: (*batch, M, D)
    rhs: Tensor,  # shape: (*batch, M, K)
    noise: Tensor,  # shape: (*batch, 1), factor dtype
    chol: Tensor,  # shape: (*batch, D, D)
    coeffs: Tensor,  # shape: (*batch, D, K)
    quad: Tensor,  # shape: (*batch, K)
) -> tuple[Tensor, Tensor, Tensor]:
    """One residual pass for the columns whose direct inverse quadratic form cancelled too much.

    ``q(h) = ‖h‖² + ‖y − R h‖² / s`` is minimal at ``h* = C⁻¹ Rᵀy`` with ``q(h*) = yᵀA⁻¹y``. From the
    computed ``h``, one Newton step ``δ = C⁻¹ g``, ``g = Rᵀr − s h``, gives ``q(h*) = q(h) − gᵀC⁻¹g / s``
    exactly (q is quadratic), and ``r = y − R h`` and ``Rᵀr`` carry no cancellation: this is iterative
    refinement of the solve, with the residual formed from ``root`` itself rather than from the rounded
    ``rootᵀroot``. Measured against float64 (M = 2·10⁵, D = 64, well and ill-conditioned and
    rank-deficient roots, noise 1e-6 … 1): better than the direct value in all but 2 of 49 cases past
    the cancellation limit, by up to 10⁵×; the 2 are ``noise`` below the rounding error of
    ``rootᵀroot``, where neither has a correct digit.

    :returns: ``(quad, coeffs, resid_sq)`` with ``resid_sq = ‖y − R h‖²`` for the returned ``h``; a
        column whose refined value is not finite and positive keeps the direct one.
    """
    cross, resid_sq = _residual_reductions(root, rhs, coeffs)
    s = noise.unsqueeze(-1)  # shape: (*batch, 1, 1)
    grad = cross - s * coeffs
    step = torch.cholesky_solve(grad, chol)
    refined = coeffs.square().sum(-2) + resid_sq / noise - (grad * step).sum(-2) / noise
    # ‖r − R δ‖² = ‖r‖² − 2 δᵀRᵀr + δᵀ(C − s I)δ = ‖r‖² − δᵀ(Rᵀr + s h) − s‖δ‖²: no cancellation for small δ
    refined_sq = resid_sq - (step * (cross + s * coeffs)).sum(-2) - noise * step.square().sum(-2)
    ok = torch.isfinite(refined) & (refined > 0)
    direct_sq = noise * (quad - coeffs.square().sum(-2))
    return (
        torch.where(ok, refined, quad),
        torch.where(ok.unsqueeze(-2), coeffs + step, coeffs),
        torch.where(ok, refined_sq.clamp_min(0), direct_sq),
    )


class _InvQuadLogdet(torch.autograd.Function):
    """``(diag(Yᵀ A⁻¹ Y), log|A|)`` for ``A = R Rᵀ + s I`` with a hand-written backward.

    Forward (``C = G + s I``, ``b_k = Rᵀy_k``, ``h_k = C⁻¹ b_k``)::

        log|A|     = (M − D) log s + logdet C
        y_kᵀA⁻¹y_k = (‖y_k‖² − b_kᵀh_k) / s

    ``G`` is the GEMM (:func:`_blocked_gram`), ``RᵀY`` and ``‖y_k‖²`` one more pass over ``R``
    (:func:`_blocked_reductions`), both with float32 partial sums over row blocks added in float64.
    The subtraction cancels by the ratio ``‖y_k‖² / (s y_kᵀA⁻¹y_k)``; when a column's ratio exceeds
    :func:`_max_cancellation` (y close to the range of ``R`` and small ``s``: high signal-to-noise),
    one more pass refines the values (:func:`_refine`).

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
        fdt = _factor_dtype(root.dtype)
        num_rows, rank = root.shape[-2:]
        chol = _capacitance_cholesky(_blocked_gram(root), noise, rounding=root.dtype)
        s = noise.to(fdt)  # shape: (*batch, 1)
        logdet = (num_rows - rank) * s.squeeze(-1).log() + 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ctx.num_rows = num_rows

        if rhs is None:
            quad = torch.zeros(*root.shape[:-2], 0, dtype=root.dtype, device=root.device)
            ctx.save_for_backward(root, noise, chol, None, None)
            return quad, logdet.to(root.dtype)

        cross, rhs_sq = _blocked_reductions(root, rhs)  # shape: (*batch, D, K), (*batch, K)
        coeffs = torch.cholesky_solve(cross, chol)  # shape: (*batch, D, K)
        quad = (rhs_sq - (cross * coeffs).sum(-2)) / s
        # False also for NaN: a quad that cancelled to ≤ 0 always gets the residual pass
        if bool((s * quad * _max_cancellation(root.dtype) >= rhs_sq).all()):
            resid_sq = s * (quad - coeffs.square().sum(-2))  # ≥ s·quad / ratio: bounded cancellation
        else:
            quad, coeffs, resid_sq = _refine(root, rhs, s, chol, coeffs, quad)
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
                resid = (root @ _column_major(-coeffs.to(dtype))).add_(rhs)  # shape: (*batch, M, K)
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
                for index in _batch_indices(grad_root.shape[:-2]):
                    grad_root[index].addmm_(root[index], core[index])
        return grad_root, (grad_s.unsqueeze(-1).to(noise.dtype) if need_noise else None), grad_rhs


class _ScaledIdentityPlusLowRank(LinearOperator):
    """``scale · I_M + left @ core @ leftᵀ`` for a symmetric D×D ``core``; the exact (inverse) square root.

    :param left: the M×D factor.  # shape: (*batch, M, D)
    :param core: symmetric D×D core (may be indefinite).  # shape: (*batch, D, D)
    :param scale: the identity coefficient.  # shape: (*batch, 1)
    """

    def __init__(self, left: Tensor, core: Tensor, scale: Tensor) -> None:
        super().__init__(left, core, scale)
        self.left, self.core, self.scale = left, core, scale

    def _matmul(self, rhs: Tensor) -> Tensor:  # shape: (..., M, C)
        squeeze = rhs.dim() == 1
        rhs = rhs.unsqueeze(-1) if squeeze else rhs
        res = self.scale.unsqueeze(-1) * rhs + self.left @ (self.core @ (self.left.mT @ rhs))
        return res.squeeze(-1) if squeeze else res

    def _t_matmul(self, rhs: Tensor) -> Tensor:
        return self._matmul(rhs)

    def _size(self) -> torch.Size:
        batch = torch.broadcast_shapes(self.left.shape[:-2], self.core.shape[:-2], self.scale.shape[:-1])
        return torch.Size((*batch, self.left.size(-2), self.left.size(-2)))

    def _transpose_nonbatch(self) -> LinearOperator:
        return self

    def _diagonal(self) -> Tensor:  # shape: (*batch, M)
        return self.scale + torch.einsum("...md,...de,...me->...m", self.left, self.core, self.left)

    def _expand_batch(self, batch_shape: torch.Size) -> LinearOperator:
        return self.__class__(
            self.left.expand(*batch_shape, *self.left.shape[-2:]),
            self.core.expand(*batch_shape, *self.core.shape[-2:]),
            self.scale.expand(*batch_shape, 1),
        )

    def _get_indices(self, row_index: IndexType, col_index: IndexType, *batch_indices: IndexType) -> Tensor:
        rows = self.left[(*batch_indices, row_index)]  # shape: (*index, D)
        cols = self.left[(*batch_indices, col_index)]
        core = self.core[batch_indices] if batch_indices else self.core
        low_rank = ((rows.unsqueeze(-2) @ core).squeeze(-2) * cols).sum(-1)
        scale = self.scale[(*batch_indices, torch.zeros_like(row_index))]
        return low_rank + scale * torch.eq(row_index, col_index).to(scale.dtype)


class _HouseholderEigenbasis(LinearOperator):
    """Orthogonal M×M eigenbasis ``Q_h · blockdiag(P, I_{M−k})`` of ``R Rᵀ + s I`` without forming it.

    ``Q_h`` is the Householder product of a QR factorisation of ``root`` (its first ``k = min(M, D)``
    columns span the range of ``root``), ``P`` the eigenvectors of ``R_h R_hᵀ``.

    :param reflectors: Householder vectors from :func:`torch.geqrf`.  # shape: (*batch, M, k)
    :param tau: Householder scalars.  # shape: (*batch, k)
    :param inner: ``P``.  # shape: (*batch, k, k)
    :param transposed: represent the transpose instead.
    """

    def __init__(self, reflectors: Tensor, tau: Tensor, inner: Tensor, transposed: bool = False) -> None:
        super().__init__(reflectors, tau, inner, transposed=transposed)
        self.reflectors, self.tau, self.inner, self.transposed = reflectors, tau, inner, transposed

    def _matmul(self, rhs: Tensor) -> Tensor:  # shape: (..., M, C)
        squeeze = rhs.dim() == 1
        rhs = rhs.unsqueeze(-1) if squeeze else rhs
        k = self.inner.size(-1)
        batch = torch.broadcast_shapes(self.batch_shape, rhs.shape[:-2])
        refl = self.reflectors.expand(*batch, *self.reflectors.shape[-2:])
        tau = self.tau.expand(*batch, k)
        inner = self.inner.expand(*batch, k, k).to(rhs.dtype)
        rhs = rhs.expand(*batch, *rhs.shape[-2:]).to(refl.dtype)
        if self.transposed:
            res = torch.ormqr(refl, tau, rhs, left=True, transpose=True)
            res = torch.cat([inner.mT @ res[..., :k, :], res[..., k:, :]], dim=-2)
        else:
            res = torch.cat([inner @ rhs[..., :k, :], rhs[..., k:, :]], dim=-2)
            res = torch.ormqr(refl, tau, res, left=True, transpose=False)
        return res.squeeze(-1) if squeeze else res

    def _size(self) -> torch.Size:
        num_rows = self.reflectors.size(-2)
        return torch.Size((*self.reflectors.shape[:-2], num_rows, num_rows))

    def _transpose_nonbatch(self) -> LinearOperator:
        return self.__class__(self.reflectors, self.tau, self.inner, transposed=not self.transposed)


class LowRankPlusDiagonalLinearOperator(LinearOperator):
    r"""The PSD operator :math:`\mathbf R \mathbf R^\top + s \mathbf I_M`, batched, exact and never M×M.

    Solves, inverse quadratic forms and log-determinants cost O(M·D² + D³) through the D×D
    capacitance matrix :math:`\mathbf G + s\mathbf I_D` (:math:`\mathbf G = \mathbf R^\top \mathbf R`),
    with a hand-written backward for :meth:`inv_quad_logdet` (one M×D product). Root, inverse root,
    eigendecomposition and samples are exact for any M (no Lanczos), so a
    :class:`gpytorch.distributions.MultivariateNormal` with this covariance samples correctly at
    M far above ``max_cholesky_size``. Adding a constant diagonal (``+ ConstantDiagLinearOperator``,
    ``+ DiagLinearOperator`` with equal entries, :meth:`add_diagonal`, :meth:`add_jitter`) folds it
    into ``noise``, which is what :meth:`gpytorch.likelihoods.GaussianLikelihood.marginal` does.

    Rank-deficient roots and M < D are fine: the operator stays positive definite through
    ``noise > 0``, and no formula divides by a singular value of ``root``.

    :param root: :math:`\mathbf R`, one M×D factor per batch entry (e.g. per GP head), shape ``(*batch, M, D)``.
    :param noise: :math:`s > 0` (σ²): a float or a tensor broadcastable to ``(*batch, 1)``.
    :raises ValueError: ``root`` has fewer than 2 dimensions, ``noise`` does not broadcast to
        ``(*batch, 1)``, or ``noise`` is not finite and positive.
    :raises TypeError: ``root`` is not a floating-point tensor.

    Example::

        >>> root = torch.randn(3, 100_000, 16)          # 3 heads, M = 1e5, D = 16
        >>> covar = LowRankPlusDiagonal(root, 0.1)
        >>> inv_quad, logdet = covar.inv_quad_logdet(torch.randn(3, 100_000, 1), logdet=True)
    """

    def __init__(self, root: Tensor, noise: float | Tensor) -> None:
        if not isinstance(root, Tensor):
            raise TypeError(f"root: expected a torch.Tensor of shape (*batch, M, D), got {type(root).__name__}")
        if root.dim() < 2:
            raise ValueError(
                f"root: expected a tensor of shape (*batch, M, D) with at least 2 dimensions, "
                f"got shape {tuple(root.shape)}"
            )
        if not root.is_floating_point():
            raise TypeError(f"root: expected a floating-point tensor, got dtype {root.dtype}")
        if root.is_meta:
            raise ValueError("root: expected a tensor with data (cpu or cuda), got one on the meta device")
        target = torch.Size((*root.shape[:-2], 1))
        if isinstance(noise, Tensor):
            if noise.device != root.device:
                raise ValueError(f"noise: expected a tensor on {root.device} (root's device), got {noise.device}")
            noise = noise.to(root.dtype)
        elif isinstance(noise, numbers.Real) and not isinstance(noise, bool):
            noise = torch.tensor(float(noise), dtype=root.dtype, device=root.device)
        else:
            raise TypeError(f"noise: expected a positive float or a tensor, got {type(noise).__name__}")
        if not broadcasts_to(noise.shape, target):
            raise ValueError(
                f"noise: expected a float or a tensor broadcastable to (*batch, 1) = {tuple(target)} "
                f"(root has shape {tuple(root.shape)}), got shape {tuple(noise.shape)}"
            )
        check_positive("noise", noise.detach())
        if noise.shape != target:
            # A view, so gradients still reach the caller's tensor. Not re-expanded when already in
            # shape: operators rebuilt from their representation (e.g. inside backward passes) must
            # keep the very tensor they were given.
            noise = noise.expand(target)

        super().__init__(root, noise)
        self.root = root  # shape: (*batch, M, D)
        self.noise = noise  # shape: (*batch, 1)

    # ------------------------------------------------------------------ required interface
    def _matmul(self, rhs: Tensor) -> Tensor:  # shape: (..., M, C) or (..., M)
        squeeze = rhs.dim() == 1
        rhs = rhs.unsqueeze(-1) if squeeze else rhs
        res = self.root @ (self.root.mT @ rhs) + self.noise.unsqueeze(-1) * rhs
        return res.squeeze(-1) if squeeze else res

    def _t_matmul(self, rhs: Tensor) -> Tensor:
        return self._matmul(rhs)

    def _size(self) -> torch.Size:
        num_rows = self.root.size(-2)
        return torch.Size((*self.root.shape[:-2], num_rows, num_rows))

    def _transpose_nonbatch(self) -> LinearOperator:
        return self

    # ------------------------------------------------------------------ cheap structure
    def _diagonal(self) -> Tensor:  # shape: (*batch, M)
        return torch.einsum("...md,...md->...m", self.root, self.root) + self.noise

    @cached
    def to_dense(self) -> Tensor:  # shape: (*batch, M, M)
        """The dense M×M matrix (O(M²) memory: only for small M or tests)."""
        return self.root @ self.root.mT + torch.diag_embed(self.noise.expand(*self.noise.shape[:-1], self.size(-1)))

    def _bilinear_derivative(self, left_vecs: Tensor, right_vecs: Tensor) -> tuple[Tensor | None, ...]:
        # d(uᵀ(RRᵀ + sI)v)/dR = u (vᵀR) + v (uᵀR), summed over columns; d/ds = uᵀv.
        grad_root = grad_noise = None
        if self.root.requires_grad:
            grad = left_vecs @ (right_vecs.mT @ self.root) + right_vecs @ (left_vecs.mT @ self.root)
            grad_root = _sum_to_shape(grad, self.root.shape)
        if self.noise.requires_grad:
            grad = (left_vecs * right_vecs).sum(dim=(-2, -1)).unsqueeze(-1)
            grad_noise = _sum_to_shape(grad, self.noise.shape)
        return grad_root, grad_noise

    def _expand_batch(self, batch_shape: torch.Size) -> LinearOperator:
        return self.__class__(self.root.expand(*batch_shape, *self.root.shape[-2:]), self.noise.expand(*batch_shape, 1))

    def repeat(self, *sizes: int) -> LinearOperator:
        """Repeat batch dimensions (``sizes = (*batch_repeat, 1, 1)``), staying a ``LowRankPlusDiagonal``.

        Dimensions of size 1 are expanded as views; others are tiled (a copy of ``root``).
        """
        if len(sizes) == 1 and not isinstance(sizes[0], int):
            sizes = tuple(sizes[0])
        if len(sizes) < 3 or tuple(sizes[-2:]) != (1, 1):
            raise RuntimeError(
                f"Invalid repeat arguments {tuple(sizes)}. Currently, repeat only works to create repeated "
                "batches of a 2D LinearOperator."
            )
        if len(sizes) < self.dim():
            raise RuntimeError(f"Invalid repeat arguments {tuple(sizes)} for an operator of shape {tuple(self.shape)}.")
        padded = (1,) * (len(sizes) - 2 - len(self.batch_shape)) + tuple(self.batch_shape)
        if all(cur == 1 or rep == 1 for cur, rep in zip(padded, sizes[:-2], strict=True)):
            return self._expand_batch(torch.Size(cur * rep for cur, rep in zip(padded, sizes[:-2], strict=True)))
        root = self.root.reshape(*padded, *self.root.shape[-2:]).repeat(*sizes)
        noise = self.noise.reshape(*padded, 1).repeat(*sizes[:-1])
        return self.__class__(root, noise)

    def _getitem(self, row_index: IndexType, col_index: IndexType, *batch_indices: IndexType) -> LinearOperator:
        # The same slice on rows and columns is a principal submatrix: still low rank plus diagonal.
        if isinstance(row_index, slice) and row_index == col_index and not _is_noop_index(row_index):
            base = super()._getitem(_NOOP, _NOOP, *batch_indices)
            return self.__class__(base.root[..., row_index, :], base.noise)
        return super()._getitem(row_index, col_index, *batch_indices)

    def _get_indices(self, row_index: IndexType, col_index: IndexType, *batch_indices: IndexType) -> Tensor:
        rows = self.root[(*batch_indices, row_index)]  # shape: (*index, D)
        cols = self.root[(*batch_indices, col_index)]
        noise = self.noise[(*batch_indices, torch.zeros_like(row_index))]
        return (rows * cols).sum(-1) + noise * torch.eq(row_index, col_index).to(noise.dtype)

    def _sum_batch(self, dim: int) -> LinearOperator:
        # Σ_b (R_b R_bᵀ + s_b I) = [R_1 … R_B][R_1 … R_B]ᵀ + (Σ_b s_b) I: concatenate along D.
        root = self.root.movedim(dim, -2)  # shape: (..., M, B, D)
        root = root.reshape(*root.shape[:-2], -1)
        return self.__class__(root, self.noise.sum(dim))

    def _mul_constant(self, other: float | Tensor) -> LinearOperator:
        # c (RRᵀ + sI) = (√c R)(√c R)ᵀ + c s I for c > 0; otherwise the generic ConstantMulLinearOperator.
        other_t = torch.as_tensor(other, dtype=self.dtype, device=self.device)
        if other_t.dim() <= len(self.batch_shape) and bool((other_t > 0).all()):
            return self.__class__(
                self.root * other_t.sqrt().unsqueeze(-1).unsqueeze(-1), self.noise * other_t.unsqueeze(-1)
            )
        return super()._mul_constant(other)

    # ------------------------------------------------------------------ folding diagonals
    def _with_added_noise(self, extra: Tensor) -> LowRankPlusDiagonalLinearOperator | None:
        """``self`` with ``extra`` (broadcastable to ``(*batch, 1)``) added to ``noise``; ``None`` if not positive."""
        extra = extra.to(dtype=self.dtype, device=self.device)
        noise = self.noise + extra
        if not bool((noise.detach() > 0).all()) or not bool(torch.isfinite(noise.detach()).all()):
            return None
        batch = noise.shape[:-1]
        root = self.root if batch == self.batch_shape else self.root.expand(*batch, *self.root.shape[-2:])
        return self.__class__(root, noise)

    def _constant_diagonal(self, diag: Tensor) -> Tensor | None:
        """The ``(..., 1)`` value of a diagonal whose entries are all equal per batch, else ``None``.

        Gradients reach the entries through their mean. That is exact for any parameterisation that
        keeps the entries equal (e.g. ``c * ones``); independently parameterised entries that happen
        to be equal get the average of their gradients.
        """
        if diag.dim() == 0:
            return diag.reshape(1)
        if diag.size(-1) == 1:
            return diag
        if diag.size(-1) != self.size(-1) or not bool((diag.detach() == diag.detach()[..., :1]).all()):
            return None
        return diag.mean(-1, keepdim=True)

    def __add__(self, other: Tensor | LinearOperator | float) -> LinearOperator | Tensor:
        """Add ``other``; constant diagonals fold into ``noise`` and two ``LowRankPlusDiagonal`` concatenate roots.

        A diagonal with unequal entries gives linear_operator's default ``AddedDiagLinearOperator``
        (its solves fall back to CG for large M): the push-through identity needs ``s I``.
        """
        if isinstance(other, ZeroLinearOperator) or (isinstance(other, numbers.Number) and other == 0):
            return self
        if isinstance(other, LowRankPlusDiagonalLinearOperator):
            batch = torch.broadcast_shapes(self.batch_shape, other.batch_shape)
            left, right = self._expand_batch(batch), other._expand_batch(batch)
            return self.__class__(torch.cat([left.root, right.root.to(self.dtype)], dim=-1), left.noise + right.noise)
        if isinstance(other, DiagLinearOperator) and other.size(-1) == self.size(-1):
            values = other.diag_values if isinstance(other, ConstantDiagLinearOperator) else other._diagonal()
            constant = self._constant_diagonal(values)
            folded = None if constant is None else self._with_added_noise(constant)
            if folded is not None:
                return folded
            return AddedDiagLinearOperator(self, other)
        return super().__add__(other)

    def add_diagonal(self, diag: Tensor) -> LinearOperator:
        """Add ``diag`` to the diagonal; a constant (scalar, ``(..., 1)`` or equal entries) folds into ``noise``.

        :param diag: scalar, ``(..., 1)`` or ``(..., M)`` tensor.
        """
        diag = torch.as_tensor(diag, dtype=self.dtype, device=self.device)
        constant = self._constant_diagonal(diag)
        if constant is not None:
            try:
                torch.broadcast_shapes(constant.shape, self.noise.shape)
            except RuntimeError as err:
                raise RuntimeError(
                    f"add_diagonal for LinearOperator of size {self.shape} received invalid diagonal of size "
                    f"{diag.shape}."
                ) from err
            folded = self._with_added_noise(constant)
            if folded is not None:
                return folded
        return super().add_diagonal(diag)

    def add_low_rank(self, low_rank_mat: Tensor | LinearOperator, *args: Any, **kwargs: Any) -> LinearOperator:
        """``self + B Bᵀ`` as a ``LowRankPlusDiagonal`` with ``[root, B]`` as its root (exact; extra args ignored)."""
        low_rank_mat = to_dense(low_rank_mat).to(self.dtype)
        batch = torch.broadcast_shapes(self.batch_shape, low_rank_mat.shape[:-2])
        base = self._expand_batch(batch)
        extra = low_rank_mat.expand(*batch, *low_rank_mat.shape[-2:])
        return self.__class__(torch.cat([base.root, extra], dim=-1), base.noise)

    # ------------------------------------------------------------------ solves and log-determinants
    def _solve(self, rhs: Tensor, preconditioner: Any = None, num_tridiag: int | None = 0) -> Tensor:
        """Exact push-through solve ``(y − R (G + sI)⁻¹ Rᵀ y) / s`` (differentiable by autograd)."""
        if num_tridiag:
            raise NotImplementedError("LowRankPlusDiagonal solves exactly and has no CG tridiagonal terms.")
        coeffs = self._capacitance_solve(rhs)
        return (rhs - self.root @ coeffs) / self.noise.unsqueeze(-1)

    def _capacitance_solve(self, rhs: Tensor) -> Tensor:  # shape: (*batch, D, K)
        """``(G + s I)⁻¹ Rᵀ rhs``, warning when the dtype cannot meet the stated tolerance.

        Solves cancel in ``rhs − R (G + sI)⁻¹ Rᵀ rhs``: unlike :meth:`inv_quad_logdet` (refined in
        float64) their error grows with the condition number, and the reductions over M feed it.
        Both are summed in float64 blocks of ``_BLOCK_ROWS`` rows, which cut the float32 error for
        ``y`` in the span of ``root`` from 250 % to 2.4 % at M = 10⁶ (≈ eps·κ(A), the cancellation
        itself); the stated bound (:func:`~gpex_gpytorch.utils.check_precision`) then counts the
        block length instead of M.
        """
        num_rows = self.size(-1)
        blocked = _factor_dtype(self.dtype) != self.dtype
        gram = _blocked_gram(self.root)
        check_precision(
            gram.detach(),
            self.noise.detach(),
            self.dtype,
            min(num_rows, _BLOCK_ROWS) if blocked else num_rows,
            context="LowRankPlusDiagonal (solve)",
        )
        chol = _capacitance_cholesky(gram, self.noise, rounding=self.dtype)
        if blocked:
            batch = torch.broadcast_shapes(self.batch_shape, rhs.shape[:-2])
            root = self.root.expand(*batch, *self.root.shape[-2:])  # views: each 2-D slice is read in place
            cross = _blocked_reductions(root, rhs.expand(*batch, *rhs.shape[-2:]))[0]
        else:
            # (rhsᵀ R)ᵀ, not Rᵀ rhs: BLAS is several times slower with the transposed M×D operand on the left
            cross = (rhs.mT @ self.root).mT
        return torch.cholesky_solve(cross.to(chol.dtype), chol).to(self.dtype)

    def _solve_preconditioner(self) -> None:
        return None

    def _preconditioner(self) -> tuple[None, None, None]:
        return None, None, None

    def _check_operand(self, name: str, value: object) -> None:
        """A tensor with data, of the operator's dtype and device (no silent promotion or transfer)."""
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
        if value.dim() == 0:
            raise ValueError(f"{name}: expected a tensor with at least 1 dimension, got a scalar")
        if value.is_meta and not self.root.is_meta:
            raise ValueError(f"{name}: expected a tensor with data on {self.device}, got one on the meta device")
        if value.device != self.root.device:
            raise ValueError(
                f"{name}: expected a tensor on {self.root.device} (the operator's), got one on {value.device}"
            )
        if value.dtype != self.dtype:
            raise TypeError(f"{name}: expected dtype {self.dtype} (the operator's), got {value.dtype}")

    def solve(self, right_tensor: Tensor, left_tensor: Tensor | None = None) -> Tensor:
        r"""Exact :math:`\mathbf A^{-1}\mathbf B` or :math:`\mathbf L \mathbf A^{-1}\mathbf B` in O(M·D·(D + P)).

        With ``left_tensor`` only O×P, O×D and D×P products are formed:
        :math:`(\mathbf L \mathbf B - (\mathbf L \mathbf R)(\mathbf G + s\mathbf I)^{-1}(\mathbf R^\top\mathbf B)) / s`.

        :param right_tensor: :math:`\mathbf B`, shape ``(..., M, P)`` or ``(M,)``.
        :param left_tensor: :math:`\mathbf L`, shape ``(..., O, M)``.
        """
        self._check_operand("right_tensor", right_tensor)
        squeeze = right_tensor.dim() == 1
        rhs = right_tensor.unsqueeze(-1) if squeeze else right_tensor
        if rhs.size(-2) != self.size(-1):
            raise ValueError(
                f"right_tensor: expected shape (..., {self.size(-1)}, K) or ({self.size(-1)},) to match the operator's "
                f"{self.size(-1)} rows, got {tuple(right_tensor.shape)}"
            )
        if left_tensor is not None:
            self._check_operand("left_tensor", left_tensor)
            if left_tensor.dim() < 2 or left_tensor.size(-1) != self.size(-1):
                raise ValueError(
                    f"left_tensor: expected shape (..., O, {self.size(-1)}) to match the operator's {self.size(-1)} "
                    f"columns, got {tuple(left_tensor.shape)}"
                )
        if left_tensor is None:
            res = self._solve(rhs)
            return res.squeeze(-1) if squeeze else res
        coeffs = self._capacitance_solve(rhs)
        res = (left_tensor @ rhs - (left_tensor @ self.root) @ coeffs) / self.noise.unsqueeze(-1)
        return res.squeeze(-1) if squeeze else res

    def inv_quad_logdet(
        self,
        inv_quad_rhs: Tensor | None = None,  # shape: (*batch, M, K) or (M,)
        logdet: bool | None = False,
        reduce_inv_quad: bool | None = True,
    ) -> tuple[Tensor | None, Tensor | None]:  # shape: (*batch, K) or (*batch), (*batch)
        """Exact inverse quadratic form and log-determinant (push-through + determinant lemma).

        Ignores ``max_cholesky_size`` and ``fast_computations``: there is no CG / Lanczos path.
        ``inv_quad_rhs`` may carry extra leading batch dimensions; the operator broadcasts to them.

        :returns: ``(inv_quad, logdet)``; a term that was not requested is ``None``.
        """
        if inv_quad_rhs is None and not logdet:
            raise RuntimeError("Either `inv_quad_rhs` or `logdet` must be specifed.")
        if inv_quad_rhs is None:
            return None, _InvQuadLogdet.apply(self.root, self.noise, None)[1]
        self._check_operand("inv_quad_rhs", inv_quad_rhs)
        rhs, vector = (inv_quad_rhs.unsqueeze(-1), True) if inv_quad_rhs.dim() == 1 else (inv_quad_rhs, False)
        if rhs.size(-2) != self.size(-1):
            raise ValueError(
                f"inv_quad_rhs: expected shape (..., {self.size(-1)}, K) or ({self.size(-1)},) to match the operator's "
                f"{self.size(-1)} rows, got {tuple(inv_quad_rhs.shape)}"
            )
        batch = torch.broadcast_shapes(self.batch_shape, rhs.shape[:-2])
        op = self if batch == self.batch_shape else self._expand_batch(batch)
        rhs = rhs.expand(*batch, *rhs.shape[-2:])
        quad, logdet_term = op._folded_inv_quad_logdet(rhs)
        inv_quad_term = quad.sum(-1) if (reduce_inv_quad or vector) else quad
        return inv_quad_term, (logdet_term if logdet else None)

    def _folded_inv_quad_logdet(self, rhs: Tensor) -> tuple[Tensor, Tensor]:  # shape: (*batch, K), (*batch)
        """Run :class:`_InvQuadLogdet` once per distinct matrix.

        Batch dimensions along which the operator is an expanded view (stride 0 in ``root`` and
        ``noise``: what ``expand`` / ``repeat`` leave, e.g. ``MultivariateNormal.log_prob`` of several
        samples) become extra columns of ``rhs``, so ``rootᵀroot`` is formed once, not per copy.

        :param rhs: right-hand sides with the operator's batch shape.  # shape: (*batch, M, K)
        """
        batch = self.batch_shape
        fold = [i for i, n in enumerate(batch) if n > 1 and self.root.stride(i) == 0 and self.noise.stride(i) == 0]
        if not fold:
            return _InvQuadLogdet.apply(self.root, self.noise, rhs)
        nb, nk = len(batch), len(batch) - len(fold)
        index = tuple(0 if i in fold else _NOOP for i in range(nb))
        cols = rhs.movedim(fold, tuple(range(nb + 2 - len(fold), nb + 2)))  # shape: (*kept, M, K, *folded)
        folded_sizes = cols.shape[nk + 2 :]
        cols = cols.reshape(*cols.shape[: nk + 1], -1)  # shape: (*kept, M, K·F)
        quad, logdet = _InvQuadLogdet.apply(self.root[index], self.noise[index], cols)
        quad = quad.reshape(*quad.shape[:-1], rhs.size(-1), *folded_sizes)
        quad = quad.movedim(tuple(range(nk + 1, nk + 1 + len(fold))), tuple(fold))  # shape: (*batch, K)
        for i in fold:
            logdet = logdet.unsqueeze(i)
        return quad, logdet.expand(batch)

    def inv_quad(self, inv_quad_rhs: Tensor, reduce_inv_quad: bool = True) -> Tensor:
        """Exact ``tr(Yᵀ A⁻¹ Y)`` (or its diagonal) with the hand-written backward of :meth:`inv_quad_logdet`."""
        return self.inv_quad_logdet(inv_quad_rhs, logdet=False, reduce_inv_quad=reduce_inv_quad)[0]

    # ------------------------------------------------------------------ roots, samples, eigendecomposition
    @cached(name="sqrt_cores")
    def _sqrt_cores(self) -> tuple[Tensor, Tensor]:
        core_root, core_inv_root = _sqrt_cores(self.root, self.noise)
        return core_root.to(self.dtype), core_inv_root.to(self.dtype)

    def _root_decomposition(self) -> LinearOperator:  # shape: (*batch, M, M)
        return _ScaledIdentityPlusLowRank(self.root, self._sqrt_cores()[0], self.noise.sqrt())

    def _root_inv_decomposition(
        self, initial_vectors: Tensor | None = None, test_vectors: Tensor | None = None
    ) -> LinearOperator:  # shape: (*batch, M, M)
        return _ScaledIdentityPlusLowRank(self.root, self._sqrt_cores()[1], self.noise.rsqrt())

    @cached(name="root_decomposition")
    def root_decomposition(self, method: str | None = None) -> LinearOperator:
        r"""Exact symmetric square root :math:`\sigma\mathbf I + \mathbf R\mathbf W\mathbf R^\top` (an M×M operator).

        :param method: ignored (accepted for API compatibility): the root is always exact, never Lanczos.
        :return: a :class:`~linear_operator.operators.RootLinearOperator` whose ``root`` squares to ``self``.
        """
        return RootLinearOperator(self._root_decomposition())

    @cached(name="root_inv_decomposition")
    def root_inv_decomposition(
        self,
        initial_vectors: Tensor | None = None,
        test_vectors: Tensor | None = None,
        method: str | None = None,
    ) -> LinearOperator:
        r"""Exact symmetric inverse square root :math:`\sigma^{-1}\mathbf I + \mathbf R\mathbf V\mathbf R^\top`.

        :param initial_vectors: ignored (Lanczos option).
        :param test_vectors: ignored (Lanczos option).
        :param method: ignored: always exact.
        """
        return RootLinearOperator(self._root_inv_decomposition())

    def sqrt_inv_matmul(self, rhs: Tensor, lhs: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        r"""Exact :math:`\mathbf A^{-1/2}\mathbf B`, or with ``lhs`` a pair of outputs.

        With ``lhs`` returns :math:`\mathbf L\mathbf A^{-1/2}\mathbf B` and
        :math:`\mathrm{diag}(\mathbf L\mathbf A^{-1}\mathbf L^\top)`.

        :param rhs: :math:`\mathbf B`, shape ``(*batch, M, P)`` or ``(M,)``.
        :param lhs: :math:`\mathbf L`, shape ``(*batch, O, M)``.
        """
        inv_root = self._root_inv_decomposition()
        squeeze = rhs.dim() == 1
        rhs = rhs.unsqueeze(-1) if squeeze else rhs
        res = inv_root._matmul(rhs)
        if lhs is None:
            return res.squeeze(-1) if squeeze else res
        lhs_inv_root = inv_root._matmul(lhs.mT).mT  # shape: (*batch, O, M)
        res = lhs_inv_root @ rhs
        return (res.squeeze(-1) if squeeze else res), lhs_inv_root.square().sum(-1)

    def zero_mean_mvn_samples(self, num_samples: int) -> Tensor:  # shape: (num_samples, *batch, M)
        r"""Exact samples of :math:`\mathcal N(\mathbf 0, \mathbf A)`: :math:`\mathbf R\epsilon_1 + \sigma\epsilon_2`.

        :param num_samples: number of samples.
        """
        batch, num_rows, rank = self.batch_shape, self.size(-1), self.root.size(-1)
        eps_low = torch.randn(*batch, rank, num_samples, dtype=self.dtype, device=self.device)
        samples = (self.root @ eps_low).permute(-1, *range(len(batch) + 1))  # shape: (S, *batch, M)
        eps_diag = torch.randn(num_samples, *batch, num_rows, dtype=self.dtype, device=self.device)
        return samples + self.noise.sqrt() * eps_diag

    @cached(name="exact_eigh")
    def _exact_eigh(self) -> tuple[Tensor, LinearOperator]:
        """Eigenvalues ``[λ(G)_top-k + s, s, …, s]`` and the matching eigenbasis (not differentiable)."""
        num_rows, rank = self.root.shape[-2:]
        k = min(num_rows, rank)
        fdt = _factor_dtype(self.dtype)
        reflectors, tau = torch.geqrf(self.root.detach())
        triangle = reflectors[..., :k, :].triu().to(fdt)  # R_h: root = Q_h [R_h; 0]
        _, inner = torch.linalg.eigh(triangle @ triangle.mT)
        basis = _HouseholderEigenbasis(
            reflectors[..., :k].contiguous(), tau[..., :k].contiguous(), inner.to(self.dtype)
        )
        return self._eigenvalues(), basis

    def _eigenvalues(self) -> Tensor:  # shape: (*batch, M)
        # Differentiable: eigvalsh of G is well defined even with repeated eigenvalues.
        num_rows, rank = self.root.shape[-2:]
        k = min(num_rows, rank)
        fdt = _factor_dtype(self.dtype)
        top = torch.linalg.eigvalsh((self.root.mT @ self.root).to(fdt))[..., rank - k :].clamp_min(0).to(self.dtype)
        return torch.cat([top + self.noise, self.noise.expand(*self.batch_shape, num_rows - k)], dim=-1)

    @cached(name="diagonalization")
    def diagonalization(self, method: str | None = None) -> tuple[Tensor, LinearOperator]:
        """Exact eigendecomposition in O(M·D²): Householder QR of ``root`` plus a k×k eigenproblem.

        :param method: ignored: always exact (never Lanczos).
        :returns: eigenvalues (differentiable) and an orthogonal M×M eigenbasis operator (not
            differentiable: its Householder factors come from ``torch.geqrf``).
        """
        return self._exact_eigh()

    def _symeig(
        self, eigenvectors: bool = False, return_evals_as_lazy: bool | None = False
    ) -> tuple[Tensor, LinearOperator | None]:
        if not eigenvectors:
            return self._eigenvalues(), None
        return self._exact_eigh()

    @cached(name="svd")
    def _svd(self) -> tuple[LinearOperator, Tensor, LinearOperator]:
        # Symmetric positive definite: the SVD is the eigendecomposition.
        evals, evecs = self._exact_eigh()
        return evecs, evals, evecs


LowRankPlusDiagonal = LowRankPlusDiagonalLinearOperator
"""Short alias of :class:`LowRankPlusDiagonalLinearOperator`."""
