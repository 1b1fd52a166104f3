"""Deprecated: renamed :mod:`gpex_gpytorch.explain.pathways.mask_baselines`.

"baselines" also named the dataset-debugging package :mod:`gpex_gpytorch.explain.debugging_baselines`;
the mask baselines now live under a name of their own. Importing this module warns and gives the
same objects.
"""

from __future__ import annotations

import warnings

from gpex_gpytorch.explain.pathways.mask_baselines import ActivationReduce as ActivationReduce
from gpex_gpytorch.explain.pathways.mask_baselines import activation_scores as activation_scores
from gpex_gpytorch.explain.pathways.mask_baselines import class_mean_scores as class_mean_scores
from gpex_gpytorch.explain.pathways.mask_baselines import class_scores_for as class_scores_for
from gpex_gpytorch.explain.pathways.mask_baselines import gradient_x_activation_scores as gradient_x_activation_scores
from gpex_gpytorch.explain.pathways.mask_baselines import matched_counts as matched_counts
from gpex_gpytorch.explain.pathways.mask_baselines import random_channel_scores as random_channel_scores
from gpex_gpytorch.explain.pathways.mask_baselines import random_scores as random_scores
from gpex_gpytorch.explain.pathways.mask_baselines import top_k_masks as top_k_masks

warnings.warn(
    "gpex_gpytorch.explain.pathways.baselines is deprecated; import from gpex_gpytorch.explain.pathways.mask_baselines",
    DeprecationWarning,
    stacklevel=2,
)
