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

``__all__`` lists what an analysis needs; the building blocks (``ablate``, ``evaluate``,
``direction_grid``, ``to_vectors``, ``pca_lowrank``...) are imported from their modules.
"""

from .activation_capture import ActivationRecorder, LayerRewriter
from .completeness import Ablation, AblationCurve, VarianceCompleteness, ablated, ablation_curves, variance_completeness
from .figures import plot_completeness
from .interpretability import (
    GridPanel,
    RowInterpretability,
    interpretability_summary,
    pc_vs_neuron_grids,
    plot_grid_panels,
)
from .kernel_space import HeadKernelPCA, KernelSpacePCA, gpex_kernel_space_pca, kernel_space_grids, kernel_space_pca
from .layer_pca import LayerActivations, LayerPCA, collect_layer_activations, fit_layer_pca
from .streaming_pca import PCAResult, StreamingPCA

__all__ = [
    "Ablation",
    "AblationCurve",
    "ActivationRecorder",
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
    "ablated",
    "ablation_curves",
    "collect_layer_activations",
    "fit_layer_pca",
    "gpex_kernel_space_pca",
    "interpretability_summary",
    "kernel_space_grids",
    "kernel_space_pca",
    "pc_vs_neuron_grids",
    "plot_completeness",
    "plot_grid_panels",
    "variance_completeness",
]
