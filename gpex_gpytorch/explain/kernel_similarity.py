r"""How similar a test input is to each inducing instance in a GP head's kernel space.

One implementation of the scoring that every neighbour-based explanation reads
(:func:`~gpex_gpytorch.explain.nearest_neighbours`, the label review, the report, the sharded
search), so that they all rank by the same numbers. For head :math:`l`, query embedding
:math:`q = f_l(x)` and inducing embedding :math:`u_m = f_l(\tilde x_m)`, the metrics are:

``"correlation"`` (the default)
    the kernel correlation :math:`k(x, \tilde x_m) / \sqrt{k(x, x)\, k(\tilde x_m, \tilde x_m)}`,
    i.e. the cosine of the two embeddings, in ``[-1, 1]``; ``0`` when either embedding is zero.
``"distance"``
    the kernel-induced distance :math:`\|q - u_m\| = \sqrt{k(x,x) - 2k(x,\tilde x_m) + k(\tilde x_m,\tilde x_m)}`;
    scores are its negation, so that larger is always more similar.
``"kernel"``
    the raw kernel value :math:`k(x, \tilde x_m) = q^\top u_m` (what the GP's posterior uses; it
    ranks largely by the norm of :math:`u_m`, so a few large-norm instances become everybody's
    neighbours: see ``docs/explanations.md``).
``"contribution"``
    the instance's exact share of the posterior mean,
    :math:`k(x, \tilde x_m)\,\alpha_{l,m}` with :math:`\alpha_l = (K_l + \sigma^2 I)^{-1} v_l`,
    so that :math:`\mu_l(x) = \sum_m k(x, \tilde x_m)\,\alpha_{l,m}`. By the push-through identity
    :math:`\alpha_l = (v_l - U_l w_l) / \sigma^2` with :math:`w_l = (G_l + \sigma^2 I)^{-1} U_l^\top v_l`:
    one :math:`O(D)` dot product per instance, no :math:`M \times M` solve.

The scan visits the inducing set in chunks of ``chunk_size`` rows and the queries in batches of
``query_batch_size``, so memory is bounded by ``query_batch_size × chunk_size`` scores whatever
``M`` and ``N`` are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..kernels import CachedDeepKernel
from ..models.gpex_model import GPEXModel
from ..utils import check_input_data, check_tensor, module_dtype

__all__ = [
    "DEFAULT_METRIC",
    "SIMILARITY_METRICS",
    "KernelQueries",
    "check_metric",
    "check_queries",
    "choose_heads",
    "embed_queries",
    "score_block",
    "similarity_matrix",
    "top_k_inducing",
]

SIMILARITY_METRICS = ("correlation", "distance", "kernel", "contribution")
# Chosen on the measurements in docs/explanations.md (benchmarks/neighbour_quality.py): the kernel
# correlation spreads neighbours over the training set and agrees with the network's decision at
# least as often as the raw kernel value.
DEFAULT_METRIC = "correlation"


def check_metric(metric: object) -> str:
    """Return ``metric`` if it is one of :data:`SIMILARITY_METRICS`, else raise ``ValueError`` listing them."""
    if not isinstance(metric, str) or metric not in SIMILARITY_METRICS:
        raise ValueError(f"metric: expected one of {', '.join(map(repr, SIMILARITY_METRICS))}, got {metric!r}")
    return metric


def check_queries(model: GPEXModel, inputs: object, name: str = "inputs") -> Tensor:
    """The shared input-data check (dtype, device, NaN, empty) for a batch of queries of ``model``."""
    kernel = model.covar_module
    dtype = module_dtype(kernel.feature_extractor)
    return check_input_data(name, inputs, dtype=dtype, device=kernel.embeddings.device, integer_ok=True)


def choose_heads(model: GPEXModel, mean: Tensor | None, heads: object, num_queries: int) -> Tensor:
    """The head whose kernel space is searched for each query, ``(N,)`` long.

    :param mean: ``(N, H)`` posterior means (needed only for ``heads="predicted"``).
    :param heads: ``"predicted"`` (arg-max of ``mean``), one ``int`` head for all, or an ``(N,)``
        integer tensor.
    """
    num_heads = model.num_heads
    device = model.covar_module.embeddings.device
    if isinstance(heads, str):
        if heads != "predicted":
            raise ValueError(f"heads: expected 'predicted', an int or a tensor of head indices, got {heads!r}")
        if mean is None:
            raise ValueError("heads: 'predicted' needs the posterior means")
        return mean.argmax(1).to(device)
    if isinstance(heads, int) and not isinstance(heads, bool):
        if not 0 <= heads < num_heads:
            raise ValueError(f"heads: expected a head index in [0, {num_heads - 1}], got {heads}")
        return torch.full((num_queries,), heads, dtype=torch.long, device=device)
    if not isinstance(heads, Tensor):
        raise TypeError(f"heads: expected 'predicted', an int or a tensor of head indices, got {type(heads).__name__}")
    check_tensor("heads", heads, shape=(num_queries,))
    if heads.is_floating_point() or heads.is_complex() or heads.dtype == torch.bool:
        raise TypeError(f"heads: expected an integer tensor of head indices, got dtype {heads.dtype}")
    chosen = heads.to(device=device, dtype=torch.long)
    if bool((chosen < 0).any() | (chosen >= num_heads).any()):
        raise ValueError(f"heads: expected indices in [0, {num_heads - 1}], got {chosen.tolist()}")
    return chosen


@dataclass(frozen=True)
class KernelQueries:
    """Query embeddings in the kernel space of each query's head.

    :ivar embeddings: ``(N, D)`` :math:`f_{h_n}(x_n)` in the kernel's statistics dtype.
    :ivar heads: ``(N,)`` the head of each query.
    :ivar weights: ``(H, D)`` :math:`w_l = (G_l+\\sigma^2 I)^{-1} b_l` (for ``"contribution"``), else ``None``.
    :ivar noise: ``(H,)`` :math:`\\sigma^2_l` (for ``"contribution"``), else ``None``.
    """

    embeddings: Tensor
    heads: Tensor
    weights: Tensor | None = None
    noise: Tensor | None = None


def embed_queries(model: GPEXModel, inputs: Tensor, heads: Tensor, metric: str, batch_size: int) -> KernelQueries:
    """Embed ``inputs`` (in batches, no gradient) and keep each one's own head: ``(N, D)``."""
    kernel = model.covar_module
    dtype = kernel.statistics_dtype
    parts = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            chunk = inputs[start : start + batch_size].to(kernel.embeddings.device)
            rows = torch.arange(chunk.shape[0], device=heads.device)
            parts.append(kernel.embed(chunk)[heads[start : start + batch_size], rows].to(dtype))
        weights = noise = None
        if metric == "contribution":
            strategy = model.variational_strategy
            weights = strategy.posterior_weights().to(dtype)  # shape: (H, D)
            noise = strategy.noise.detach().to(dtype).expand(kernel.num_heads).to(weights.device)
    return KernelQueries(torch.cat(parts), heads, weights, noise)


def score_block(kernel: CachedDeepKernel, queries: KernelQueries, metric: str, start: int, stop: int) -> Tensor:
    """Scores of every query against inducing rows ``start:stop`` (larger = more similar): ``(N, C)``."""
    q, heads = queries.embeddings, queries.heads
    scores = torch.empty((q.shape[0], stop - start), dtype=q.dtype, device=q.device)
    for head in heads.unique().tolist():
        members = (heads == head).nonzero().flatten()
        block = kernel.embeddings[head, start:stop].to(q.dtype)  # shape: (C, D)
        values = q[members] @ block.T  # k(x, x̃_m), shape: (N_head, C)
        if metric == "correlation":
            norms = q[members].norm(dim=1, keepdim=True) * block.norm(dim=1)
            # A zero embedding has no direction: correlation 0 rather than 0/0.
            values = torch.where(norms > 0, values / norms.clamp_min(torch.finfo(q.dtype).tiny), 0.0)
        elif metric == "distance":
            squared = q[members].square().sum(1, keepdim=True) - 2 * values + block.square().sum(1)
            values = -squared.clamp_min(0).sqrt()
        elif metric == "contribution":
            assert queries.weights is not None and queries.noise is not None
            v = kernel.inducing_values[start:stop, head].to(q.dtype)  # shape: (C,)
            alpha = (v - block @ queries.weights[head]) / queries.noise[head]
            values = values * alpha
        scores[members] = values
    return scores


def _query_batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def top_k_inducing(
    model: GPEXModel,
    queries: KernelQueries,
    k: int,
    metric: str,
    *,
    chunk_size: int,
    query_batch_size: int,
    largest: bool = True,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` inducing rows per query, ``(scores (N, k), indices (N, k))``, best first.

    With ``largest=False`` the ``k`` smallest scores, smallest first (e.g. the instances that pull
    the posterior mean down most, for ``"contribution"``).
    """
    kernel = model.covar_module
    # The rows this process holds (all M, or one shard's under torch.distributed).
    num_inducing, n = kernel.embeddings.shape[1], queries.embeddings.shape[0]
    device, dtype = queries.embeddings.device, queries.embeddings.dtype
    fill = float("-inf") if largest else float("inf")
    out_scores = torch.empty((n, k), dtype=dtype, device=device)
    out_index = torch.empty((n, k), dtype=torch.long, device=device)
    for rows in _query_batches(n, query_batch_size):
        part = KernelQueries(queries.embeddings[rows], queries.heads[rows], queries.weights, queries.noise)
        size = part.embeddings.shape[0]
        best = torch.full((size, k), fill, dtype=dtype, device=device)
        best_index = torch.zeros((size, k), dtype=torch.long, device=device)
        for start in range(0, num_inducing, chunk_size):
            stop = min(num_inducing, start + chunk_size)
            scores = score_block(kernel, part, metric, start, stop)
            positions = torch.arange(start, stop, device=device).expand(size, -1)
            best, order = torch.cat([best, scores], 1).topk(k, dim=1, largest=largest, sorted=True)
            best_index = torch.cat([best_index, positions], 1).gather(1, order)
        out_scores[rows], out_index[rows] = best, best_index
    return out_scores, out_index


def similarity_matrix(model: GPEXModel, queries: KernelQueries, metric: str, *, chunk_size: int) -> Tensor:
    """All scores, ``(N, M)`` (for rankings that need every row's full ordering, e.g. the label review)."""
    kernel = model.covar_module
    rows = kernel.embeddings.shape[1]
    parts = [
        score_block(kernel, queries, metric, start, min(rows, start + chunk_size))
        for start in range(0, rows, chunk_size)
    ]
    return torch.cat(parts, 1)
