r"""Completeness of a basis of a layer: explained variance (completeness 1) and ablation (completeness 2).

**Completeness 1.** The share of the layer's total activation variance carried by the top-``k``
principal components, against the share carried by the ``k`` highest-variance neurons, and the
smallest ``k`` reaching a given share (80 %, 99 %).

**Completeness 2.** The network's accuracy while a growing set of basis vectors is *ablated*.
For orthonormal basis vectors :math:`B = [b_1 \dots b_k]^\top` (``k × F``) and the layer's mean
activation :math:`\mu`, the ablation operator is

.. math::

    A_B(a) = \mu + (I - B^\top B)(a - \mu) = a - B^\top B (a - \mu),

the projection of the centred activation onto the orthogonal complement of the ablated
directions, re-centred at the mean. Along every ablated direction the activation is replaced by
its dataset mean; along every other direction it is left alone. Ablating no vector is the
identity; ablating a complete basis replaces the activation by :math:`\mu`. For neurons
(:math:`b_j = e_j`) it sets the ablated neurons to their mean values. It acts through a forward
hook that returns the rewritten output (or, for ``stage="pre"``, the rewritten input of the
non-linearity), so everything downstream sees the ablated layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...utils import check_tensor
from ._checks import check_choice, check_count, check_fraction
from ._data import Data, iter_batches
from .activation_capture import LayerRewriter
from .layer_pca import LayerPCA, _model_device, evaluation_mode
from .streaming_pca import PCAResult

__all__ = [
    "Ablation",
    "AblationCurve",
    "VarianceCompleteness",
    "ablate",
    "ablated",
    "ablation_curve",
    "ablation_curves",
    "accuracy_metric",
    "default_ablation_ks",
    "evaluate",
    "k_for_fraction",
    "variance_completeness",
]

Basis = Literal["pc", "neuron"]
Order = Literal["descending", "ascending"]
Metric = Callable[[Tensor, Tensor], float]


# ---------------------------------------------------------------------------- completeness 1
def k_for_fraction(cumulative: Tensor, fraction: float) -> int | None:
    """The smallest ``k`` whose cumulative share reaches ``fraction`` (``None`` if it never does).

    :param cumulative: ``(K,)`` non-decreasing cumulative shares, entry ``k - 1`` for the top ``k``.
    :param fraction: in ``(0, 1]``.
    """
    fraction = check_fraction("fraction", fraction)
    reached = torch.nonzero(cumulative >= fraction - 1e-12)
    return int(reached[0, 0]) + 1 if reached.numel() else None


@dataclass(frozen=True)
class VarianceCompleteness:
    """Cumulative explained variance of PCs and of neurons, and the ``k`` needed per share.

    :ivar pc: ``(K,)`` share of the variance in the top-``k`` PCs.
    :ivar neuron: ``(F,)`` share of the variance in the ``k`` highest-variance neurons.
    :ivar k_pc: share -> smallest number of PCs reaching it (``None``: not reached by the kept PCs).
    :ivar k_neuron: share -> smallest number of neurons reaching it.
    """

    pc: Tensor
    neuron: Tensor
    k_pc: dict[float, int | None]
    k_neuron: dict[float, int | None]

    def to_dict(self, digits: int = 6) -> dict[str, object]:
        """A JSON-ready summary (curves rounded to ``digits``)."""
        return {
            "pc_cumulative": [round(float(v), digits) for v in self.pc],
            "neuron_cumulative": [round(float(v), digits) for v in self.neuron],
            "k": {f"{share:g}": {"pc": self.k_pc[share], "neuron": self.k_neuron[share]} for share in self.k_pc},
        }


def variance_completeness(pca: PCAResult | LayerPCA, fractions: Sequence[float] = (0.8, 0.99)) -> VarianceCompleteness:
    """Completeness 1 for a fitted PCA: the two cumulative curves and the ``k`` for each share."""
    result = pca.pca if isinstance(pca, LayerPCA) else pca
    if not isinstance(result, PCAResult):
        raise TypeError(f"pca: expected a PCAResult or LayerPCA, got {type(pca).__name__}")
    shares = [check_fraction("fractions", f) for f in fractions]
    pc = result.cumulative_explained_variance.cpu()
    neuron = result.neuron_cumulative_explained_variance.cpu()
    return VarianceCompleteness(
        pc=pc,
        neuron=neuron,
        k_pc={f: k_for_fraction(pc, f) for f in shares},
        k_neuron={f: k_for_fraction(neuron, f) for f in shares},
    )


# ---------------------------------------------------------------------------- the ablation operator
def ablate(rows: Tensor, mean: Tensor, directions: Tensor) -> Tensor:
    r"""The ablation operator :math:`a - B^\top B (a - \mu)` on rows ``(n, F)``.

    Computed in float64 and returned in ``rows``' dtype. ``directions`` (``(k, F)``) must be
    orthonormal rows; ``k = 0`` returns ``rows`` unchanged (bit for bit).
    """
    check_tensor("rows", rows, ndim=2)
    check_tensor("mean", mean, shape=(rows.shape[1],))
    check_tensor("directions", directions, shape=(None, rows.shape[1]))
    if directions.shape[0] == 0:
        return rows
    x = rows.to(torch.float64)
    basis = directions.to(device=rows.device, dtype=torch.float64)
    centred = x - mean.to(device=rows.device, dtype=torch.float64)
    return (x - (centred @ basis.T) @ basis).to(rows.dtype)


@dataclass(frozen=True)
class Ablation:
    """A row-wise ablation of a set of basis vectors, usable as the ``fn`` of a :class:`LayerRewriter`.

    :ivar mean: ``(F,)`` the layer's mean activation.
    :ivar directions: ``(k, F)`` ablated orthonormal directions (PCs), or ``None``.
    :ivar neurons: ``(k,)`` ablated neuron indices, or ``None``.
    """

    mean: Tensor
    directions: Tensor | None = None
    neurons: Tensor | None = None

    @property
    def size(self) -> int:
        """``k``, the number of ablated basis vectors."""
        if self.directions is not None:
            return int(self.directions.shape[0])
        return 0 if self.neurons is None else int(self.neurons.numel())

    @classmethod
    def of(cls, pca: PCAResult | LayerPCA, k: int, basis: Basis = "pc", order: Order = "descending") -> Ablation:
        """Ablate ``k`` basis vectors of ``pca``: PCs or neurons, by descending or ascending variance.

        :raises ValueError: unknown ``basis`` / ``order``, or ``k`` outside ``[0, K]`` (``K``: PCs kept,
            or neurons).
        """
        result = pca.pca if isinstance(pca, LayerPCA) else pca
        check_choice("basis", basis, ("pc", "neuron"))
        check_choice("order", order, ("descending", "ascending"))
        available = result.num_components if basis == "pc" else result.num_features
        check_count("k", k, low=0, high=available)
        if basis == "pc":
            chosen = result.components[:k] if order == "descending" else result.components.flip(0)[:k]
            return cls(mean=result.mean, directions=chosen)
        ranking = result.neuron_order if order == "descending" else result.neuron_order.flip(0)
        return cls(mean=result.mean, neurons=ranking[:k])

    def __call__(self, rows: Tensor) -> Tensor:
        """Apply the ablation to rows ``(n, F)``."""
        if self.size == 0:
            return rows
        if self.directions is not None:
            return ablate(rows, self.mean, self.directions)
        assert self.neurons is not None
        index = self.neurons.to(rows.device)
        out = rows.clone()
        out[:, index] = self.mean.to(device=rows.device, dtype=rows.dtype)[index]
        return out


@contextmanager
def ablated(model: nn.Module, layer_pca: LayerPCA, ablation: Ablation | Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Run the block with ``ablation`` applied to the layer that ``layer_pca`` was fitted on.

    The hook is removed on exit, also when the block raises.
    """
    if not isinstance(layer_pca, LayerPCA):
        raise TypeError(f"layer_pca: expected a LayerPCA (from fit_layer_pca), got {type(layer_pca).__name__}")
    rewriter = LayerRewriter(
        model,
        layer_pca.layer,
        ablation,
        stage=layer_pca.stage,  # type: ignore[arg-type]
        spatial=layer_pca.spatial,  # type: ignore[arg-type]
    )
    with rewriter:
        yield


# ---------------------------------------------------------------------------- completeness 2
def accuracy_metric(outputs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of logits ``(N, C)`` against integer labels ``(N,)``."""
    check_tensor("outputs", outputs, ndim=2)
    check_tensor("labels", labels, shape=(outputs.shape[0],))
    return float((outputs.argmax(-1) == labels).double().mean())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    *,
    metric: Metric = accuracy_metric,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> float:
    """``metric(outputs, labels)`` over all of ``data`` (model in eval mode, restored afterwards).

    :raises ValueError: ``data`` is empty or has no labels.
    """
    device = _model_device(model) if device is None else torch.device(device)
    outputs: list[Tensor] = []
    labels: list[Tensor] = []
    with evaluation_mode(model):
        for inputs, batch_labels in iter_batches(data, batch_size, device):
            if batch_labels is None:
                raise ValueError("dataset: evaluating the metric needs (input, label) examples, got inputs only")
            outputs.append(model(inputs).detach())
            labels.append(batch_labels)
    return float(metric(torch.cat(outputs), torch.cat(labels)))


@dataclass(frozen=True)
class AblationCurve:
    """The metric while the first ``k`` basis vectors are ablated, for each ``k`` in ``ks``.

    :ivar basis: ``"pc"`` or ``"neuron"``.
    :ivar order: ``"descending"`` (highest variance ablated first) or ``"ascending"``.
    """

    basis: str
    order: str
    ks: list[int]
    scores: list[float]

    def to_dict(self, digits: int = 6) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "basis": self.basis,
            "order": self.order,
            "k": list(self.ks),
            "score": [round(s, digits) for s in self.scores],
        }


def default_ablation_ks(num_features: int, num_points: int = 25) -> list[int]:
    """About ``num_points`` values of ``k`` from 0 to ``num_features``, denser near 0 (log-spaced)."""
    check_count("num_features", num_features)
    check_count("num_points", num_points, low=2)
    grid = torch.logspace(0, float(torch.log10(torch.tensor(float(num_features)))), num_points - 1)
    return sorted({0, num_features, *(int(round(float(v))) for v in grid)})


def _check_ks(ks: Sequence[int], available: int) -> list[int]:
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ValueError(f"ks: expected a non-empty sequence of integers in [0, {available}], got {ks!r}")
    return [check_count("ks", k, low=0, high=available) for k in ks]


def ablation_curve(
    model: nn.Module,
    layer_pca: LayerPCA,
    data: Data,
    *,
    basis: Basis = "pc",
    order: Order = "descending",
    ks: Sequence[int] | None = None,
    metric: Metric = accuracy_metric,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> AblationCurve:
    """Completeness 2 for one basis and order: ``metric`` with the first ``k`` vectors ablated.

    :param ks: the values of ``k`` (default :func:`default_ablation_ks`); each in ``[0, K]``.
    :raises ValueError: bad ``basis`` / ``order`` / ``ks``, or ``data`` without labels.
    """
    if not isinstance(layer_pca, LayerPCA):
        raise TypeError(f"layer_pca: expected a LayerPCA (from fit_layer_pca), got {type(layer_pca).__name__}")
    check_choice("basis", basis, ("pc", "neuron"))
    check_choice("order", order, ("descending", "ascending"))
    available = layer_pca.pca.num_components if basis == "pc" else layer_pca.pca.num_features
    chosen = default_ablation_ks(available) if ks is None else _check_ks(ks, available)
    scores: list[float] = []
    for k in tqdm(chosen, desc=f"ablating {basis}s ({order})", disable=not progress, leave=False):
        with ablated(model, layer_pca, Ablation.of(layer_pca, k, basis, order)):
            scores.append(evaluate(model, data, metric=metric, batch_size=batch_size, device=device))
    return AblationCurve(basis=basis, order=order, ks=chosen, scores=scores)


def ablation_curves(
    model: nn.Module,
    layer_pca: LayerPCA,
    data: Data,
    *,
    ks: Sequence[int] | None = None,
    metric: Metric = accuracy_metric,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, AblationCurve]:
    """The four curves of completeness 2: PCs and neurons, descending and ascending variance.

    Keys are ``"pc_descending"``, ``"pc_ascending"``, ``"neuron_descending"``, ``"neuron_ascending"``.
    With ``ks=None`` both bases use the same ``k`` grid when they have the same size.
    """
    curves: dict[str, AblationCurve] = {}
    for basis in ("pc", "neuron"):
        for order in ("descending", "ascending"):
            curves[f"{basis}_{order}"] = ablation_curve(
                model,
                layer_pca,
                data,
                basis=basis,  # type: ignore[arg-type]
                order=order,  # type: ignore[arg-type]
                ks=ks,
                metric=metric,
                batch_size=batch_size,
                device=device,
                progress=progress,
            )
    return curves
