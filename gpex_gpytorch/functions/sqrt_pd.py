"""``SqrtPD``: the symmetric square root of a symmetric positive definite matrix, with a stable backward."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["SqrtPD"]


class SqrtPD(torch.autograd.Function):
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
