"""Objectives: the GP-matches-ANN ELBO (Eq. 5) and the ANN-matches-GP loss (Eq. 6)."""

from .ann_matching_elbo import ANNMatchingELBO
from .ann_matching_loss import ANNMatchingLoss, ann_matching_loss
from .ann_matching_swap import ann_matching_swap

__all__ = ["ANNMatchingELBO", "ANNMatchingLoss", "ann_matching_loss", "ann_matching_swap"]
