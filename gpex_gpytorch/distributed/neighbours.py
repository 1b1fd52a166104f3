"""Nearest inducing instances when the inducing cache is sharded: local top-k, gathered and merged."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..explain.nearest_neighbours import Neighbours, nearest_neighbours
from ..models.gpex_model import GPEXModel
from .communication import DistributedStepError
from .sharded_cached_deep_kernel import ShardedCachedDeepKernel

__all__ = ["sharded_nearest_neighbours"]


@torch.no_grad()
def sharded_nearest_neighbours(
    model: GPEXModel,
    inputs: Tensor,
    k: int = 10,
    heads: str | int | Tensor = "predicted",
    *,
    chunk_size: int = 65536,
) -> Neighbours:
    """Exact global top-``k`` inducing instances by kernel similarity, over a sharded cache (collective).

    Every rank scores the same ``inputs`` against its own rows (:func:`nearest_neighbours` on the
    shard), shifts its indices by the shard's offset, and the ``P`` candidate lists of ``k`` are
    all-gathered (``P*N*k`` similarities and indices, independent of ``M``) and merged by a top-``k``.
    Every rank returns the same result.

    :param model: a GPEX model over a :class:`ShardedCachedDeepKernel`.
    :param inputs: the test inputs, the same on every rank.
    :param k: neighbours per input, ``1 <= k <= M`` (global).
    :param heads: as in :func:`nearest_neighbours`.
    :param chunk_size: inducing rows scored at a time on each rank.
    """
    kernel = model.covar_module
    if not isinstance(kernel, ShardedCachedDeepKernel):
        raise TypeError(f"model: expected a model over a ShardedCachedDeepKernel, got {type(kernel).__name__}")
    # A shard may hold fewer than k rows: the local search pads with -inf, which never wins the merge.
    local = nearest_neighbours(model, inputs, k, heads, chunk_size=chunk_size)
    indices = local.indices + kernel.shard_start
    group, world = kernel.process_group, kernel.world_size
    sims = [torch.empty_like(local.similarities) for _ in range(world)]
    idxs = [torch.empty_like(indices) for _ in range(world)]
    try:
        for tensor, out in ((local.similarities, sims), (indices, idxs)):
            kernel.communication.record(tensor)
            dist.all_gather(out, tensor.contiguous(), group=group)
    except RuntimeError as error:
        raise DistributedStepError(f"rank {kernel.rank}: gathering the per-rank neighbours failed: {error}") from error
    best, order = torch.cat(sims, 1).topk(k, dim=1)  # shape: (N, k) from (N, P*k)
    return Neighbours(
        indices=torch.cat(idxs, 1).gather(1, order),
        similarities=best,
        heads=local.heads,
        mean=local.mean,
        variance=local.variance,
    )
