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

import numbers
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
from torch import Tensor

from ..functions.inv_quad_logdet import InvQuadLogdet
from ..functions.sqrt_pd import SqrtPD
from ..utils.blocked_reductions import BLOCK_ROWS, blocked_gram, blocked_reductions
from ..utils.broadcasting import sum_to_shape
from ..utils.cholesky import capacitance_cholesky, factor_dtype
from ..utils.numerics import check_precision
from ..utils.validation import broadcasts_to, check_positive
from ._householder_eigenbasis import HouseholderEigenbasis
from ._scaled_identity_plus_low_rank import ScaledIdentityPlusLowRank

__all__ = ["LowRankPlusDiagonal", "LowRankPlusDiagonalLinearOperator"]

_NOOP = slice(None, None, None)


def _sqrt_cores(root: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """D×D cores of the exact square root and inverse square root of ``R Rᵀ + s I``.

    With ``S = (G + s I)^{1/2}`` and ``σ = √s`` (eigenvalues ``μ = √(λ + s)``, ``λ`` those of ``G``):

    * ``(R Rᵀ + s I)^{1/2}  = σ I + R W Rᵀ``,   ``W = (S + σ I)⁻¹``         (``1/(μ + σ)``)
    * ``(R Rᵀ + s I)^{-1/2} = σ⁻¹ I + R V Rᵀ``, ``V = −(σ (G + s I + σ S))⁻¹`` (``−1/(σ μ (μ + σ))``)

    Squaring either verifies it on every eigenvector of ``G``; neither divides by ``λ``, so zero
    or tiny singular values of ``root`` need no special treatment.

    :returns: ``(W, V)`` in the factor dtype.  # shape: (*batch, D, D), (*batch, D, D)
    """
    fdt = factor_dtype(root.dtype)
    gram = blocked_gram(root)
    s = noise.to(fdt).unsqueeze(-1)  # shape: (*batch, 1, 1)
    sigma = s.sqrt()
    eye = torch.eye(gram.size(-1), dtype=fdt, device=root.device)
    shifted = gram + s * eye
    sqrt_shifted = SqrtPD.apply(0.5 * (shifted + shifted.mT))
    core_root = torch.linalg.inv(sqrt_shifted + sigma * eye)
    core_inv_root = -torch.linalg.inv(shifted + sigma * sqrt_shifted) / sigma
    sym = lambda m: 0.5 * (m + m.mT)  # noqa: E731 - inversion leaves a rounding-level asymmetry
    return sym(core_root), sym(core_inv_root)


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
    ``noise > 0``, and no formula divides by a singular value of ``root``. ``G + s I`` is factorised
    by :func:`~gpex_gpytorch.utils.cholesky.capacitance_cholesky`, as in
    :class:`~gpex_gpytorch.GPEXVariationalStrategy`: a non-finite ``root`` raises
    :class:`~gpex_gpytorch.utils.NonFiniteError` when used; a ``noise`` below the rounding error of
    ``rootᵀroot`` gets a jitter (``linear_operator.settings.cholesky_jitter``) with a
    :class:`~linear_operator.utils.warnings.NumericalWarning`, or a :class:`ValueError` naming
    ``noise`` once ``cholesky_max_tries`` jitters have failed.

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
            grad_root = sum_to_shape(grad, self.root.shape)
        if self.noise.requires_grad:
            grad = (left_vecs * right_vecs).sum(dim=(-2, -1)).unsqueeze(-1)
            grad_noise = sum_to_shape(grad, self.noise.shape)
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
        Both are summed in float64 blocks of ``BLOCK_ROWS`` rows, which cut the float32 error for
        ``y`` in the span of ``root`` from 250 % to 2.4 % at M = 10⁶ (≈ eps·κ(A), the cancellation
        itself); the stated bound (:func:`~gpex_gpytorch.utils.check_precision`) then counts the
        block length instead of M.
        """
        num_rows = self.size(-1)
        blocked = factor_dtype(self.dtype) != self.dtype
        gram = blocked_gram(self.root)
        check_precision(
            gram.detach(),
            self.noise.detach(),
            self.dtype,
            min(num_rows, BLOCK_ROWS) if blocked else num_rows,
            context="LowRankPlusDiagonal (solve)",
        )
        chol = capacitance_cholesky(gram, self.noise, rounding=self.dtype, source="root", context="LowRankPlusDiagonal")
        if blocked:
            batch = torch.broadcast_shapes(self.batch_shape, rhs.shape[:-2])
            root = self.root.expand(*batch, *self.root.shape[-2:])  # views: each 2-D slice is read in place
            cross = blocked_reductions(root, rhs.expand(*batch, *rhs.shape[-2:]))[0]
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
            return None, InvQuadLogdet.apply(self.root, self.noise, None)[1]
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
        """Run :class:`InvQuadLogdet` once per distinct matrix.

        Batch dimensions along which the operator is an expanded view (stride 0 in ``root`` and
        ``noise``: what ``expand`` / ``repeat`` leave, e.g. ``MultivariateNormal.log_prob`` of several
        samples) become extra columns of ``rhs``, so ``rootᵀroot`` is formed once, not per copy.

        :param rhs: right-hand sides with the operator's batch shape.  # shape: (*batch, M, K)
        """
        batch = self.batch_shape
        fold = [i for i, n in enumerate(batch) if n > 1 and self.root.stride(i) == 0 and self.noise.stride(i) == 0]
        if not fold:
            return InvQuadLogdet.apply(self.root, self.noise, rhs)
        nb, nk = len(batch), len(batch) - len(fold)
        index = tuple(0 if i in fold else _NOOP for i in range(nb))
        cols = rhs.movedim(fold, tuple(range(nb + 2 - len(fold), nb + 2)))  # shape: (*kept, M, K, *folded)
        folded_sizes = cols.shape[nk + 2 :]
        cols = cols.reshape(*cols.shape[: nk + 1], -1)  # shape: (*kept, M, K·F)
        quad, logdet = InvQuadLogdet.apply(self.root[index], self.noise[index], cols)
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
        return ScaledIdentityPlusLowRank(self.root, self._sqrt_cores()[0], self.noise.sqrt())

    def _root_inv_decomposition(
        self, initial_vectors: Tensor | None = None, test_vectors: Tensor | None = None
    ) -> LinearOperator:  # shape: (*batch, M, M)
        return ScaledIdentityPlusLowRank(self.root, self._sqrt_cores()[1], self.noise.rsqrt())

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
        fdt = factor_dtype(self.dtype)
        reflectors, tau = torch.geqrf(self.root.detach())
        triangle = reflectors[..., :k, :].triu().to(fdt)  # R_h: root = Q_h [R_h; 0]
        _, inner = torch.linalg.eigh(triangle @ triangle.mT)
        basis = HouseholderEigenbasis(reflectors[..., :k].contiguous(), tau[..., :k].contiguous(), inner.to(self.dtype))
        return self._eigenvalues(), basis

    def _eigenvalues(self) -> Tensor:  # shape: (*batch, M)
        # Differentiable: eigvalsh of G is well defined even with repeated eigenvalues.
        num_rows, rank = self.root.shape[-2:]
        k = min(num_rows, rank)
        fdt = factor_dtype(self.dtype)
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
