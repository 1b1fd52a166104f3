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
    alpha = torch.rand(x1.shape[0], generator=generator, device=generator.device) * (high - low) + low
    alpha = alpha.to(device=x1.device, dtype=x1.dtype).reshape(-1, *([1] * (x1.dim() - 1)))
    return alpha * x1 + (1 - alpha) * x2
