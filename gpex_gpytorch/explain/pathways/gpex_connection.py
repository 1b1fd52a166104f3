"""Connection to GPEX: do inputs with similar pathways sit close in an embedding (kernel) space?

GPEX explains a network through a GP whose kernel compares inputs in a learnt feature space; a
pathway explains the same network through the channels an input needs. If both describe the same
mechanism, pairs of inputs with overlapping pathways should be pairs the kernel calls similar.

The measurement: for ``N`` inputs, the pairwise pathway IoU matrix (:func:`pairwise_iou`) and the
pairwise kernel similarity matrix in the embedding space are compared by the **Spearman rank
correlation** over the ``N (N - 1) / 2`` distinct pairs. Because pairs sharing an input are not
independent, the significance is a **Mantel permutation test** (inputs of one matrix permuted,
rows and columns together) rather than the textbook Spearman p-value. Same-class pairs have both
higher IoU and higher kernel similarity, so a large correlation can come from class membership
alone; the **within-class** Spearman (computed over same-class pairs of each class, averaged over
classes) tells whether the agreement reaches below the class level.

The embedding is any callable ``embed(x) -> (N, D)`` or ``(H, N, D)`` (``H`` heads, e.g. one GP
kernel space per output; their similarity matrices are averaged).

The second measurement asks how much of the GP's explanation *survives* a pathway
(:func:`pathway_kernel_survival`). A GPEX model that explains a sub-module of the network (e.g. the
classifier head, whose input is the penultimate activations) embeds that sub-module's input with
its kernel network. Running the network under the pathway changes that input; the GP then sees a
different point. For each input: the cosine similarity between the kernel embeddings of the
masked and the full sub-module input (in the head of the GP's predicted class; the kernel is
linear in the embedding, so this is the normalised kernel value between the two), the overlap of
their top-``k`` kernel neighbours among the inducing examples (the GP's example-based
explanation), and whether the GP's predicted class is unchanged. Only public GP-side calls are
used: :meth:`GPEXModel.predict`, ``covar_module.embed`` and :func:`nearest_neighbours`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor, nn

from gpex_gpytorch.explain.kernel_similarity import DEFAULT_METRIC
from gpex_gpytorch.explain.nearest_neighbours import nearest_neighbours
from gpex_gpytorch.explain.pathways.channel_masks import apply_channel_masks
from gpex_gpytorch.explain.pathways.metrics import pairwise_iou
from gpex_gpytorch.models.gpex_model import GPEXModel
from gpex_gpytorch.utils import resolve_submodule
from gpex_gpytorch.utils.hooks import ForwardHooks, ModuleCall

__all__ = [
    "EmbedFn",
    "PathwayEmbeddingCorrelation",
    "SimilarityKind",
    "PathwayKernelSurvival",
    "kernel_similarity",
    "pathway_embedding_correlation",
    "pathway_kernel_survival",
    "submodule_inputs",
    "spearman_upper",
]

EmbedFn = Callable[[Tensor], Tensor]
SimilarityKind = Literal["rbf", "cosine"]


def kernel_similarity(
    embedding: Tensor,
    kind: SimilarityKind | Callable[[Tensor], Tensor] = "rbf",
    *,
    lengthscale: float | None = None,
) -> Tensor:
    """Pairwise similarity ``(N, N)`` of an embedding ``(N, D)`` or ``(H, N, D)`` (averaged over heads).

    :param kind: ``"rbf"``: ``exp(-|a - b|^2 / (2 l^2))`` with ``l`` the median pairwise distance
        of the head unless given (for one head the Spearman correlation does not depend on ``l``,
        the kernel being monotone in the distance); ``"cosine"``: cosine similarity; or a callable
        mapping ``(N, D)`` to an ``(N, N)`` kernel matrix (e.g. a GPyTorch kernel's ``to_dense``).
    """
    if embedding.dim() == 2:
        embedding = embedding[None]
    if embedding.dim() != 3:
        raise ValueError(f"embedding: expected shape (N, D) or (H, N, D), got {tuple(embedding.shape)}")
    if lengthscale is not None and not lengthscale > 0:
        raise ValueError(f"lengthscale: expected a value > 0, got {lengthscale}")
    heads: list[Tensor] = []
    for head in embedding.detach().to(torch.float64):
        if callable(kind):
            sim = torch.as_tensor(kind(head), dtype=torch.float64)
        elif kind == "cosine":
            unit = torch.nn.functional.normalize(head, dim=1)
            sim = unit @ unit.T
        elif kind == "rbf":
            sq = torch.cdist(head, head).pow(2)
            if lengthscale is None:
                off = sq[~torch.eye(sq.shape[0], dtype=torch.bool)]
                scale = float(off.sqrt().median()) if off.numel() else 1.0
                scale = scale if scale > 0 else 1.0
            else:
                scale = lengthscale
            sim = torch.exp(-sq / (2 * scale**2))
        else:
            raise ValueError(f"kind: expected 'rbf', 'cosine' or a callable, got {kind!r}")
        if sim.shape != (head.shape[0], head.shape[0]):
            raise ValueError(f"kind: the similarity must be ({head.shape[0]}, {head.shape[0]}), got {tuple(sim.shape)}")
        heads.append(sim)
    return torch.stack(heads).mean(dim=0)


def spearman_upper(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of the strictly-upper-triangular entries of two square matrices (average ranks for ties)."""
    rows, cols = np.triu_indices(a.shape[0], k=1)
    return _pearson(rankdata(a[rows, cols]), rankdata(b[rows, cols]))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


@dataclass(frozen=True)
class PathwayEmbeddingCorrelation:
    """Result of :func:`pathway_embedding_correlation`.

    :ivar spearman: rank correlation over all pairs.
    :ivar p_value: one-sided Mantel permutation p-value for ``spearman > 0``.
    :ivar within_class_spearman: mean over classes of the within-class rank correlation
        (``None`` without classes).
    :ivar n_inputs: number of inputs.
    :ivar n_permutations: permutations of the Mantel test.
    """

    spearman: float
    p_value: float
    within_class_spearman: float | None
    n_inputs: int
    n_permutations: int


def pathway_embedding_correlation(
    masks: Mapping[str, Tensor] | Tensor,
    x: Tensor,
    embed: EmbedFn,
    *,
    classes: Tensor | None = None,
    similarity: SimilarityKind | Callable[[Tensor], Tensor] = "rbf",
    n_permutations: int = 199,
    seed: int = 0,
) -> PathwayEmbeddingCorrelation:
    """Spearman correlation between pathway IoU and kernel similarity in ``embed``'s space.

    :param masks: binary pathways of ``x`` (``{layer: (N, C)}`` or ``(N, D)``).
    :param x: the inputs, passed to ``embed`` under ``torch.no_grad``.
    :param embed: ``x -> (N, D)`` or ``(H, N, D)``.
    :param classes: ``(N,)`` classes for the within-class correlation (e.g. the network's predictions).
    :param similarity: see :func:`kernel_similarity`.
    :param n_permutations: Mantel permutations (0 skips the test; the p-value is then ``nan``).
    """
    iou = pairwise_iou(masks).double().numpy()
    n = iou.shape[0]
    if n < 3:
        raise ValueError(f"masks: expected at least 3 inputs for a rank correlation, got {n}")
    if x.shape[0] != n:
        raise ValueError(f"x: expected {n} inputs to match the masks, got {x.shape[0]}")
    if n_permutations < 0:
        raise ValueError(f"n_permutations: expected >= 0, got {n_permutations}")
    with torch.no_grad():
        embedding = embed(x)
    if not isinstance(embedding, Tensor) or embedding.dim() not in (2, 3) or embedding.shape[-2] != n:
        shape = tuple(embedding.shape) if isinstance(embedding, Tensor) else type(embedding).__name__
        raise ValueError(f"embed: expected a tensor of shape ({n}, D) or (H, {n}, D), got {shape}")
    sim = kernel_similarity(embedding, similarity).numpy()

    rows, cols = np.triu_indices(n, k=1)
    rank_iou = np.zeros((n, n))
    rank_iou[rows, cols] = rankdata(iou[rows, cols])
    rank_iou = rank_iou + rank_iou.T
    rank_sim = rankdata(sim[rows, cols])
    observed = _pearson(rank_iou[rows, cols], rank_sim)

    p_value = float("nan")
    if n_permutations > 0:
        rng = np.random.default_rng(seed)
        exceed = 0
        for _ in range(n_permutations):
            perm = rng.permutation(n)
            permuted = rank_iou[perm][:, perm][rows, cols]
            exceed += _pearson(permuted, rank_sim) >= observed
        p_value = (exceed + 1) / (n_permutations + 1)

    within: float | None = None
    if classes is not None:
        if classes.shape != (n,):
            raise ValueError(f"classes: expected shape ({n},), got {tuple(classes.shape)}")
        values = []
        labels = classes.cpu().numpy()
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            if idx.size >= 3:
                value = spearman_upper(iou[np.ix_(idx, idx)], sim[np.ix_(idx, idx)])
                if np.isfinite(value):
                    values.append(value)
        within = float(np.mean(values)) if values else float("nan")
    return PathwayEmbeddingCorrelation(
        spearman=observed,
        p_value=p_value,
        within_class_spearman=within,
        n_inputs=n,
        n_permutations=n_permutations,
    )


@torch.no_grad()
def submodule_inputs(
    model: nn.Module,
    submodule: str,
    x: Tensor,
    masks: Mapping[str, Tensor] | None = None,
    *,
    batch_size: int = 512,
) -> Tensor:
    """The input of ``model``'s sub-module ``submodule`` on ``x``, with the pathway ``masks`` applied upstream.

    :param submodule: dotted sub-module name (e.g. ``"classifier"``); its first positional input is read.
    :param masks: ``{layer: (N, C)}`` per-instance pathways, or ``None`` for the full network.
    :raises ValueError: unknown ``submodule`` (naming the argument), or masks for another number of inputs.
    """
    name, module = resolve_submodule(model, submodule, argument="submodule")
    if masks is not None:
        for layer, mask in masks.items():
            if mask.shape[0] != x.shape[0]:
                raise ValueError(f"masks[{layer!r}]: expected {x.shape[0]} rows, one per input, got {mask.shape[0]}")
    captured: list[Tensor] = []

    def record(call: ModuleCall) -> None:
        captured.append(call.value.detach())

    with ForwardHooks({name: module}, record, site="input"):
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            if masks is None:
                model(chunk)
            else:
                with apply_channel_masks(model, {n: m[start : start + batch_size] for n, m in masks.items()}):
                    model(chunk)
    return torch.cat(captured)


@dataclass(frozen=True)
class PathwayKernelSurvival:
    """How much of a GPEX explanation survives a pathway (:func:`pathway_kernel_survival`), means over inputs.

    :ivar embedding_cosine: cosine between the kernel embeddings of the masked and the full input.
    :ivar neighbour_overlap: ``|top-k(masked) ∩ top-k(full)| / k`` over the inducing examples.
    :ivar prediction_agreement: share of inputs whose GP-predicted class is unchanged.
    :ivar k: neighbours compared.
    :ivar per_input_cosine: ``(N,)`` the cosines, for spreads and plots.
    """

    embedding_cosine: float
    neighbour_overlap: float
    prediction_agreement: float
    k: int
    per_input_cosine: Tensor

    def to_dict(self) -> dict[str, float]:
        """The means, JSON-ready."""
        return {
            "embedding_cosine": self.embedding_cosine,
            "neighbour_overlap": self.neighbour_overlap,
            "prediction_agreement": self.prediction_agreement,
            "k": self.k,
        }


@torch.no_grad()
def pathway_kernel_survival(
    gp: GPEXModel, full_inputs: Tensor, masked_inputs: Tensor, *, k: int = 10, metric: str = DEFAULT_METRIC
) -> PathwayKernelSurvival:
    """Compare a GPEX model's view of full and pathway-masked sub-module inputs (see the module docs).

    :param gp: a fitted :class:`GPEXModel` whose kernel network takes the sub-module's input.
    :param full_inputs: ``(N, ...)`` the sub-module's inputs from the full network (:func:`submodule_inputs`).
    :param masked_inputs: the same inputs computed under the pathways.
    :param k: neighbours compared, ``1 <= k <= M``.
    :param metric: how neighbours are ranked (:func:`~gpex_gpytorch.explain.nearest_neighbours`).
    """
    if not isinstance(gp, GPEXModel):
        raise TypeError(f"gp: expected a GPEXModel, got {type(gp).__name__}")
    if full_inputs.shape != masked_inputs.shape or full_inputs.dim() < 2:
        raise ValueError(
            f"masked_inputs: expected the shape of full_inputs {tuple(full_inputs.shape)}, "
            f"got {tuple(masked_inputs.shape)}"
        )
    device = gp.covar_module.embeddings.device
    full_inputs, masked_inputs = full_inputs.to(device), masked_inputs.to(device)
    mean_full, _ = gp.predict(full_inputs)
    mean_masked, _ = gp.predict(masked_inputs)
    heads = mean_full.argmax(dim=1)
    rows = torch.arange(full_inputs.shape[0], device=heads.device)
    a = gp.covar_module.embed(full_inputs)[heads, rows].double()  # shape: (N, D)
    b = gp.covar_module.embed(masked_inputs)[heads, rows].double()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30)
    near_full = nearest_neighbours(gp, full_inputs, k=k, heads=heads, metric=metric, hub_warning=None).indices
    near_masked = nearest_neighbours(gp, masked_inputs, k=k, heads=heads, metric=metric, hub_warning=None).indices
    overlap = (near_full[:, :, None] == near_masked[:, None, :]).any(dim=2).double().mean(dim=1)
    agreement = (mean_masked.argmax(dim=1) == heads).double().mean()
    return PathwayKernelSurvival(
        embedding_cosine=float(cosine.mean()),
        neighbour_overlap=float(overlap.mean()),
        prediction_agreement=float(agreement),
        k=k,
        per_input_cosine=cosine.cpu(),
    )
