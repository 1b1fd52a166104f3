r"""Which training instances pushed a prediction up, and which pulled it down.

The posterior mean of head :math:`l` decomposes exactly over the inducing instances,

.. math::
    \mu_l(x) = \sum_m k_l(x, \tilde x_m)\, \alpha_{l,m}, \qquad
    \alpha_l = (K_l + \sigma^2 I)^{-1} v_l = (v_l - U_l w_l) / \sigma^2,

with :math:`w_l = (G_l + \sigma^2 I)^{-1} U_l^\top v_l` (push-through identity), so each term costs
one :math:`O(D)` dot product and no :math:`M \times M` system is solved. This is the GP-native
view of "which examples explain this decision", the analogue of representer points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.gpex_model import GPEXModel
from ..utils import check_positive_int
from .kernel_similarity import (
    KernelQueries,
    check_queries,
    choose_heads,
    embed_queries,
    score_block,
    top_k_inducing,
)

__all__ = ["Contributions", "posterior_contributions"]


@dataclass(frozen=True)
class Contributions:
    r"""The largest positive and negative terms of :math:`\mu_l(x) = \sum_m k_l(x, \tilde x_m)\alpha_{l,m}`.

    :ivar positive_indices: ``(N, k)`` inducing indices that push the mean up most, largest first.
    :ivar positive: ``(N, k)`` their contributions.
    :ivar negative_indices: ``(N, k)`` inducing indices that pull it down most, most negative first.
    :ivar negative: ``(N, k)`` their contributions.
    :ivar total: ``(N,)`` the sum over all ``M`` terms (equals ``mean`` to float precision).
    :ivar mean: ``(N,)`` the posterior mean of the head.
    :ivar heads: ``(N,)`` the head explained for each input.
    """

    positive_indices: Tensor
    positive: Tensor
    negative_indices: Tensor
    negative: Tensor
    total: Tensor
    mean: Tensor
    heads: Tensor


@torch.no_grad()
def posterior_contributions(
    model: GPEXModel,
    inputs: Tensor,
    k: int = 5,
    heads: str | int | Tensor = "predicted",
    *,
    chunk_size: int = 16384,
    query_batch_size: int = 1024,
) -> Contributions:
    """The ``k`` inducing instances contributing most (and least) to each input's posterior mean.

    :param model: a fitted GPEX model.
    :param inputs: ``(N, ...)`` test inputs.
    :param k: terms kept on each side, ``1 <= k <= M``.
    :param heads: ``"predicted"`` (arg-max of the posterior mean), an ``int``, or ``(N,)`` indices.
    :param chunk_size: inducing rows scored at a time.
    :param query_batch_size: inputs scored at a time.
    """
    kernel = model.covar_module
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= kernel.num_inducing:
        raise ValueError(f"k: expected an integer in [1, M={kernel.num_inducing}], got {k!r}")
    chunk_size = check_positive_int("chunk_size", chunk_size)
    query_batch_size = check_positive_int("query_batch_size", query_batch_size)
    check_queries(model, inputs)
    n = inputs.shape[0]
    if not isinstance(heads, str):
        choose_heads(model, None, heads, n)
    means = torch.cat([model.predict(inputs[s : s + query_batch_size])[0] for s in range(0, n, query_batch_size)])
    chosen = choose_heads(model, means, heads, n)
    queries = embed_queries(model, inputs, chosen, "contribution", query_batch_size)
    options = {"chunk_size": chunk_size, "query_batch_size": query_batch_size}
    pos, pos_idx = top_k_inducing(model, queries, k, "contribution", largest=True, **options)
    neg, neg_idx = top_k_inducing(model, queries, k, "contribution", largest=False, **options)
    total = torch.zeros(n, dtype=queries.embeddings.dtype, device=chosen.device)
    num_rows = kernel.embeddings.shape[1]
    for first in range(0, n, query_batch_size):
        rows = slice(first, first + query_batch_size)
        part = KernelQueries(queries.embeddings[rows], chosen[rows], queries.weights, queries.noise)
        for start in range(0, num_rows, chunk_size):
            total[rows] += score_block(kernel, part, "contribution", start, min(num_rows, start + chunk_size)).sum(1)
    dtype = means.dtype
    return Contributions(
        positive_indices=pos_idx,
        positive=pos.to(dtype),
        negative_indices=neg_idx,
        negative=neg.to(dtype),
        total=total.to(dtype),
        mean=means[torch.arange(n, device=chosen.device), chosen],
        heads=chosen,
    )
