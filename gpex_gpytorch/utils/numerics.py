"""Precision checks for ``U Uᵀ + σ² I`` computed through its D×D capacitance matrix ``G + σ² I``.

Everything the operator and the posterior compute is a backward-stable function of ``G = UᵀU``
(D×D), whose rounding error is the dominant one: forming ``G`` from ``M`` rows in a dtype with unit
roundoff ``eps`` perturbs it by about ``eps·√M·‖G‖``, and a relative perturbation ``γ`` of ``G``
moves solves, inverse quadratic forms and the posterior by at most ``γ·κ`` relative, with
``κ = (λ_max(G) + σ²) / σ²`` the condition number of ``U Uᵀ + σ² I`` (and of ``G + σ² I``). The
stated tolerance is therefore

.. math:: \\mathrm{tol} = \\varepsilon \\cdot \\hat\\kappa \\cdot (8 + \\sqrt{M}), \\qquad
          \\hat\\kappa = 1 + \\|G\\|_F / \\sigma^2 \\ \\ge\\ \\kappa,

checked against dense float64 references in ``tests/test_low_rank_plus_diagonal_properties.py`` and
``tests/test_posterior_properties.py`` (``docs/numerics.md`` lists the measured margins).
:func:`check_precision` evaluates it from the D×D ``G`` and ``σ²`` alone (``O(D²)``, no pass over
the ``M`` rows) and emits a :class:`NumericalPrecisionWarning` when it exceeds the caller's
relative tolerance: in float32 with M = 10⁴ and the default tolerance, noise below about ``10⁻³·‖G‖_F``.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Final

import torch
from torch import Tensor

from .validation import broadcasts_to

__all__ = [
    "DEFAULT_RTOL",
    "NumericalPrecisionWarning",
    "check_precision",
    "condition_bound",
    "relative_error_bound",
]

DEFAULT_RTOL: Final[float] = 1e-2
"""Relative error above which :func:`check_precision` warns (float32 warns for ``κ̂·(8 + √M) > 8.4·10⁴``)."""

_BASE_FACTOR: Final[float] = 8.0
"""Constant term of the error factor ``8 + √M``: covers the D×D factorisation (measured ≤ 6 with M ≤ 60)."""

# Packages whose frames a warning skips so that it points at the caller's own line.
_INTERNAL_PACKAGES: Final[tuple[str, ...]] = ("gpex_gpytorch", "linear_operator", "gpytorch", "torch")


class NumericalPrecisionWarning(UserWarning):
    """A computation in its current dtype cannot guarantee the requested accuracy.

    Raised (as a warning) by :func:`check_precision`: ``U Uᵀ + σ² I`` is too ill-conditioned for the
    dtype in which its Gram matrix ``UᵀU`` is formed. Compute in float64, or raise the noise ``σ²``.
    """


def _noise_column(noise: float | Tensor, gram: Tensor) -> Tensor:
    """``noise`` as a float64 tensor of shape ``(*batch, 1)`` matching ``gram`` (shape checks only: no sync)."""
    batch = gram.shape[:-2]
    if isinstance(noise, bool) or not isinstance(noise, (int, float, Tensor)):
        raise TypeError(f"noise: expected a float or a tensor broadcastable to (*batch, 1), got {type(noise).__name__}")
    noise = torch.as_tensor(noise, dtype=torch.float64, device=gram.device).detach()
    target = torch.Size((*batch, 1))
    # The common case (already (*batch, 1)) skips torch.broadcast_shapes, a slow Python path.
    if noise.shape != target and not broadcasts_to(noise.shape, target):
        raise ValueError(
            f"noise: expected a float or a tensor broadcastable to (*batch, 1) = {tuple(target)} "
            f"(gram has shape {tuple(gram.shape)}), got shape {tuple(noise.shape)}"
        )
    return noise.to(torch.float64).expand(target)


def _check_gram(gram: object) -> Tensor:
    if not isinstance(gram, Tensor):
        raise TypeError(f"gram: expected a torch.Tensor of shape (*batch, D, D), got {type(gram).__name__}")
    if gram.dim() < 2 or gram.size(-1) != gram.size(-2):
        raise ValueError(f"gram: expected a square matrix of shape (*batch, D, D), got shape {tuple(gram.shape)}")
    if not gram.is_floating_point():
        raise TypeError(f"gram: expected a floating-point tensor, got dtype {gram.dtype}")
    return gram


def condition_bound(gram: Tensor, noise: float | Tensor) -> Tensor:
    """``κ̂ = 1 + ‖G‖_F / σ²``, an upper bound on the 2-norm condition number of ``U Uᵀ + σ² I`` (and ``G + σ² I``).

    ``‖G‖_F ≥ λ_max(G)`` for a positive semi-definite ``G`` and exceeds it by at most ``√rank(G)``;
    the bound costs ``O(D²)``.

    :param gram: ``G = UᵀU``, shape ``(*batch, D, D)``.
    :param noise: ``σ² > 0``, a float or a tensor broadcastable to ``(*batch, 1)``.
    :returns: ``κ̂`` in float64, shape ``(*batch,)``.
    """
    gram = _check_gram(gram)
    return _condition_bound(gram, _noise_column(noise, gram))


def _condition_bound(gram: Tensor, noise_col: Tensor) -> Tensor:
    """:func:`condition_bound` of checked arguments (``noise_col`` from :func:`_noise_column`)."""
    return 1.0 + torch.linalg.matrix_norm(gram.detach().to(torch.float64)) / noise_col.squeeze(-1)


def _error_factor(dtype: torch.dtype, num_rows: int) -> float:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 1:
        raise ValueError(f"num_rows: expected an integer >= 1 (M, the rows of U), got {num_rows!r}")
    return torch.finfo(dtype).eps * (_BASE_FACTOR + math.sqrt(num_rows))


def relative_error_bound(gram: Tensor, noise: float | Tensor, dtype: torch.dtype, num_rows: int) -> Tensor:
    """The stated tolerance ``eps(dtype) · κ̂ · (8 + √M)`` of results computed through ``G + σ² I``.

    It bounds the relative error (against dense float64 references computed from the same
    inputs) of solves, inverse quadratic forms, matrix products and the posterior variance, and
    the error of the posterior mean relative to ``√(uᵀA⁻¹u)·‖v‖``; a value ≥ 1 means no correct
    digit is guaranteed (``docs/numerics.md`` lists the exceptions: the inverse square root, the
    log-determinant).

    :param gram: ``G = UᵀU``, shape ``(*batch, D, D)``.
    :param noise: ``σ² > 0``, a float or a tensor broadcastable to ``(*batch, 1)``.
    :param dtype: the dtype in which ``G`` is formed and factorised (the root's dtype for the
        operator, ``statistics_dtype`` for the posterior).
    :param num_rows: ``M``, the number of rows of ``U`` summed into ``G``.
    :returns: the bound in float64, shape ``(*batch,)``.
    """
    factor = _error_factor(dtype, num_rows)
    return factor * condition_bound(gram, noise)


def _magnitude(value: float) -> str:
    """``value`` rounded to a power of ten (``1e+05``): keeps warning texts few, so the once-per-text
    warning filter does not repeat them every training step."""
    if not math.isfinite(value) or value <= 0:
        return f"{value:g}"
    return f"1e{round(math.log10(value)):+03d}"


def _external_stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` called from :func:`check_precision` that names the first
    frame outside this package and the libraries it runs inside (torch, gpytorch, linear_operator)."""
    prefixes = tuple(
        os.path.dirname(module.__file__) + os.sep
        for name in _INTERNAL_PACKAGES
        if (module := sys.modules.get(name)) is not None and getattr(module, "__file__", None)
    )
    level, frame = 1, sys._getframe(1)  # the frame that calls warnings.warn is stacklevel 1
    while frame is not None and frame.f_code.co_filename.startswith(prefixes):
        frame = frame.f_back
        level += 1
    return level


def check_precision(
    gram: Tensor,
    noise: float | Tensor,
    dtype: torch.dtype,
    num_rows: int,
    *,
    rtol: float = DEFAULT_RTOL,
    context: str = "U Uᵀ + σ² I",
    remedy: str | None = None,
) -> bool:
    """Warn with :class:`NumericalPrecisionWarning` when :func:`relative_error_bound` exceeds ``rtol``.

    Cost: ``O(D²)`` per batch entry and one host synchronisation; it never reads the ``M`` rows.
    Entries whose ``gram`` is not finite are skipped (the factorisation reports those).

    :param gram: ``G = UᵀU``, shape ``(*batch, D, D)``.
    :param noise: ``σ² > 0``, a float or a tensor broadcastable to ``(*batch, 1)``.
    :param dtype: the dtype in which ``G`` is formed and factorised.
    :param num_rows: ``M``.
    :param rtol: the relative error that the caller needs (default :data:`DEFAULT_RTOL`).
    :param context: who computes (starts the message), e.g. ``"GPEXVariationalStrategy"``.
    :param remedy: how to fix it, appended to the message (default: compute in float64 or raise the noise).
    :returns: whether it warned.
    :raises ValueError: ``noise`` is not finite and positive, ``rtol`` is not in ``(0, 1]``, or
        ``gram`` / ``noise`` / ``num_rows`` have the wrong shape or value.
    """
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol <= 1:
        raise ValueError(f"rtol: expected a float in (0, 1], got {rtol!r}")
    factor = _error_factor(dtype, num_rows)
    gram = _check_gram(gram)
    noise_col = _noise_column(noise, gram)
    bound = factor * _condition_bound(gram, noise_col)  # shape: (*batch,)
    # One synchronisation on the common path; NaN compares false, so it takes the slow path too.
    if not bool((~(bound <= rtol)).any() | (~(noise_col > 0)).any()):
        return False
    if not bool(torch.isfinite(noise_col).all()) or not bool((noise_col > 0).all()):
        shown = noise_col.flatten()[~(torch.isfinite(noise_col) & (noise_col > 0)).flatten()][:5].tolist()
        raise ValueError(f"noise: expected finite values > 0, got {shown}")
    bound = bound[torch.isfinite(bound)]
    if bound.numel() == 0 or not bool((bound > rtol).any()):
        return False
    worst = float(bound.max())
    kappa = worst / factor
    name = str(dtype).removeprefix("torch.")
    if remedy is None:
        remedy = (
            "Even float64 is not enough: raise the noise σ²."
            if torch.finfo(dtype).eps <= torch.finfo(torch.float64).eps
            else "Compute in float64 (a float64 root / statistics_dtype=torch.float64) or raise the noise σ²."
        )
    warnings.warn(
        NumericalPrecisionWarning(
            f"{context}: {name} cannot guarantee a relative error below {rtol:g}: G + σ²I (G = UᵀU, M = {num_rows}) "
            f"has a condition number up to ~{_magnitude(kappa)} (σ² is ~{_magnitude(1.0 / max(kappa - 1.0, 1e-300))} "
            f"of ‖G‖_F), so results may carry relative errors up to ~{_magnitude(worst)}. {remedy}"
        ),
        stacklevel=_external_stacklevel(),
    )
    return True
