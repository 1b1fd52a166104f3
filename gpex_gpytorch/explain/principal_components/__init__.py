"""Principal-component explanations of network layers and of GPEX kernel spaces.

After Dey et al., "Neuron-based explanations of neural networks sacrifice completeness and
interpretability" (TMLR 2025): a layer's activations are explained by their principal components
rather than by individual neurons. This package measures

* completeness 1 (:func:`variance_completeness`): the activation variance carried by the top-``k``
  PCs versus the ``k`` highest-variance neurons;
* completeness 2 (:func:`ablation_curves`): the accuracy while PCs or neurons are ablated
  (projected out and replaced by their mean, :class:`Ablation`), by descending or ascending variance;
* interpretability (:func:`pc_vs_neuron_grids`, :func:`interpretability_summary`): dataset inputs
  along each PC, each neuron and random directions, every basis sampled the same way (quantiles of
  the score, top/bottom-scoring inputs, or Dey et al.'s nearest neighbours of points along the
  direction), each grid row scored by label purity, label entropy, monotonicity and coverage;

and applies the same analysis to the kernel space of each GPEX head (:func:`kernel_space_pca`),
with the share of the GP posterior mean that each kernel-space PC carries.

Example::

    layer = fit_layer_pca(model, "penultimate", train_set)
    variance_completeness(layer).k_pc[0.8]
    curves = ablation_curves(model, layer, test_set)
"""

from .activation_capture import (
    ActivationRecorder,
    CapturePoint,
    LayerRewriter,
    apply_to_vectors,
    resolve_capture_point,
    to_vectors,
)
from .completeness import (
    Ablation,
    AblationCurve,
    VarianceCompleteness,
    ablate,
    ablated,
    ablation_curve,
    ablation_curves,
    accuracy_metric,
    default_ablation_ks,
    evaluate,
    k_for_fraction,
    variance_completeness,
)
from .figures import plot_completeness
from .interpretability import (
    BASES,
    SAMPLINGS,
    GridPanel,
    RowInterpretability,
    direction_grid,
    interpretability_summary,
    nearest_along_direction,
    pc_vs_neuron_grids,
    plot_grid_panels,
    row_interpretability,
)
from .kernel_space import (
    HeadKernelPCA,
    KernelSpacePCA,
    gpex_kernel_space_pca,
    kernel_space_grids,
    kernel_space_pca,
    posterior_mean_weights,
)
from .layer_pca import LayerActivations, LayerPCA, collect_layer_activations, evaluation_mode, fit_layer_pca
from .streaming_pca import PCAResult, StreamingPCA, pca_lowrank, symmetric_eigh

__all__ = [
    "BASES",
    "SAMPLINGS",
    "Ablation",
    "AblationCurve",
    "ActivationRecorder",
    "CapturePoint",
    "GridPanel",
    "HeadKernelPCA",
    "KernelSpacePCA",
    "LayerActivations",
    "LayerPCA",
    "LayerRewriter",
    "PCAResult",
    "RowInterpretability",
    "StreamingPCA",
    "VarianceCompleteness",
    "ablate",
    "ablated",
    "ablation_curve",
    "ablation_curves",
    "accuracy_metric",
    "apply_to_vectors",
    "collect_layer_activations",
    "default_ablation_ks",
    "direction_grid",
    "evaluate",
    "evaluation_mode",
    "fit_layer_pca",
    "gpex_kernel_space_pca",
    "interpretability_summary",
    "k_for_fraction",
    "kernel_space_grids",
    "kernel_space_pca",
    "nearest_along_direction",
    "pc_vs_neuron_grids",
    "pca_lowrank",
    "plot_completeness",
    "plot_grid_panels",
    "posterior_mean_weights",
    "resolve_capture_point",
    "row_interpretability",
    "symmetric_eigh",
    "to_vectors",
    "variance_completeness",
]
