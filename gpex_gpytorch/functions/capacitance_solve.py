"""``CapacitanceSolve``: ``w = (G + s I)⁻¹ b`` from a given Cholesky factor, with a direct backward."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["CapacitanceSolve"]


class CapacitanceSolve(torch.autograd.Function):
    r"""The posterior weights :math:`w = A^{-1} b`, :math:`A = G + s I`, differentiable in ``G``, ``b`` and ``s``.

    ``chol`` is the (constant) lower Cholesky factor of :math:`A` (jitter included, as
    :func:`~gpex_gpytorch.utils.cholesky.capacitance_cholesky` returns it). The backward needs one
    more solve, :math:`\bar b = A^{-1}\bar w`, and

    .. math:: \bar G = -\operatorname{sym}(\bar b\, w^\top), \qquad \bar s = -\bar b^\top w

    — the gradient autograd gives through ``cholesky`` and ``cholesky_solve`` (which also
    symmetrises :math:`\bar G`), without the :math:`D\times D` triangular solves and products of
    the Cholesky backward.

    :param chol: ``L`` with ``L Lᵀ = A`` (no gradient flows through it).  # shape: (H, D, D)
    :param gram: ``G`` (only its dtype and gradient matter).  # shape: (H, D, D)
    :param cross: ``b``, in ``chol``'s dtype.  # shape: (H, D)
    :param noise: ``s`` (only its dtype and gradient matter).  # shape: (H, 1)
    :returns: ``w``, in ``chol``'s dtype.  # shape: (H, D)
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, chol: Tensor, gram: Tensor, cross: Tensor, noise: Tensor
    ) -> Tensor:
        weights = torch.cholesky_solve(cross.unsqueeze(-1), chol).squeeze(-1)
        ctx.save_for_backward(chol, weights)
        ctx.dtypes = gram.dtype, cross.dtype, noise.dtype
        return weights

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad: Tensor
    ) -> tuple[None, Tensor | None, Tensor | None, Tensor | None]:
        chol, weights = ctx.saved_tensors
        _, needs_gram, needs_cross, needs_noise = ctx.needs_input_grad
        gram_dtype, cross_dtype, noise_dtype = ctx.dtypes
        grad_cross = torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)  # shape: (H, D)
        grad_gram = grad_noise = None
        if needs_gram:
            outer = grad_cross.unsqueeze(-1) * weights.unsqueeze(-2)  # shape: (H, D, D)
            grad_gram = (outer + outer.mT).mul_(-0.5).to(gram_dtype)
        if needs_noise:
            grad_noise = -(grad_cross * weights).sum(-1, keepdim=True).to(noise_dtype)  # shape: (H, 1)
        return None, grad_gram, grad_cross.to(cross_dtype) if needs_cross else None, grad_noise
