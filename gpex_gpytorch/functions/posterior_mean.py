"""``PosteriorMean``: ``μ = u w`` per head, whose feature gradient is written once, in the features' dtype."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["PosteriorMean"]


class PosteriorMean(torch.autograd.Function):
    r"""The posterior mean :math:`\mu = u\,w` of :class:`~gpex_gpytorch.variational.GPEXVariationalStrategy`.

    ``u`` is ``features`` converted to the factor dtype (the caller has it already, for the
    variance); the gradient reaches the kernel network through ``features``. Autograd would take
    ``∂μ/∂u = ḡ wᵀ`` as a batched product with an inner dimension of 1 (slow) and then a second
    pass to convert it to the features' dtype; here it is one broadcast product written straight
    into a tensor of the features' dtype (the same two roundings: to the factor dtype, then to
    the features' dtype).

    :param features: the embeddings ``f(x)`` (gradient flows here).  # shape: (H, N, D)
    :param u: ``features`` in the dtype of ``weights`` (no gradient is returned for it).  # shape: (H, N, D)
    :param weights: :math:`w = A^{-1} b`.  # shape: (H, D)
    :returns: :math:`\mu`, in the dtype of ``weights``.  # shape: (H, N)
    """

    @staticmethod
    def forward(ctx: FunctionCtx, features: Tensor, u: Tensor, weights: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u, weights)
        ctx.features_dtype = features.dtype
        # (u w)ᵀ = wᵀuᵀ: the vector as a row (a batched product with a column vector is 3 times slower on a CPU).
        return (weights.unsqueeze(-2) @ u.mT).squeeze(-2)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:  # type: ignore[override]
        u, weights = ctx.saved_tensors
        grad_features = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_features = u.new_empty(u.shape, dtype=ctx.features_dtype)
            torch.mul(grad.unsqueeze(-1), weights.unsqueeze(-2), out=grad_features)  # computed in u's dtype
        if ctx.needs_input_grad[2]:
            grad_weights = (grad.unsqueeze(-2) @ u).squeeze(-2)  # ḡᵀu, the vector as a row
        return grad_features, None, grad_weights
