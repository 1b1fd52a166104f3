"""A kernel network built from the input shape, for users who do not bring their own."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def default_kernel_network(
    input_shape: Sequence[int], num_heads: int, embedding_dim: int, width: int = 256
) -> nn.Module:
    """An MLP for vector inputs, a small strided CNN for ``(C, H, W)`` images.

    The output is ``(N, num_heads * embedding_dim)``, read head-major by :class:`CachedDeepKernel`.
    """
    for name, value in (("num_heads", num_heads), ("embedding_dim", embedding_dim), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    shape = tuple(int(s) for s in input_shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"input_shape: expected positive sizes, got {shape}")
    out = num_heads * embedding_dim
    if len(shape) == 1:
        return nn.Sequential(
            nn.Linear(shape[0], width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out)
        )
    if len(shape) == 3:
        channels, height, _ = shape
        layers: list[nn.Module] = [nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU()]
        current, size = 32, height
        while size > 4:  # halve until the map is small, doubling channels
            layers += [nn.Conv2d(current, current * 2, 3, stride=2, padding=1), nn.ReLU()]
            current, size = current * 2, (size + 1) // 2
        layers += [nn.Conv2d(current, current, 3, padding=1), nn.ReLU(), nn.Flatten()]
        with torch.no_grad():
            flat = nn.Sequential(*layers)(torch.zeros(1, *shape)).shape[1]
        return nn.Sequential(*layers, nn.Linear(flat, width), nn.ReLU(), nn.Linear(width, out))
    raise ValueError(f"input_shape: expected (features,) or (channels, height, width), got {shape}")
