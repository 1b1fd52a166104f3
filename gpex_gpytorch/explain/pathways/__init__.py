"""Neural pathways (GEN-CNP-style): class-relevant, instance-sparse channel masks that explain a frozen network.

* :mod:`.channel_masks` -- apply per-instance channel masks to conv/linear layers through forward hooks.
* :mod:`.generator` -- the mask generator reading shallow and deep feature maps; :class:`PathwayExplainer`.
* :mod:`.objectives` -- faithfulness (distillation), instance-specific sparsity, class relevance.
* :mod:`.training` -- :func:`train_pathway_explainer` / :func:`fit_pathways`.
* :mod:`.metrics` -- :func:`pathway_faithfulness`, insertion/deletion curves, sparsity, class IoU, transfer.
* :mod:`.metrics` also holds GEN-CNP's own metrics (:func:`paper_metrics`: mIC, mDC, sparsity, acIOU),
  fixed-fraction masks and the per-instance minimal faithful fraction of a ranking.
* :mod:`.mask_baselines` -- random, top-k activation, gradient x activation and class-mean gradient x
  activation masks at matched sparsity.
* :mod:`.gpex_connection` -- rank correlation between pathway similarity and an embedding (kernel)
  space, and how much of a GPEX model's view of an input survives its pathway.

See ``docs/pathways.md`` for the method, the choices made and the measured results.

``__all__`` lists what a study needs; the building blocks (loss terms, IoU helpers, hook helpers,
the generator's ``binarize``, ``frozen``...) are imported from their modules.
"""

from gpex_gpytorch.explain.pathways.channel_masks import apply_channel_masks, layer_channels
from gpex_gpytorch.explain.pathways.generator import PathwayExplainer, PathwayGenerator
from gpex_gpytorch.explain.pathways.gpex_connection import (
    PathwayEmbeddingCorrelation,
    PathwayKernelSurvival,
    pathway_embedding_correlation,
    pathway_kernel_survival,
)
from gpex_gpytorch.explain.pathways.mask_baselines import (
    activation_scores,
    class_mean_scores,
    class_scores_for,
    gradient_x_activation_scores,
    matched_counts,
    random_channel_scores,
    top_k_masks,
)
from gpex_gpytorch.explain.pathways.mask_baselines import random_scores as random_scores  # deprecated alias
from gpex_gpytorch.explain.pathways.metrics import (
    ClassIoU,
    DeletionInsertion,
    class_iou,
    class_pathways,
    deletion_insertion_curves,
    fraction_masks,
    layer_sparsity,
    masked_logits,
    minimal_faithful_masks,
    paper_metrics,
    pathway_faithfulness,
    transfer_faithfulness,
)
from gpex_gpytorch.explain.pathways.metrics import faithfulness as faithfulness  # deprecated alias
from gpex_gpytorch.explain.pathways.objectives import PathwayObjective
from gpex_gpytorch.explain.pathways.training import PathwayTrainingConfig, fit_pathways, train_pathway_explainer

__all__ = [
    "ClassIoU",
    "DeletionInsertion",
    "PathwayEmbeddingCorrelation",
    "PathwayExplainer",
    "PathwayGenerator",
    "PathwayKernelSurvival",
    "PathwayObjective",
    "PathwayTrainingConfig",
    "activation_scores",
    "apply_channel_masks",
    "class_iou",
    "class_mean_scores",
    "class_pathways",
    "class_scores_for",
    "deletion_insertion_curves",
    "fit_pathways",
    "fraction_masks",
    "gradient_x_activation_scores",
    "layer_channels",
    "layer_sparsity",
    "masked_logits",
    "matched_counts",
    "minimal_faithful_masks",
    "paper_metrics",
    "pathway_embedding_correlation",
    "pathway_faithfulness",
    "pathway_kernel_survival",
    "random_channel_scores",
    "top_k_masks",
    "train_pathway_explainer",
    "transfer_faithfulness",
]
