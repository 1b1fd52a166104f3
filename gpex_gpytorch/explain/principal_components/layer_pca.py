"""PCA of one layer of a network over a dataset: forward hooks + streaming (or randomized) PCA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...utils.modules import eval_mode
from ._checks import check_choice, check_count
from ._data import Data, iter_batches, num_examples
from .activation_capture import SPATIAL_MODES, ActivationRecorder, Spatial, Stage, rows_per_input
from .streaming_pca import PCAResult, StreamingPCA, pca_lowrank

__all__ = ["LayerActivations", "LayerPCA", "collect_layer_activations", "evaluation_mode", "fit_layer_pca"]

Method = Literal["covariance", "lowrank"]


@dataclass(frozen=True)
class LayerPCA:
    """The PCA of one layer, with the settings needed to hook the same layer again.

    :ivar layer: the sub-module name.
    :ivar stage: ``"post"`` or ``"pre"``.
    :ivar spatial: ``"positions"``, ``"pooled"`` or ``"flatten"``.
    :ivar pca: the components, eigenvalues, mean and neuron variances.
    :ivar rows_per_input: activation rows per input example (``H·W`` for conv layers in ``"positions"`` mode).
    :ivar output_shape: the layer's output shape for one input (without the batch axis).
    """

    layer: str
    stage: str
    spatial: str
    pca: PCAResult
    rows_per_input: int
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class LayerActivations:
    """A layer's activations over a whole dataset, held in memory.

    :ivar rows: ``(N·r, F)`` activation vectors (float32 on the CPU unless asked otherwise).
    :ivar rows_per_input: ``r``; row ``i`` belongs to input ``i // r``.
    :ivar labels: ``(N,)`` labels when the dataset has them.
    :ivar output_shape: the layer's output shape for one input.
    """

    rows: Tensor
    rows_per_input: int
    labels: Tensor | None
    output_shape: tuple[int, ...]


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every sub-module's previous mode afterwards
    (:func:`~gpex_gpytorch.utils.modules.eval_mode`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    with eval_mode(model):
        yield model


def _progress(data: Data, batch_size: int, show: bool, description: str) -> tqdm:
    size = num_examples(data)
    total = None if size is None else -(-size // batch_size)
    return tqdm(total=total, desc=description, unit="batch", disable=not show, leave=False)


def fit_layer_pca(
    model: nn.Module,
    layer: str | nn.Module,
    data: Data,
    *,
    stage: Stage = "post",
    spatial: Spatial = "positions",
    method: Method = "covariance",
    num_components: int | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
    seed: int = 0,
) -> LayerPCA:
    """PCA of ``layer``'s activations over ``data``, one batch at a time.

    ``method="covariance"`` (default) streams: only the ``F × F`` float64 scatter matrix is kept,
    so ``data`` may be larger than memory; the result holds every component. ``method="lowrank"``
    collects the activations (float32) and runs a randomized SVD for the top ``num_components``
    (default 100), for layers too wide for an ``F × F`` matrix.

    The model is put in eval mode for the pass and restored afterwards; the hook is removed even
    if a batch fails.

    :param model: the network (on any device).
    :param layer: dotted sub-module name, e.g. ``"penultimate"`` or ``"features.3"``.
    :param data: a tensor of inputs, a dataset of ``(input, label)`` pairs, or a DataLoader.
    :param stage: ``"post"`` (the module's output) or ``"pre"`` (input of its final non-linearity).
    :param spatial: conv outputs: ``"positions"``, ``"pooled"`` or ``"flatten"``.
    :param method: ``"covariance"`` or ``"lowrank"``.
    :param num_components: keep the top ``k`` components (``1 <= k <= F``).
    :param batch_size: batch size when ``data`` is a tensor or dataset.
    :param device: where to run the model's inputs (default: the model's device); statistics are
        accumulated there too.
    :param progress: show a tqdm bar over the batches.
    :param seed: seed of the randomized sketch (``method="lowrank"``).
    :raises ValueError: unknown ``layer`` / ``stage`` / ``spatial`` / ``method``, empty ``data``,
        ``num_components`` out of range.
    """
    check_choice("method", method, ("covariance", "lowrank"))
    check_choice("spatial", spatial, SPATIAL_MODES)
    if num_components is not None:
        check_count("num_components", num_components)
    device = _model_device(model) if device is None else torch.device(device)
    accumulator = StreamingPCA(device=device)
    kept: list[Tensor] = []
    shape: tuple[int, ...] = ()
    per_input = 1
    with evaluation_mode(model), ActivationRecorder(model, layer, stage=stage, spatial=spatial) as recorder:
        bar = _progress(data, batch_size, progress, f"PCA of {recorder.point.layer or 'model'}")
        try:
            for inputs, _ in iter_batches(data, batch_size, device):
                rows = recorder.run(inputs)
                assert recorder.last_shape is not None
                shape = tuple(recorder.last_shape[1:])
                per_input = rows_per_input(recorder.last_shape, spatial)
                if method == "covariance":
                    accumulator.update(rows)
                else:
                    kept.append(rows.float().cpu())
                bar.update(1)
        finally:
            bar.close()
        name = recorder.point.layer
    if method == "covariance":
        features = accumulator.num_features or 0
        if num_components is not None and num_components > features:
            raise ValueError(f"num_components: expected an integer in [1, {features}], got {num_components}")
        result = accumulator.result(num_components)
    else:
        rows = torch.cat(kept)
        limit = min(rows.shape)
        k = min(100, limit) if num_components is None else num_components
        if k > limit:
            raise ValueError(f"num_components: expected an integer in [1, {limit}] (rows, features), got {k}")
        result = pca_lowrank(rows.to(device), k, seed=seed)
    return LayerPCA(layer=name, stage=stage, spatial=spatial, pca=result, rows_per_input=per_input, output_shape=shape)


def collect_layer_activations(
    model: nn.Module,
    layer: str | nn.Module,
    data: Data,
    *,
    stage: Stage = "post",
    spatial: Spatial = "positions",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> LayerActivations:
    """All of ``layer``'s activation rows over ``data``, on the CPU (for nearest-neighbour grids).

    Same arguments as :func:`fit_layer_pca`; memory is ``N·r·F`` values of ``dtype``.
    """
    check_count("batch_size", batch_size)
    device = _model_device(model) if device is None else torch.device(device)
    rows: list[Tensor] = []
    labels: list[Tensor] = []
    shape: tuple[int, ...] = ()
    per_input = 1
    with evaluation_mode(model), ActivationRecorder(model, layer, stage=stage, spatial=spatial) as recorder:
        bar = _progress(data, batch_size, progress, f"activations of {recorder.point.layer or 'model'}")
        try:
            for inputs, batch_labels in iter_batches(data, batch_size, device):
                rows.append(recorder.run(inputs).to(device="cpu", dtype=dtype))
                if batch_labels is not None:
                    labels.append(batch_labels.cpu())
                assert recorder.last_shape is not None
                shape = tuple(recorder.last_shape[1:])
                per_input = rows_per_input(recorder.last_shape, spatial)
                bar.update(1)
        finally:
            bar.close()
    return LayerActivations(
        rows=torch.cat(rows),
        rows_per_input=per_input,
        labels=torch.cat(labels) if labels and len(labels) == len(rows) else None,
        output_shape=shape,
    )
