"""Explanations through the GPs' kernels: neighbours, maps, uncertainty, and neighbouring explainers.

``__all__`` lists the explainers and their results. Their building blocks (score functions,
AUROC helpers, ranking helpers, ``run_pipeline``...) are imported from their modules, e.g.
``from gpex_gpytorch.explain.uncertainty import error_scores``. The subpackages
:mod:`~gpex_gpytorch.explain.principal_components`, :mod:`~gpex_gpytorch.explain.pathways` and
:mod:`~gpex_gpytorch.explain.debugging_baselines` are imported on their own.
"""

from .cache_freshness import StaleCacheWarning, check_cache_fresh
from .contributions import Contributions, posterior_contributions
from .error_detection import ErrorDetectionReport, error_detection_report
from .explanation import Explanation, explain
from .gp_substitution import PipelineComparison, compare_pipeline, substitute_gp
from .kernel_similarity import SIMILARITY_METRICS
from .label_review import ReviewRanking, label_review, plot_review, write_review_html
from .map_deletion import DeletionCurves, deletion_curves
from .nearest_neighbours import Hubness, HubnessWarning, Neighbours, hubness, nearest_neighbours
from .report import render_report, write_report
from .similarity_maps import (
    PooledSpatialKernelNetwork,
    SimilarityMaps,
    SpatialKernelNetwork,
    neighbour_similarity_maps,
    similarity_maps,
)
from .submodule_capture import CapturedActivations, capture_submodule
from .submodule_explainer import SubmoduleExplainer
from .uncertainty import UncertaintyReport, misclassification_auroc

__all__ = [
    "SIMILARITY_METRICS",
    "CapturedActivations",
    "Contributions",
    "DeletionCurves",
    "ErrorDetectionReport",
    "Explanation",
    "Hubness",
    "HubnessWarning",
    "Neighbours",
    "PipelineComparison",
    "PooledSpatialKernelNetwork",
    "ReviewRanking",
    "SimilarityMaps",
    "SpatialKernelNetwork",
    "StaleCacheWarning",
    "SubmoduleExplainer",
    "UncertaintyReport",
    "capture_submodule",
    "check_cache_fresh",
    "compare_pipeline",
    "deletion_curves",
    "error_detection_report",
    "explain",
    "hubness",
    "label_review",
    "misclassification_auroc",
    "nearest_neighbours",
    "neighbour_similarity_maps",
    "plot_review",
    "posterior_contributions",
    "render_report",
    "similarity_maps",
    "substitute_gp",
    "write_report",
    "write_review_html",
]
