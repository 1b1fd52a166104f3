"""The numbers a distillation run reports: how well each GP head follows its network output."""

from __future__ import annotations

from torch import Tensor

from ..utils import check_tensor

__all__ = ["pearson_per_head", "summarise_pearson"]


def pearson_per_head(a: Tensor, b: Tensor, tol: float = 1e-12) -> Tensor:
    """Pearson correlation of each column of ``a`` with the same column of ``b``; NaN where ``b`` is constant."""
    check_tensor("a", a, ndim=2)
    check_tensor("b", b, shape=tuple(a.shape))
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    denom = a.norm(dim=0) * b.norm(dim=0)
    corr = (a * b).sum(0) / denom.clamp_min(tol)
    return corr.where(b.norm(dim=0) > tol, corr.new_tensor(float("nan")))


def summarise_pearson(corr: Tensor) -> dict[str, float]:
    """``pearson`` (mean) and ``pearson_min`` over the heads whose correlation is defined (NaN if none is)."""
    valid = corr[~corr.isnan()]
    return {
        "pearson": float(valid.mean()) if valid.numel() else float("nan"),
        "pearson_min": float(valid.min()) if valid.numel() else float("nan"),
    }
