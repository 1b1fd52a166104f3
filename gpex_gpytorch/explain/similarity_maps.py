r"""CAM-like similarity maps: which positions of a test input and of a neighbour make them similar.

Definition. The maps need a kernel network whose embedding is the mean, over ``P`` spatial
positions, of per-position embeddings (a spatial stage, then linear pooling; a linear head after
the pooling can be moved before it, since it commutes with the mean):

.. math::

    f_l(x) = \frac1P \sum_{p=1}^P f_l(x)[:, p].

Such a network follows the :class:`SpatialKernelNetwork` protocol: ``spatial_features(x)`` returns
the per-position embeddings, ``(N, H, D, *spatial)`` or ``(N, H·D, *spatial)`` (head-major, like
the kernel's own ``(N, H·D)`` output), and ``forward(x)`` returns their mean over positions.
:class:`PooledSpatialKernelNetwork` builds one from any convolutional backbone.

The kernel similarity of head :math:`l` between a test input :math:`x` and a neighbour
:math:`\tilde x` then splits exactly over the positions of either side:

.. math::

    k_l(x, \tilde x) = f_l(x)^\top f_l(\tilde x)
        = \sum_p \underbrace{\tfrac1P f_l(x)[:, p]^\top f_l(\tilde x)}_{\text{input map}[p]}
        = \sum_q \underbrace{\tfrac1{P'} f_l(x)^\top f_l(\tilde x)[:, q]}_{\text{neighbour map}[q]}.

The input map says which positions of :math:`x` are similar to the neighbour as a whole; the
neighbour map, which positions of :math:`\tilde x` are similar to :math:`x`. Each sums back to
the similarity (computed in float64), and positive / negative entries push it up / down.

Relative to a baseline. A position's term includes what the network puts there for *any* input
(biases, coordinates, the blank background), which no change of that position's pixels removes.
Given a baseline input :math:`b` (e.g. a blank image), the maps subtract it per position,

.. math::

    \text{input map}[p] = \tfrac1P \bigl(f_l(x)[:, p] - f_l(b)[:, p]\bigr)^\top f_l(\tilde x),
    \qquad \sum_p \text{input map}[p] = k_l(x, \tilde x) - k_l(b, \tilde x),

(and symmetrically for the neighbour map, summing to :math:`k_l(x, \tilde x) - k_l(x, b)`): what
each position adds to the similarity over the baseline's. The offsets :math:`k_l(b, \tilde x)`,
:math:`k_l(x, b)` are returned with the maps, so map plus offset is still the similarity exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..kernels import CachedDeepKernel
from ..models.gpex_model import GPEXModel
from ..utils import check_positive_int, check_tensor
from .nearest_neighbours import Neighbours

__all__ = [
    "PooledSpatialKernelNetwork",
    "SimilarityMaps",
    "SpatialKernelNetwork",
    "neighbour_similarity_maps",
    "similarity_maps",
]


@runtime_checkable
class SpatialKernelNetwork(Protocol):
    """A kernel network whose output is the mean over positions of :meth:`spatial_features`."""

    def spatial_features(self, x: Tensor) -> Tensor:
        """Per-position embeddings ``(N, H, D, *spatial)`` or ``(N, H·D, *spatial)``."""
        ...


class PooledSpatialKernelNetwork(nn.Module):
    """Backbone ``(N, C, *spatial)`` → per-position linear map ``C → H·D`` → mean over positions.

    ``forward(x)`` is ``(N, H·D)`` (a kernel network for :class:`CachedDeepKernel`) and
    :meth:`spatial_features` exposes the per-position embeddings the maps decompose.

    :param backbone: convolutional stage producing ``(N, C, *spatial)``.
    :param channels: ``C``.
    :param num_heads: ``H``.
    :param embedding_dim: ``D``.
    :param head: apply a linear map ``C → H·D`` per position (with bias); ``False`` requires
        ``C == H·D`` and uses the backbone's channels directly.
    """

    def __init__(
        self, backbone: nn.Module, channels: int, num_heads: int, embedding_dim: int, *, head: bool = True
    ) -> None:
        for name, value in (("channels", channels), ("num_heads", num_heads), ("embedding_dim", embedding_dim)):
            check_positive_int(name, value)
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone: expected a torch.nn.Module, got {type(backbone).__name__}")
        super().__init__()
        width = num_heads * embedding_dim
        if not head and channels != width:
            raise ValueError(f"channels: without a head, expected num_heads x embedding_dim = {width}, got {channels}")
        self.backbone = backbone
        self.head = nn.Linear(channels, width) if head else None
        self.num_heads = num_heads
        self.embedding_dim = embedding_dim

    def spatial_features(self, x: Tensor) -> Tensor:
        """``(N, H·D, *spatial)``: the linear head applied at every position of the backbone's map."""
        features = self.backbone(x)
        if self.head is None:
            return features
        moved = features.movedim(1, -1)  # shape: (N, *spatial, C)
        return self.head(moved).movedim(-1, 1)  # shape: (N, H·D, *spatial)

    def forward(self, x: Tensor) -> Tensor:
        # Mean over positions after the per-position head == head after the mean (it is affine).
        return self.spatial_features(x).flatten(2).mean(-1)


@dataclass(frozen=True)
class SimilarityMaps:
    """Similarity maps of ``N`` test inputs against ``K`` neighbours each.

    :ivar input_maps: ``(N, K, *spatial)`` contribution of each position of the test input.
    :ivar neighbour_maps: ``(N, K, *spatial')`` contribution of each position of the neighbour.
    :ivar similarities: ``(N, K)`` the kernel similarities; each map plus its offset sums to them.
    :ivar heads: ``(N,)`` the head whose kernel was decomposed.
    :ivar input_offsets: ``(N, K)`` :math:`k_l(b, \tilde x)` with a baseline ``b``, else zeros:
        ``input_maps`` sum to ``similarities - input_offsets``.
    :ivar neighbour_offsets: ``(N, K)`` :math:`k_l(x, b)` with a baseline, else zeros.
    """

    input_maps: Tensor
    neighbour_maps: Tensor
    similarities: Tensor
    heads: Tensor
    input_offsets: Tensor
    neighbour_offsets: Tensor


def _spatial_network(model: GPEXModel | CachedDeepKernel) -> tuple[CachedDeepKernel, nn.Module]:
    kernel = model.covar_module if isinstance(model, GPEXModel) else model
    if not isinstance(kernel, CachedDeepKernel):
        raise TypeError(f"model: expected a GPEXModel or a CachedDeepKernel, got {type(model).__name__}")
    network = kernel.feature_extractor
    if not isinstance(network, SpatialKernelNetwork):
        raise TypeError(
            f"model: the kernel network ({type(network).__name__}) has no spatial_features(x); similarity maps "
            "need a spatial stage before pooling (see PooledSpatialKernelNetwork)"
        )
    return kernel, network


def _per_position(features: Tensor, num_heads: int, dim: int) -> tuple[Tensor, tuple[int, ...]]:
    """``(N, H, D, P)`` and the spatial shape, from either accepted layout."""
    if features.dim() >= 4 and tuple(features.shape[1:3]) == (num_heads, dim):
        spatial = tuple(features.shape[3:])
    elif features.dim() >= 3 and features.shape[1] == num_heads * dim:
        spatial = tuple(features.shape[2:])
    else:
        raise ValueError(
            f"spatial_features: expected (N, {num_heads}, {dim}, *spatial) or (N, {num_heads * dim}, *spatial), "
            f"got {tuple(features.shape)}"
        )
    return features.reshape(features.shape[0], num_heads, dim, math.prod(spatial)), spatial


@torch.no_grad()
def similarity_maps(
    model: GPEXModel | CachedDeepKernel,
    inputs: Tensor,
    neighbour_inputs: Tensor,
    heads: int | Tensor,
    *,
    baseline: Tensor | None = None,
    check_tol: float = 1e-4,
) -> SimilarityMaps:
    """Decompose the kernel similarity of each test input with each of its neighbours over positions.

    :param model: a GPEX model (or its kernel) whose kernel network follows :class:`SpatialKernelNetwork`.
    :param inputs: ``(N, ...)`` test inputs.
    :param neighbour_inputs: ``(N, K, ...)`` the inputs to compare each test input with.
    :param heads: one head index for all, or ``(N,)`` head indices.
    :param baseline: one input (the shape of ``inputs[0]``) to subtract per position, e.g.
        ``torch.zeros_like(inputs[0])`` for a blank image (see the module docstring); ``None``: none.
    :param check_tol: the pooled spatial features must match the kernel's embedding to this relative
        tolerance (guards against a ``spatial_features`` that does not pool to ``forward``).
    :raises TypeError: if the kernel network has no ``spatial_features``.
    :raises ValueError: for mismatched shapes, head indices out of range, or a network whose
        pooled spatial features are not its embedding.
    """
    kernel, network = _spatial_network(model)
    num_heads, dim = kernel.num_heads, kernel.embedding_dim
    if not isinstance(inputs, Tensor) or not isinstance(neighbour_inputs, Tensor):
        raise TypeError("inputs, neighbour_inputs: expected tensors")
    n = inputs.shape[0]
    if neighbour_inputs.dim() != inputs.dim() + 1 or neighbour_inputs.shape[0] != n:
        raise ValueError(
            f"neighbour_inputs: expected shape (N={n}, K, *{tuple(inputs.shape[1:])}), "
            f"got {tuple(neighbour_inputs.shape)}"
        )
    k = neighbour_inputs.shape[1]
    if baseline is not None:
        check_tensor("baseline", baseline, shape=tuple(inputs.shape[1:]), finite=True)
        if neighbour_inputs.shape[2:] != inputs.shape[1:]:
            raise ValueError("baseline: needs inputs and neighbour_inputs of the same shape per example")
    chosen = torch.full((n,), heads, dtype=torch.long) if isinstance(heads, int) else heads.long().cpu()
    if chosen.shape != (n,) or bool((chosen < 0).any() | (chosen >= num_heads).any()):
        raise ValueError(f"heads: expected an index or (N,) indices in [0, {num_heads - 1}], got {heads}")
    device = kernel.embeddings.device
    chosen = chosen.to(device)
    rows = torch.arange(n, device=device)
    sx, spatial_x = _per_position(network.spatial_features(inputs.to(device)), num_heads, dim)
    sn, spatial_n = _per_position(network.spatial_features(neighbour_inputs.to(device).flatten(0, 1)), num_heads, dim)
    # The protocol check: pooled per-position embeddings must be the kernel's own embedding.
    pooled, embedded = sx.mean(-1), kernel.embed(inputs.to(device)).transpose(0, 1)  # (N, H, D) each
    scale = embedded.abs().max().clamp_min(1e-12)
    if float((pooled - embedded).abs().max() / scale) > check_tol:
        raise ValueError(
            "model: the kernel network's output is not the mean over positions of its spatial_features(x); "
            "similarity maps would not sum to the kernel similarity"
        )
    sx = sx[rows, chosen].double()  # shape: (N, D, P)
    sn = sn.reshape(n, k, num_heads, dim, -1)[rows, :, chosen].double()  # shape: (N, K, D, P')
    fx, fn = sx.mean(-1), sn.mean(-1)  # shape: (N, D), (N, K, D)
    input_offsets = torch.zeros(n, k, dtype=torch.float64, device=device)
    neighbour_offsets = torch.zeros_like(input_offsets)
    if baseline is not None:
        sb, _ = _per_position(network.spatial_features(baseline[None].to(device)), num_heads, dim)
        sb = sb[0, chosen].double()  # shape: (N, D, P): the baseline's features in each row's head
        fb = sb.mean(-1)  # shape: (N, D)
        input_offsets = torch.einsum("nd,nkd->nk", fb, fn)
        neighbour_offsets = torch.einsum("nd,nd->n", fx, fb)[:, None].expand(n, k)
        sx, sn = sx - sb, sn - sb[:, None]
    input_maps = torch.einsum("ndp,nkd->nkp", sx, fn) / sx.shape[-1]
    neighbour_maps = torch.einsum("nd,nkdq->nkq", fx, sn) / sn.shape[-1]
    return SimilarityMaps(
        input_maps=input_maps.reshape(n, k, *spatial_x),
        neighbour_maps=neighbour_maps.reshape(n, k, *spatial_n),
        similarities=torch.einsum("nd,nkd->nk", fx, fn),
        heads=chosen,
        input_offsets=input_offsets,
        neighbour_offsets=neighbour_offsets.contiguous(),
    )


def neighbour_similarity_maps(
    model: GPEXModel,
    inputs: Tensor,
    inducing_inputs: Tensor,
    neighbours: Neighbours,
    *,
    baseline: Tensor | None = None,
) -> SimilarityMaps:
    """Maps for the neighbours found by :func:`~gpex_gpytorch.explain.nearest_neighbours`.

    :param inducing_inputs: ``(M, ...)`` the inducing inputs (the neighbours' indices point into it).
    :param baseline: see :func:`similarity_maps`.
    """
    if inducing_inputs.shape[0] != model.covar_module.num_inducing:
        raise ValueError(
            f"inducing_inputs: expected M={model.covar_module.num_inducing} rows, got {inducing_inputs.shape[0]}"
        )
    if not isinstance(neighbours, Neighbours):
        raise TypeError(f"neighbours: expected a Neighbours (from nearest_neighbours), got {type(neighbours).__name__}")
    num_inducing = model.covar_module.num_inducing
    index = neighbours.indices
    if index.dim() != 2 or index.shape[0] != inputs.shape[0]:
        raise ValueError(f"neighbours: expected indices of shape (N={inputs.shape[0]}, K), got {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_inducing):
        raise ValueError(
            f"neighbours: expected indices in [0, {num_inducing - 1}], got values in "
            f"[{int(index.min())}, {int(index.max())}]"
        )
    gathered = inducing_inputs[index.cpu()]  # shape: (N, K, ...)
    return similarity_maps(model, inputs, gathered, neighbours.heads, baseline=baseline)
