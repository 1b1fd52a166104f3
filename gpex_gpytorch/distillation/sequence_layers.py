"""Layers of the default kernel network for token sequences ``(T, F)``: position embedding, attention pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AttentionPool1d", "FlattenAndPool", "TokenEmbedding"]


class TokenEmbedding(nn.Module):
    """``(N, T, F)`` tokens to ``(N, C, T)`` channels: a shared linear map plus a learned position embedding.

    The position embedding keeps which token is which (e.g. a ViT's class token at position 0),
    which convolutions and pooling alone would blur.
    """

    def __init__(self, num_tokens: int, features: int, channels: int) -> None:
        super().__init__()
        self.project = nn.Linear(features, channels)
        self.position = nn.Parameter(torch.zeros(num_tokens, channels))
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        # shape: (N, T, C) -> (N, C, T) for Conv1d
        return (self.project(x) + self.position).transpose(1, 2)


class AttentionPool1d(nn.Module):
    """``(N, C, T)`` to ``(N, 2C)``: a learned softmax-weighted sum over positions, next to the mean."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv1d(channels, 1, 1)

    def forward(self, h: Tensor) -> Tensor:
        weights = self.score(h).softmax(-1)  # shape: (N, 1, T)
        return torch.cat([(h * weights).sum(-1), h.mean(-1)], dim=1)


class FlattenAndPool(nn.Module):
    """``(N, C, T)`` to ``(N, C·T + 2C)``: every position's channels, then :class:`AttentionPool1d`.

    Keeping the per-position features matters when the explained outputs are per token (e.g. an
    attention module's output, one head per token and feature): pooling alone loses which token
    said what, and matched the digits ViT's first attention output clearly worse.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = AttentionPool1d(channels)

    def forward(self, h: Tensor) -> Tensor:
        return torch.cat([h.flatten(1), self.pool(h)], dim=1)
