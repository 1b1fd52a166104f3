"""The one factorisation of the D×D capacitance matrix ``G + noise · I`` and its failure policy.

Both :class:`~gpex_gpytorch.operators.LowRankPlusDiagonal` (``G = rootᵀroot``) and
:class:`~gpex_gpytorch.variational.GPEXVariationalStrategy` (``G`` = the kernel's Gram statistic)
factorise ``G + noise · I`` through :func:`capacitance_cholesky`, so they fail, jitter and warn alike.
The jitter follows :func:`linear_operator.utils.cholesky.psd_safe_cholesky`: it starts at
``linear_operator.settings.cholesky_jitter`` and is tried ``linear_operator.settings.cholesky_max_tries``
times, each ten times larger.
"""

from __future__ import annotations

import warnings

import torch
from linear_operator import settings
from linear_operator.utils.warnings import NumericalWarning
from torch import Tensor

from .numerics import _external_stacklevel, _magnitude
from .validation import NonFiniteError

__all__ = ["capacitance_cholesky", "factor_dtype"]

_REMEDY = (
    "Raise the noise, or, if G is a running sum that has drifted from UᵀU (a CachedDeepKernel's cached "
    "statistics), call kernel.recompute_statistics()."
)


def factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype for the D×D factorisations: float64 unless the operands are already float64.

    The D×D work is negligible next to the O(M·D²) products, and doing it in float64 keeps
    ``G + s I`` well factorised in float32 even when ``s`` is small against ``‖G‖``.

    :param dtype: the dtype whose rounding ``G`` carries.
    """
    return torch.float64 if dtype in (torch.float16, torch.bfloat16, torch.float32) else dtype


def _settings_jitter(dtype: torch.dtype) -> float:
    """``linear_operator.settings.cholesky_jitter`` for ``dtype``.

    float64 reads the ``double`` value; float16 the ``half`` value when one is set; every other
    dtype (float32, bfloat16, which linear_operator has no setting for) the ``float`` value.
    """
    if dtype == torch.float64:
        return float(settings.cholesky_jitter.value(torch.float64))
    if dtype == torch.float16 and settings.cholesky_jitter.value(torch.float16) is not None:
        return float(settings.cholesky_jitter.value(torch.float16))
    return float(settings.cholesky_jitter.value(torch.float32))


def capacitance_cholesky(
    gram: Tensor,
    noise: Tensor,
    *,
    rounding: torch.dtype | None = None,
    source: str = "gram",
    context: str = "capacitance_cholesky",
) -> Tensor:
    """Lower Cholesky factor of ``G + noise · I_D``, in :func:`factor_dtype` of ``rounding``.

    ``G`` is positive semi-definite in exact arithmetic and ``noise > 0``, so ``G + noise · I`` is
    positive definite; in floating point it can fail to be when the noise is below ``G``'s rounding
    error (a rank-deficient ``U`` summed in float32, a cached running sum that has drifted). The
    one policy for every caller:

    1. ``G`` holds NaN or inf: :class:`~gpex_gpytorch.utils.NonFiniteError` naming ``source``.
    2. Not numerically positive definite: add a jitter to the diagonal of the failing batch entries
       only, starting at the larger of ``linear_operator.settings.cholesky_jitter`` (for ``rounding``)
       and ``G``'s rounding-error scale ``eps(rounding) · D · max diag(G)``, ten times larger per try,
       up to ``linear_operator.settings.cholesky_max_tries`` tries. On success a
       :class:`~linear_operator.utils.warnings.NumericalWarning` names the jitter added.
    3. Still not positive definite: :class:`ValueError` naming ``noise``, with the remedy (raise the
       noise, or recompute a drifted ``G``).

    The fast path costs one factorisation and one host synchronisation. The factor is
    differentiable in ``gram`` and ``noise`` (also with jitter, a constant).

    :param gram: ``G``, symmetric positive semi-definite.  # shape: (*batch, D, D)
    :param noise: the diagonal shift ``> 0`` per batch entry.  # shape: (*batch, 1)
    :param rounding: the dtype whose rounding ``gram`` carries (default ``gram.dtype``; a float32
        root's Gram accumulated in float64 is still float32-rounded). Sets the factor dtype, the
        rounding-error scale and which ``cholesky_jitter`` value applies.
    :param source: what to name when ``gram`` is not finite (the argument it was formed from).
    :param context: who factorises, starting the warning text (e.g. ``"LowRankPlusDiagonal"``).
    :returns: ``L`` with ``L Lᵀ = G + (noise + jitter) · I``.  # shape: (*batch, D, D)
    :raises NonFiniteError: ``gram`` holds NaN or inf.
    :raises ValueError: ``noise`` is not finite and positive, or ``G + noise · I`` stays indefinite
        after ``cholesky_max_tries`` jitters.
    """
    rounding = gram.dtype if rounding is None else rounding
    fdt = factor_dtype(rounding)
    dim = gram.size(-1)
    noise = noise.to(fdt)
    # G + noise·I by a shift of the diagonal (no D×D identity and product; the same additions).
    cap = gram.to(fdt, copy=True)
    if noise.shape[:-1] != cap.shape[:-2]:  # a noise that widens the batch (not the callers' case)
        cap = cap.expand(*torch.broadcast_shapes(cap.shape[:-2], noise.shape[:-1]), dim, dim).clone()
    cap.diagonal(dim1=-2, dim2=-1).add_(noise)
    chol, info = torch.linalg.cholesky_ex(cap)
    # One synchronisation for both checks on the common path. A sum is finite iff every entry is,
    # unless it overflows: only then are the entries looked at.
    failed, finite = (bool(v) for v in torch.stack([info.any(), torch.isfinite(gram.detach().sum())]).tolist())
    if finite and not failed:
        return chol
    if not (finite or bool(torch.isfinite(gram).all())):
        raise NonFiniteError(f"{source}: expected finite values, got NaN or inf ({context}: G is not finite)")
    if not failed:  # finite entries whose sum overflows
        return chol
    noise_d = noise.detach()
    if not bool((torch.isfinite(noise_d) & (noise_d > 0)).all()):
        shown = noise_d.flatten()[~(torch.isfinite(noise_d) & (noise_d > 0)).flatten()][:5].tolist()
        raise ValueError(f"noise: expected finite values > 0, got {shown} ({context})")
    scale = gram.detach().diagonal(dim1=-2, dim2=-1).abs().amax(-1).to(fdt)  # shape: (*batch,)
    rounding_error = torch.finfo(rounding).eps * dim * scale
    start = rounding_error.clamp_min(_settings_jitter(rounding))  # shape: (*batch,)
    jitter = torch.zeros_like(start)
    eye = torch.eye(dim, dtype=fdt, device=gram.device)
    max_tries = int(settings.cholesky_max_tries.value())
    state = f"noise {noise_d.min().item():.3g}, G's rounding error ~{_magnitude(rounding_error.max().item())}"
    for attempt in range(max_tries):
        jitter = torch.where(info > 0, start * 10.0**attempt, jitter)  # only the failing entries
        chol, info = torch.linalg.cholesky_ex(cap + jitter.unsqueeze(-1).unsqueeze(-1) * eye)
        if not bool(info.any()):
            warnings.warn(
                f"{context}: G + noise·I was not numerically positive definite ({state}); added a jitter of "
                f"{jitter.max().item():.1e} to its diagonal (linear_operator.settings.cholesky_jitter sets the "
                f"smallest). {_REMEDY}",
                NumericalWarning,
                stacklevel=_external_stacklevel(),
            )
            return chol
    tried = (
        f"even after a jitter of {(start * 10.0 ** (max_tries - 1)).max().item():.1e} ({max_tries} tries"
        if max_tries > 0
        else "and no jitter was tried (0 tries"
    )
    raise ValueError(
        f"noise: {context}: G + noise·I is not positive definite {tried}, linear_operator.settings.cholesky_max_tries; "
        f"{state}): the noise is far below G's rounding error, or G is not positive semi-definite. {_REMEDY}"
    )
