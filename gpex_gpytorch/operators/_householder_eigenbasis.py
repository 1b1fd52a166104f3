"""``HouseholderEigenbasis``: the orthogonal eigenbasis of ``R Rᵀ + s I`` as Householder reflectors, never M×M."""

from __future__ import annotations

import torch
from linear_operator.operators import LinearOperator
from torch import Tensor

__all__ = ["HouseholderEigenbasis"]


class HouseholderEigenbasis(LinearOperator):
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
