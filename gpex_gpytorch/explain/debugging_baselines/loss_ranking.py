"""Loss ranking: training instances the trained model fits worst under their own labels come first."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ...utils import check_tensor

__all__ = ["loss_scores"]


@torch.no_grad()
def loss_scores(train_logits: Tensor, train_labels: Tensor) -> Tensor:
    """Per-instance cross-entropy of the model's logits against the given labels, ``(n,)``.

    :param train_logits: ``(n, C)`` the model's logits on the training set.
    :param train_labels: ``(n,)`` the (possibly noisy) labels it was trained on.
    :raises ValueError: for empty or mismatched inputs or labels outside ``[0, C)``.
    """
    check_tensor("train_logits", train_logits, ndim=2, floating=True, finite=True)
    if train_logits.shape[0] == 0:
        raise ValueError("train_logits: expected at least one row, got an empty tensor")
    check_tensor("train_labels", train_labels, ndim=1)
    if train_labels.shape[0] != train_logits.shape[0]:
        raise ValueError(f"train_labels: expected {train_logits.shape[0]} labels, got {train_labels.shape[0]}")
    if bool((train_labels < 0).any() | (train_labels >= train_logits.shape[1]).any()):
        raise ValueError(f"train_labels: expected classes in [0, {train_logits.shape[1] - 1}]")
    return F.cross_entropy(train_logits.double(), train_labels.long(), reduction="none")
