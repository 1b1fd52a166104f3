"""``ScaledIdentityPlusLowRank``: ``scale · I + L C Lᵀ``, the form of ``LowRankPlusDiagonal``'s square roots."""

from __future__ import annotations

import torch
from linear_operator.operators import LinearOperator
from linear_operator.operators._linear_operator import IndexType
from torch import Tensor

__all__ = ["ScaledIdentityPlusLowRank"]


class ScaledIdentityPlusLowRank(LinearOperator):
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
