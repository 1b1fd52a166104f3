"""Mixed training inputs, x = αx₁ + (1−α)x₂ with α ~ U(−1, 2) (GPEX, Sec. 3)."""

from __future__ import annotations

import torch
from torch import Tensor


def mix_inputs(x1: Tensor, x2: Tensor, generator: torch.Generator, low: float = -1.0, high: float = 2.0) -> Tensor:
    """Per-sample affine mixtures of two batches.

    Mixing keeps the training inputs off the inducing inputs: were they the same images, the GP
    would interpolate its own inducing values and the match would be trivially perfect there
    and untested elsewhere. With α outside [0, 1] the mixtures also extrapolate.
    """
    if x1.shape != x2.shape:
        raise ValueError(f"x2: expected the shape of x1 {tuple(x1.shape)}, got {tuple(x2.shape)}")
    return apply_mixing(x1, x2, mixing_weights(x1.shape[0], generator, low, high))


def mixing_weights(n: int, generator: torch.Generator, low: float = -1.0, high: float = 2.0) -> Tensor:
    """The ``n`` weights α ~ U(low, high) that :func:`mix_inputs` draws, in the same order from ``generator``.

    Drawing the weights of a whole batch and mixing a slice of it gives each process of a
    data-parallel run exactly the inputs of the one-process run.
    """
    return torch.rand(n, generator=generator, device=generator.device) * (high - low) + low


def apply_mixing(x1: Tensor, x2: Tensor, alpha: Tensor) -> Tensor:
    """``α x1 + (1 − α) x2`` with one α per sample (``alpha`` of shape ``(N,)``)."""
    alpha = alpha.to(device=x1.device, dtype=x1.dtype).reshape(-1, *([1] * (x1.dim() - 1)))
    return alpha * x1 + (1 - alpha) * x2
