"""Neural pathways (GEN-CNP-style): class-relevant, instance-sparse channel masks that explain a frozen network.

* :mod:`.channel_masks` -- apply per-instance channel masks to conv/linear layers through forward hooks.
* :mod:`.generator` -- the mask generator reading shallow and deep feature maps; :class:`PathwayExplainer`.
* :mod:`.objectives` -- faithfulness (distillation), instance-specific sparsity, class relevance.
* :mod:`.training` -- :func:`train_pathway_explainer` / :func:`fit_pathways`.
* :mod:`.metrics` -- faithfulness, insertion/deletion curves, sparsity, class IoU, transfer.
* :mod:`.metrics` also holds GEN-CNP's own metrics (:func:`paper_metrics`: mIC, mDC, sparsity, acIOU),
  fixed-fraction masks and the per-instance minimal faithful fraction of a ranking.
* :mod:`.baselines` -- random, top-k activation, gradient x activation and class-mean gradient x
  activation masks at matched sparsity.
* :mod:`.gpex_connection` -- rank correlation between pathway similarity and an embedding (kernel)
  space, and how much of a GPEX model's view of an input survives its pathway.

See ``docs/pathways.md`` for the method, the choices made and the measured results.
"""

from gpex_gpytorch.explain.pathways.baselines import (
    activation_scores,
    class_mean_scores,
    class_scores_for,
    gradient_x_activation_scores,
    matched_counts,
    random_scores,
    top_k_masks,
)
from gpex_gpytorch.explain.pathways.channel_masks import (
    apply_channel_masks,
    capture_outputs,
    layer_channels,
    resolve_layers,
)
from gpex_gpytorch.explain.pathways.generator import PathwayExplainer, PathwayGenerator, binarize
from gpex_gpytorch.explain.pathways.gpex_connection import (
    PathwayEmbeddingCorrelation,
    PathwayKernelSurvival,
    kernel_similarity,
    pathway_embedding_correlation,
    pathway_kernel_survival,
    submodule_inputs,
)
from gpex_gpytorch.explain.pathways.metrics import (
    ClassIoU,
    DeletionInsertion,
    class_iou,
    class_pathways,
    deletion_insertion_curves,
    faithfulness,
    fraction_masks,
    layer_sparsity,
    mask_iou,
    masked_logits,
    minimal_faithful_masks,
    pairwise_iou,
    paper_metrics,
    transfer_faithfulness,
)
from gpex_gpytorch.explain.pathways.objectives import (
    PathwayObjective,
    class_relevance_loss,
    faithfulness_gate,
    faithfulness_loss,
    mask_density,
    prototype_loss,
    sparsity_loss,
)
from gpex_gpytorch.explain.pathways.training import (
    PathwayTrainingConfig,
    fit_pathways,
    frozen,
    train_pathway_explainer,
)

__all__ = [
    "ClassIoU",
    "DeletionInsertion",
    "PathwayEmbeddingCorrelation",
    "PathwayExplainer",
    "PathwayKernelSurvival",
    "PathwayGenerator",
    "PathwayObjective",
    "PathwayTrainingConfig",
    "activation_scores",
    "apply_channel_masks",
    "binarize",
    "capture_outputs",
    "class_mean_scores",
    "class_scores_for",
    "class_iou",
    "class_pathways",
    "class_relevance_loss",
    "deletion_insertion_curves",
    "faithfulness",
    "faithfulness_gate",
    "faithfulness_loss",
    "fit_pathways",
    "fraction_masks",
    "frozen",
    "gradient_x_activation_scores",
    "kernel_similarity",
    "layer_channels",
    "layer_sparsity",
    "mask_density",
    "mask_iou",
    "masked_logits",
    "minimal_faithful_masks",
    "matched_counts",
    "pairwise_iou",
    "paper_metrics",
    "pathway_embedding_correlation",
    "pathway_kernel_survival",
    "prototype_loss",
    "random_scores",
    "resolve_layers",
    "sparsity_loss",
    "submodule_inputs",
    "top_k_masks",
    "train_pathway_explainer",
    "transfer_faithfulness",
]
