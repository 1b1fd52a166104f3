"""Objectives: the GP-matches-ANN ELBO (Eq. 5) and the ANN-matches-GP loss (Eq. 6)."""

from .ann_matching_elbo import ANNMatchingELBO, check_ann_matching_likelihood, model_num_outputs
from .ann_matching_loss import ANNMatchingLoss, ann_matching_loss
from .ann_matching_swap import ann_matching_swap

__all__ = [
    "ANNMatchingELBO",
    "ANNMatchingLoss",
    "ann_matching_loss",
    "ann_matching_swap",
    "check_ann_matching_likelihood",
    "model_num_outputs",
]
