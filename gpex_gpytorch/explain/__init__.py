"""Explanations through the GPs' kernels: neighbours, maps, uncertainty, and neighbouring explainers."""

from .cache_freshness import StaleCacheWarning, check_cache_fresh
from .contributions import Contributions, posterior_contributions
from .error_detection import ErrorDetectionReport, ScoreDetection, error_detection_report
from .explanation import Explanation, explain
from .gp_substitution import PipelineComparison, compare_pipeline, gp_replacement, substitute_gp
from .kernel_similarity import DEFAULT_METRIC, SIMILARITY_METRICS
from .label_review import ReviewRanking, label_review, label_self_scores, plot_review, write_review_html
from .map_deletion import (
    DeletionCurves,
    deletion_curves,
    gradient_input_scores,
    ink_first,
    map_pixel_scores,
    random_ink_scores,
)
from .nearest_neighbours import Hubness, HubnessWarning, Neighbours, hubness, nearest_neighbours
from .report import render_report, write_report
from .similarity_maps import (
    PooledSpatialKernelNetwork,
    SimilarityMaps,
    SpatialKernelNetwork,
    neighbour_similarity_maps,
    similarity_maps,
)
from .submodule_capture import CapturedActivations, capture_submodule, resolve_submodule, run_pipeline
from .submodule_explainer import FlattenedOutput, SubmoduleExplainer
from .uncertainty import (
    UncertaintyReport,
    argmax_change_log_probability,
    error_scores,
    misclassification_auroc,
    posterior_variance,
    variance_auroc,
)

__all__ = [
    "DEFAULT_METRIC",
    "SIMILARITY_METRICS",
    "CapturedActivations",
    "Contributions",
    "DeletionCurves",
    "ErrorDetectionReport",
    "FlattenedOutput",
    "Explanation",
    "Hubness",
    "HubnessWarning",
    "Neighbours",
    "PipelineComparison",
    "PooledSpatialKernelNetwork",
    "ReviewRanking",
    "ScoreDetection",
    "SimilarityMaps",
    "SpatialKernelNetwork",
    "StaleCacheWarning",
    "SubmoduleExplainer",
    "UncertaintyReport",
    "argmax_change_log_probability",
    "capture_submodule",
    "check_cache_fresh",
    "compare_pipeline",
    "deletion_curves",
    "error_detection_report",
    "error_scores",
    "explain",
    "gp_replacement",
    "gradient_input_scores",
    "hubness",
    "ink_first",
    "label_review",
    "label_self_scores",
    "map_pixel_scores",
    "misclassification_auroc",
    "nearest_neighbours",
    "neighbour_similarity_maps",
    "plot_review",
    "posterior_contributions",
    "posterior_variance",
    "random_ink_scores",
    "render_report",
    "resolve_submodule",
    "run_pipeline",
    "similarity_maps",
    "substitute_gp",
    "variance_auroc",
    "write_report",
    "write_review_html",
]
