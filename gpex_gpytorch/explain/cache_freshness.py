"""Is the inducing cache still the kernel network's embedding? Estimated on a sample of rows."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..models.gpex_model import GPEXModel
from ..utils import check_tensor
from ..utils.modules import eval_mode

__all__ = ["StaleCacheWarning", "check_cache_fresh"]


class StaleCacheWarning(UserWarning):
    """The cached inducing embeddings differ from the current kernel network's: similarities shown
    are not the kernel values of the network being explained."""


@torch.no_grad()
def check_cache_fresh(
    model: GPEXModel,
    inducing_inputs: Tensor,
    *,
    sample_size: int = 256,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> float:
    r"""Estimate the cache's staleness :math:`\|U_{cache} - f(\tilde x)\|_F / \|f(\tilde x)\|_F` on a sample.

    Costs one forward pass of the kernel network over ``sample_size`` inducing inputs. Warns with
    :class:`StaleCacheWarning` above ``tolerance``; the remedy is ``model.covar_module.fill(inducing_inputs)``
    (which :class:`~gpex_gpytorch.Distiller` runs at the end of ``fit`` by default).

    :param inducing_inputs: the ``(M, ...)`` inducing inputs, in cache order.
    :param sample_size: rows recomputed (all of them when ``M`` is smaller).
    :param tolerance: relative staleness above which to warn.
    :param seed: seeds the choice of rows.
    :returns: the estimated staleness.
    """
    kernel = model.covar_module
    check_tensor("inducing_inputs", inducing_inputs)
    if inducing_inputs.dim() == 0 or inducing_inputs.shape[0] != kernel.num_inducing:
        raise ValueError(
            f"inducing_inputs: expected the M={kernel.num_inducing} inducing inputs along dimension 0, "
            f"got shape {tuple(inducing_inputs.shape)}"
        )
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
        raise ValueError(f"sample_size: expected an integer >= 1, got {sample_size!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance: expected a value >= 0, got {tolerance!r}")
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(kernel.num_inducing, generator=generator)[:sample_size].sort().values
    with eval_mode(kernel):  # the network's eval-mode embedding is the one explanations use
        staleness = kernel.staleness(rows, inducing_inputs[rows].to(kernel.embeddings.device))
    if staleness > tolerance:
        warnings.warn(
            f"the inducing cache is stale (relative difference {staleness:.2g} from the kernel network on "
            f"{rows.numel()} sampled rows, tolerance {tolerance:g}): similarities are not the current kernel "
            "values; refresh it with model.covar_module.fill(inducing_inputs)",
            StaleCacheWarning,
            stacklevel=3,
        )
    return staleness
