"""Random review order: the reference every other method should beat."""

from __future__ import annotations

import torch
from torch import Tensor

from ...utils.deprecation import deprecated_alias

__all__ = ["random_review_scores"]


def random_review_scores(num_train: int, *, seed: int = 0) -> Tensor:
    """I.i.d. uniform review scores ``(num_train,)`` from a private generator (ranking them is a random permutation).

    :raises ValueError: for a non-positive ``num_train``.
    """
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1:
        raise ValueError(f"num_train: expected a positive integer, got {num_train!r}")
    return torch.rand(num_train, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


random_scores = deprecated_alias(
    random_review_scores, "random_scores", reason="pathways.random_scores scores channels; the names now differ"
)
