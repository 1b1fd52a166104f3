"""The inducing instances most similar to a test input in a GP head's kernel space (GPEX, Sec. 4)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.gpex_model import GPEXModel
from ..utils import check_positive_int, check_tensor
from .cache_freshness import check_cache_fresh
from .kernel_similarity import (
    DEFAULT_METRIC,
    check_metric,
    check_queries,
    choose_heads,
    embed_queries,
    top_k_inducing,
)

__all__ = ["HubnessWarning", "Hubness", "Neighbours", "hubness", "nearest_neighbours"]


class HubnessWarning(UserWarning):
    """One training instance is the top neighbour of too many queries: the explanation is degenerate."""


@dataclass(frozen=True)
class Hubness:
    """How evenly the neighbours of a batch of queries spread over the training set.

    :ivar num_queries: ``N``.
    :ivar distinct_top1: distinct training instances among the ``N`` top-1 neighbours.
    :ivar distinct: distinct training instances among all ``N × k`` neighbours.
    :ivar max_occurrence: the largest k-occurrence: the most queries whose ``k`` neighbours contain
        one training instance.
    :ivar max_top1_share: the largest fraction of queries that share one top-1 neighbour.
    :ivar hub: the training index with that share.
    """

    num_queries: int
    distinct_top1: int
    distinct: int
    max_occurrence: int
    max_top1_share: float
    hub: int

    def summary(self) -> dict[str, float | int]:
        """The fields as a JSON-ready dict."""
        return dict(vars(self))


def hubness(indices: Tensor) -> Hubness:
    """Hubness statistics of an ``(N, k)`` neighbour-index matrix (most similar first)."""
    check_tensor("indices", indices, ndim=2)
    if indices.shape[0] == 0 or indices.shape[1] == 0:
        raise ValueError(f"indices: expected a non-empty (N, k) matrix, got shape {tuple(indices.shape)}")
    index = indices.detach().cpu().long()
    top1_values, top1_counts = index[:, 0].unique(return_counts=True)
    # k-occurrence counts each query once per instance, even if a list repeated it.
    per_query = torch.cat([row.unique() for row in index])
    _, occurrence = per_query.unique(return_counts=True)
    best = int(top1_counts.argmax())
    return Hubness(
        num_queries=int(index.shape[0]),
        distinct_top1=int(top1_values.numel()),
        distinct=int(index.unique().numel()),
        max_occurrence=int(occurrence.max()),
        max_top1_share=float(top1_counts[best]) / index.shape[0],
        hub=int(top1_values[best]),
    )


@dataclass(frozen=True)
class Neighbours:
    """Nearest inducing instances of a batch of test inputs.

    :ivar indices: ``(N, k)`` inducing-set indices, most similar first.
    :ivar similarities: ``(N, k)`` their scores under ``metric`` (larger = more similar; for
        ``"distance"`` the negated kernel distance).
    :ivar kernel_values: ``(N, k)`` the kernel value :math:`k_l(x, \\tilde x_m) = f_l(x)^\\top f_l(\\tilde x_m)`
        (what the GP uses and what similarity maps sum to).
    :ivar heads: ``(N,)`` the head whose kernel space was searched for each input.
    :ivar mean: ``(N,)`` the GP's posterior mean of that head at the input.
    :ivar variance: ``(N,)`` its posterior variance.
    :ivar metric: the similarity used to rank (see :mod:`~gpex_gpytorch.explain.kernel_similarity`).
    """

    indices: Tensor
    similarities: Tensor
    kernel_values: Tensor
    heads: Tensor
    mean: Tensor
    variance: Tensor
    metric: str = DEFAULT_METRIC

    def hubness(self) -> Hubness:
        """How many distinct training instances serve these queries (see :func:`hubness`)."""
        return hubness(self.indices)


def _check_hubness(indices: Tensor, threshold: float) -> None:
    if indices.shape[0] < 20:  # too few queries for a share to mean anything
        return
    stats = hubness(indices)
    if stats.max_top1_share > threshold:
        warnings.warn(
            f"training instance {stats.hub} is the top neighbour of {stats.max_top1_share:.0%} of the "
            f"{stats.num_queries} queries ({stats.distinct_top1} distinct top-1 neighbours): the neighbours "
            "reflect embedding norms more than similarity; use metric='correlation' or 'distance'",
            HubnessWarning,
            stacklevel=3,
        )


@torch.no_grad()
def nearest_neighbours(
    model: GPEXModel,
    inputs: Tensor,
    k: int = 10,
    heads: str | int | Tensor = "predicted",
    *,
    metric: str = DEFAULT_METRIC,
    inducing_inputs: Tensor | None = None,
    chunk_size: int = 16384,
    query_batch_size: int = 1024,
    hub_warning: float | None = 0.1,
) -> Neighbours:
    """Exact top-``k`` inducing instances by kernel similarity, in bounded memory.

    :param model: a fitted GPEX model.
    :param inputs: a batch of test inputs (what the kernel network takes).
    :param k: neighbours per input, ``1 <= k <= M``.
    :param heads: ``"predicted"`` (the head of largest posterior mean, i.e. the predicted class),
        one head index for all inputs, or an ``(N,)`` integer tensor of head indices.
    :param metric: ``"correlation"`` (cosine in kernel space, the default), ``"distance"``
        (kernel-induced distance), ``"kernel"`` (raw kernel value) or ``"contribution"`` (share of
        the posterior mean); see :mod:`~gpex_gpytorch.explain.kernel_similarity`.
    :param inducing_inputs: the ``(M, ...)`` inducing inputs; when given, the cache's staleness is
        estimated on a sample and a :class:`~gpex_gpytorch.explain.StaleCacheWarning` is issued
        when the cached embeddings no longer match the kernel network.
    :param chunk_size: inducing rows scored at a time.
    :param query_batch_size: queries scored at a time (memory ``query_batch_size × chunk_size``).
    :param hub_warning: warn (:class:`HubnessWarning`) when one training instance is the top
        neighbour of more than this fraction of 20 or more queries; ``None`` disables it.
    """
    kernel = model.covar_module
    num_inducing = kernel.num_inducing
    metric = check_metric(metric)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_inducing:
        raise ValueError(f"k: expected an integer in [1, M={num_inducing}], got {k!r}")
    chunk_size = check_positive_int("chunk_size", chunk_size)
    query_batch_size = check_positive_int("query_batch_size", query_batch_size)
    if hub_warning is not None and not 0 < hub_warning <= 1:
        raise ValueError(f"hub_warning: expected None or a fraction in (0, 1], got {hub_warning!r}")
    check_queries(model, inputs)
    n = inputs.shape[0]
    if not isinstance(heads, str):
        choose_heads(model, None, heads, n)  # validate before any work
    if inducing_inputs is not None:
        check_cache_fresh(model, inducing_inputs)
    mean, variance = _predict_batched(model, inputs, query_batch_size)  # shape: (N, H) each
    chosen = choose_heads(model, mean, heads, n)
    queries = embed_queries(model, inputs, chosen, metric, query_batch_size)
    scores, indices = top_k_inducing(
        model, queries, k, metric, chunk_size=chunk_size, query_batch_size=query_batch_size
    )
    rows = torch.arange(n, device=chosen.device)
    # The kernel value of each returned neighbour, whatever the ranking metric.
    cached = kernel.embeddings[chosen.unsqueeze(1), indices].to(queries.embeddings.dtype)  # shape: (N, k, D)
    kernel_values = (cached @ queries.embeddings.unsqueeze(-1)).squeeze(-1)
    if hub_warning is not None:
        _check_hubness(indices, hub_warning)
    return Neighbours(
        indices=indices,
        similarities=scores.to(mean.dtype),
        kernel_values=kernel_values.to(mean.dtype),
        heads=chosen,
        mean=mean[rows, chosen],
        variance=variance[rows, chosen],
        metric=metric,
    )


def _predict_batched(model: GPEXModel, inputs: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    parts = [model.predict(inputs[start : start + batch_size]) for start in range(0, inputs.shape[0], batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
