"""gpex_gpytorch: explain trained PyTorch networks with Gaussian processes (GPEX) in GPyTorch.

The package is layered: ``operators`` → ``kernels`` → ``variational`` → ``models`` → ``mlls`` →
``distillation`` → ``explain``.
"""

from .distillation import (
    Distiller,
    FaithfulnessReport,
    SavedExplainer,
    distill,
    faithfulness,
    load_explainer,
    save_explainer,
)
from .kernels import CachedDeepKernel
from .mlls import ANNMatchingELBO, ANNMatchingLoss, ann_matching_loss
from .models.gpex_model import GPEXModel
from .operators import LowRankPlusDiagonal, LowRankPlusDiagonalLinearOperator
from .variational import GPEXVariationalDistribution, GPEXVariationalStrategy

__version__ = "0.1.0"

__all__ = [
    "ANNMatchingELBO",
    "ANNMatchingLoss",
    "CachedDeepKernel",
    "Distiller",
    "FaithfulnessReport",
    "GPEXModel",
    "GPEXVariationalDistribution",
    "GPEXVariationalStrategy",
    "LowRankPlusDiagonal",
    "LowRankPlusDiagonalLinearOperator",
    "SavedExplainer",
    "__version__",
    "ann_matching_loss",
    "distill",
    "faithfulness",
    "load_explainer",
    "save_explainer",
]
