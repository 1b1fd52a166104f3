"""gpex_gpytorch: explain trained PyTorch networks with Gaussian processes (GPEX) in GPyTorch.

The package is layered: ``operators`` → ``kernels`` → ``variational`` → ``models`` → ``mlls`` →
``distillation`` → ``explain`` → ``distributed`` (the multi-process trainer), with ``commands`` on top;
``tests/test_package_structure.py`` checks that imports only go down the layers and that no
private name crosses from one subpackage to another.

The top level holds the GPyTorch pieces and the distiller. The explainers are reached through
their subpackages: :mod:`gpex_gpytorch.explain` (neighbours, maps, sub-modules, uncertainty,
label review), :mod:`gpex_gpytorch.explain.principal_components` and
:mod:`gpex_gpytorch.explain.pathways`.
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
