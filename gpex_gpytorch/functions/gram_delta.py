"""``GramDelta``: the change of ``G = UᵀU`` and ``b = Uᵀv`` when rows of ``U`` are replaced, in one product.

The autograd function behind :meth:`gpex_gpytorch.kernels.CachedDeepKernel.statistics` (the fresh
rows, with gradient) and :meth:`~gpex_gpytorch.kernels.CachedDeepKernel.refresh` (without).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["GramDelta"]


class GramDelta(torch.autograd.Function):
    r"""``(ΔG, Δb) = (FᵀF − OᵀO, (F − O)ᵀv)`` in ``dtype``, differentiable in the new rows ``F`` only.

    ``F`` (new rows) and ``O`` (the rows they replace) are converted to ``dtype`` once. The forward
    takes one batched product instead of two, through

    .. math:: F^\top F - O^\top O = \operatorname{sym}\big((F - O)^\top (F + O)\big),
              \qquad \operatorname{sym}(P) = (P + P^\top)/2

    (the cross terms :math:`F^\top O - O^\top F` are antisymmetric), whose rounding error scales
    with :math:`\|F - O\|\,\|F + O\|` — no larger than the direct form's, and smaller for the
    nearly unchanged rows of a cache being refreshed. The result is exactly symmetric. The
    backward is one product too, ``∂/∂F = F (Ḡ + Ḡᵀ) + v b̄ᵀ``, instead of autograd's two for
    ``FᵀF`` and an outer product for ``Δb``.

    :param new: ``F``, the new rows (gradient flows here).  # shape: (H, b, D)
    :param old: ``O``, the rows replaced (no gradient).  # shape: (H, b, D)
    :param values: ``v``, the inducing values of those rows, or ``None`` (then ``Δb`` is ``None``).  # shape: (H, b)
    :param dtype: the dtype of the result (a statistics dtype, e.g. float64).
    :returns: ``ΔG`` ``(H, D, D)`` and ``Δb`` ``(H, D)`` (or ``None``), in ``dtype``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, new: Tensor, old: Tensor, values: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor | None]:
        # Head-major copies (the rows come row-major, (b, H, D)): the batched products read them faster.
        fresh = new.to(dtype, memory_format=torch.contiguous_format)  # shape: (H, b, D)
        total = old.to(dtype, copy=True, memory_format=torch.contiguous_format)  # shape: (H, b, D)
        diff = fresh - total
        total.add_(fresh)  # F + O, in place of O's copy (one temporary fewer)
        product = diff.mT @ total  # shape: (H, D, D)
        gram = product + product.mT
        gram.mul_(0.5)
        cross = None
        if values is not None:
            cross = (diff.mT @ values.to(dtype).unsqueeze(-1)).squeeze(-1)  # shape: (H, D)
        ctx.save_for_backward(fresh, values)
        ctx.new_dtype = new.dtype
        return gram, cross

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_gram: Tensor | None, grad_cross: Tensor | None
    ) -> tuple[Tensor | None, None, None, None]:
        fresh, values = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_gram is None and (grad_cross is None or values is None)):
            return None, None, None, None
        if grad_gram is None:
            grad = fresh.new_zeros(fresh.shape)
        else:
            grad = fresh @ (grad_gram + grad_gram.mT)  # shape: (H, b, D)
        if grad_cross is not None and values is not None:
            # v b̄ᵀ, added in place (an outer product through bmm is slow)
            grad.addcmul_(values.to(fresh.dtype).unsqueeze(-1), grad_cross.unsqueeze(-2))
        return grad.to(ctx.new_dtype), None, None, None
