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
    ``FᵀF`` and an outer product for ``Δb``. It is computed in ``F``'s dtype (float32 at least), the
    dtype the gradient is returned in: the values need ``dtype`` (they accumulate into ``G``), the
    gradient does not, and a float64 product costs 3.5 times a float32 one on a CPU
    (``benchmarks/step_overhead.py``).

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
            # vᵀ(F − O) as a row times a matrix: a batched matrix-vector product with the vector as a
            # column is 4 times slower on a CPU.
            cross = (values.to(dtype).unsqueeze(-2) @ diff).squeeze(-2)  # shape: (H, D)
        ctx.save_for_backward(new, values)
        return gram, cross

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_gram: Tensor | None, grad_cross: Tensor | None
    ) -> tuple[Tensor | None, None, None, None]:
        new, values = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_gram is None and (grad_cross is None or values is None)):
            return None, None, None, None
        dtype = torch.promote_types(new.dtype, torch.float32)  # no half-precision accumulation
        rows = new.to(dtype)  # shape: (H, b, D)
        if grad_gram is None:
            grad = torch.zeros_like(rows)
        else:
            grad = rows @ (grad_gram + grad_gram.mT).to(dtype)  # shape: (H, b, D)
        if grad_cross is not None and values is not None:
            # v b̄ᵀ, added in place (an outer product through bmm is slow)
            grad.addcmul_(values.to(dtype).unsqueeze(-1), grad_cross.to(dtype).unsqueeze(-2))
        return grad.to(new.dtype), None, None, None
