"""A kernel network built from the input shape, for users who do not bring their own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..utils import check_positive_int
from ..utils.batch_shape import check_batched
from .sequence_layers import FlattenAndPool, TokenEmbedding

__all__ = ["DefaultKernelNetwork", "default_kernel_network"]


class DefaultKernelNetwork(nn.Sequential):
    """An MLP for vector inputs, a conv1d encoder for token sequences ``(T, F)``, a small strided CNN
    for ``(C, H, W)`` images.

    The sequence encoder embeds each token (a linear map plus a learned position embedding), runs
    two 3-wide convolutions over the tokens, and reads every position's features next to an
    attention-weighted pooling and the mean
    (:class:`~gpex_gpytorch.distillation.sequence_layers.FlattenAndPool`).

    The output is ``(N, num_heads * embedding_dim)``, read head-major by :class:`CachedDeepKernel`.
    The architecture is a function of its constructor arguments only, so :meth:`spec` is enough to
    rebuild it (a saved explainer reloads without the user's code).

    :param input_shape: the per-example input shape: ``(features,)``, ``(tokens, features)`` or
        ``(channels, height, width)``.
    :param num_heads: ``H``.
    :param embedding_dim: ``D`` per head.
    :param width: hidden width of the final MLP.
    """

    def __init__(self, input_shape: Sequence[int], num_heads: int, embedding_dim: int, width: int = 256) -> None:
        for name, value in (("num_heads", num_heads), ("embedding_dim", embedding_dim), ("width", width)):
            check_positive_int(name, value)
        shape = tuple(int(s) for s in input_shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"input_shape: expected positive sizes, got {shape}")
        super().__init__(*_layers(shape, num_heads * embedding_dim, width))
        self.input_shape = shape
        self.num_heads = num_heads
        self.embedding_dim = embedding_dim
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        check_batched("x", x, self.input_shape)  # one unbatched example: say so, not a matmul shape error
        return super().forward(x)

    def spec(self) -> dict[str, Any]:
        """The constructor arguments, as plain JSON-ready values."""
        return {
            "input_shape": list(self.input_shape),
            "num_heads": self.num_heads,
            "embedding_dim": self.embedding_dim,
            "width": self.width,
        }


def _layers(shape: tuple[int, ...], out: int, width: int) -> list[nn.Module]:
    if len(shape) == 1:
        return [nn.Linear(shape[0], width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out)]
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
        return [*layers, nn.Linear(flat, width), nn.ReLU(), nn.Linear(width, out)]
    if len(shape) == 2:
        tokens, features = shape
        channels = 64
        return [
            TokenEmbedding(tokens, features, channels),
            nn.Conv1d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1),
            nn.ReLU(),
            FlattenAndPool(channels),
            nn.Linear(channels * tokens + 2 * channels, width),
            nn.ReLU(),
            nn.Linear(width, out),
        ]
    raise ValueError(f"input_shape: expected (features,), (tokens, features) or (channels, height, width), got {shape}")


def default_kernel_network(
    input_shape: Sequence[int], num_heads: int, embedding_dim: int, width: int = 256
) -> DefaultKernelNetwork:
    """The :class:`DefaultKernelNetwork` for ``input_shape`` (see there)."""
    return DefaultKernelNetwork(input_shape, num_heads, embedding_dim, width)
