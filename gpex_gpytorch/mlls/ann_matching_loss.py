"""The ANN-matches-GP loss (GPEX, Eq. 6): distil the GP back into the network."""

from __future__ import annotations

from gpytorch.distributions import MultivariateNormal
from torch import Tensor, nn

from ..utils import check_finite_rows, check_tensor

__all__ = ["ANNMatchingLoss", "ann_matching_loss"]


def ann_matching_loss(
    gp_output: MultivariateNormal,
    ann_output: Tensor,
    *,
    detach_gp: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""The first term of Eq. 6 as a loss: :math:`\frac12 \sum_l (\mu_l(x) - g_l(x))^2 / c_l(x)`.

    Add it to the pipeline's task loss to pull the network towards its explaining GP where the
    GP is certain. The GP's mean and variance are constants for this loss by default (only the
    network learns from it).

    :param gp_output: the GP's posterior at the batch (mean shape equal to ``ann_output``'s).
    :param ann_output: the network's outputs, ``(N,)`` or ``(N, H)``.
    :param reduction: ``"mean"`` over the batch (summed over heads), ``"sum"`` or ``"none"`` (per input).
    """
    if not isinstance(gp_output, MultivariateNormal):
        raise TypeError(f"gp_output: expected a gpytorch MultivariateNormal, got {type(gp_output).__name__}")
    check_tensor("ann_output", ann_output, shape=tuple(gp_output.mean.shape), floating=True)
    # A NaN target would come back as a NaN loss; name its first rows instead.
    check_finite_rows("ann_output", ann_output, 0)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    mean, variance = gp_output.mean, gp_output.variance
    if detach_gp:
        mean, variance = mean.detach(), variance.detach()
    per_input = 0.5 * ((mean - ann_output).square() / variance)
    if per_input.dim() > 1:
        per_input = per_input.sum(-1)
    if reduction == "mean":
        return per_input.mean()
    if reduction == "sum":
        return per_input.sum()
    return per_input


class ANNMatchingLoss(nn.Module):
    """Module form of :func:`ann_matching_loss`; ``loss(gp_output, ann_output)``."""

    def __init__(self, *, detach_gp: bool = True, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
        super().__init__()
        self.detach_gp = detach_gp
        self.reduction = reduction

    def forward(self, gp_output: MultivariateNormal, ann_output: Tensor) -> Tensor:
        return ann_matching_loss(gp_output, ann_output, detach_gp=self.detach_gp, reduction=self.reduction)
