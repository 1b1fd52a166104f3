"""Undoing broadcasting in gradients."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sum_to_shape"]


def sum_to_shape(tensor: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``tensor`` over the dimensions that broadcasting added to reach it from ``shape``.

    The gradient of an operand that was broadcast is the sum of the gradient over the broadcast
    dimensions: leading dimensions that ``shape`` lacks, and dimensions where ``shape`` has size 1.

    :param tensor: a tensor whose shape ``shape`` broadcasts to.
    :param shape: the shape to reduce to.
    :returns: ``tensor`` summed to ``shape``.
    """
    if tensor.shape == shape:
        return tensor
    extra = tensor.dim() - len(shape)
    if extra > 0:
        tensor = tensor.sum(dim=tuple(range(extra)))
    dims = tuple(i for i, (have, want) in enumerate(zip(tensor.shape, shape, strict=True)) if want == 1 and have != 1)
    if dims:
        tensor = tensor.sum(dim=dims, keepdim=True)
    return tensor
