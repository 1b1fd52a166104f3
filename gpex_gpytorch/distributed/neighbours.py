"""Nearest inducing instances when the inducing cache is sharded: local top-k, gathered and merged."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..explain.kernel_similarity import DEFAULT_METRIC
from ..explain.nearest_neighbours import Neighbours, nearest_neighbours
from ..models.gpex_model import GPEXModel
from .communication import DistributedStepError
from .torch_distributed import TorchDistributed

__all__ = ["sharded_nearest_neighbours"]


@torch.no_grad()
def sharded_nearest_neighbours(
    model: GPEXModel,
    inputs: Tensor,
    k: int = 10,
    heads: str | int | Tensor = "predicted",
    *,
    metric: str = DEFAULT_METRIC,
    chunk_size: int = 16384,
    query_batch_size: int = 1024,
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
    :param metric: as in :func:`nearest_neighbours` (every metric scores a row on its own, so the
        per-rank lists merge exactly).
    :param chunk_size: inducing rows scored at a time on each rank.
    :param query_batch_size: queries scored at a time.
    """
    kernel = model.covar_module
    if not isinstance(getattr(kernel, "sharding", None), TorchDistributed):
        raise TypeError(
            f"model: expected a model over a CachedDeepKernel sharded by TorchDistributed (a ShardedCachedDeepKernel), "
            f"got {type(kernel).__name__}"
        )
    sharding: TorchDistributed = kernel.sharding
    # Hubness is judged on the merged lists, not on one shard's.
    local = nearest_neighbours(
        model,
        inputs,
        min(k, kernel.num_local_inducing),
        heads,
        metric=metric,
        chunk_size=chunk_size,
        query_batch_size=query_batch_size,
        hub_warning=None,
    )
    indices = local.indices + kernel.shard_start
    group, world = sharding.process_group, kernel.world_size
    # Pad to k so that every rank gathers the same shape (a shard may hold fewer than k rows).
    pad = k - indices.shape[1]
    scores = torch.nn.functional.pad(local.similarities, (0, pad), value=float("-inf"))
    values = torch.nn.functional.pad(local.kernel_values, (0, pad))
    indices = torch.nn.functional.pad(indices, (0, pad))
    sims = [torch.empty_like(scores) for _ in range(world)]
    idxs = [torch.empty_like(indices) for _ in range(world)]
    vals = [torch.empty_like(values) for _ in range(world)]
    try:
        for tensor, out in ((scores, sims), (indices, idxs), (values, vals)):
            sharding.meters["statistics"].record(tensor)
            dist.all_gather(out, tensor.contiguous(), group=group)
    except RuntimeError as error:
        raise DistributedStepError(f"rank {kernel.rank}: gathering the per-rank neighbours failed: {error}") from error
    best, order = torch.cat(sims, 1).topk(k, dim=1)  # shape: (N, k) from (N, P*k)
    return Neighbours(
        indices=torch.cat(idxs, 1).gather(1, order),
        similarities=best,
        kernel_values=torch.cat(vals, 1).gather(1, order),
        heads=local.heads,
        mean=local.mean,
        variance=local.variance,
        metric=local.metric,
    )
