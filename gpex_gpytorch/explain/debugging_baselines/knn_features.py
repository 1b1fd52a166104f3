"""Nearest neighbours in the network's own penultimate feature space (captum's ``SimilarityInfluence`` idea)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils import check_tensor

__all__ = ["knn_scores"]


@torch.no_grad()
def knn_scores(train_features: Tensor, test_features: Tensor, *, metric: str = "cosine") -> Tensor:
    """Similarity of each test instance to every training instance, ``(T, n)`` (larger = closer).

    :param train_features: ``(n, d)`` penultimate activations of the training set.
    :param test_features: ``(T, d)`` those of the test instances.
    :param metric: ``"cosine"`` or ``"euclidean"`` (negated distance).
    :raises ValueError: for empty or mismatched inputs or an unknown ``metric``.
    """
    check_tensor("train_features", train_features, ndim=2, floating=True, finite=True)
    check_tensor("test_features", test_features, ndim=2, floating=True, finite=True)
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("train_features/test_features: expected non-empty tensors")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"test_features: expected {train_features.shape[1]} columns, got {test_features.shape[1]}")
    a, b = test_features.double(), train_features.double()
    if metric == "cosine":
        # Zero feature vectors (all ReLUs off) get similarity 0 rather than NaN.
        return (a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    if metric == "euclidean":
        return -torch.cdist(a, b)
    raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
