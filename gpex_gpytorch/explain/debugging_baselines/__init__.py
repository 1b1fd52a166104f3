"""Baselines for ordering training instances for label review (the dataset-debugging benchmark).

Each returns scores (larger = review earlier): ``(T, n)`` per-test matrices to be ordered by
:func:`gpex_gpytorch.explain.label_review.review_order`, or ``(n,)`` global scores for
:func:`~gpex_gpytorch.explain.label_review.rank_by_score`. Everything runs natively; captum
(``TracInCPFast``) is optional and only used when installed. The influence-function numerics
(``last_layer_hvp``, ``lissa_inverse_hvp``, ``power_iteration``) are imported from
:mod:`~gpex_gpytorch.explain.debugging_baselines.influence_functions`.

(These rank training *instances*; the channel-mask baselines of neural pathways are
:mod:`gpex_gpytorch.explain.pathways.mask_baselines`.)
"""

from .influence_functions import InfluenceScores, influence_scores
from .knn_features import knn_scores
from .loss_ranking import loss_scores
from .random_ranking import random_review_scores
from .random_ranking import random_scores as random_scores  # deprecated alias of random_review_scores
from .representer_points import RepresenterPoints, fit_representer_points
from .tracin import Checkpoint, captum_available, captum_tracin, tracin_last_layer

__all__ = [
    "Checkpoint",
    "InfluenceScores",
    "RepresenterPoints",
    "captum_available",
    "captum_tracin",
    "fit_representer_points",
    "influence_scores",
    "knn_scores",
    "loss_scores",
    "random_review_scores",
    "tracin_last_layer",
]
