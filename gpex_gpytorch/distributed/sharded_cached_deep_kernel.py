"""``CachedDeepKernel(..., sharding=TorchDistributed())`` under its own name."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..kernels import CachedDeepKernel
from .communication import CommunicationMeter
from .torch_distributed import TorchDistributed

__all__ = ["ShardedCachedDeepKernel"]


class ShardedCachedDeepKernel(CachedDeepKernel):
    r"""The cached deep kernel with ``U`` and ``V`` split by rows over the ranks of a process group.

    A shorthand for ``CachedDeepKernel(..., sharding=TorchDistributed(process_group))``: every
    behaviour (row ownership, the one all-reduce per change of ``G`` and ``b``, collective
    ``fill`` / ``refresh`` / ``statistics`` / ``staleness``, :meth:`data_parallel`) is the
    :class:`~gpex_gpytorch.distributed.TorchDistributed` policy's; this class adds no method.

    :param feature_extractor: the kernel network ``f`` (the same initial weights on every rank;
        :meth:`data_parallel` broadcasts rank 0's).
    :param num_inducing: ``M``, the *global* number of inducing instances (at least the world size).
    :param num_heads: ``H``.
    :param embedding_dim: ``D``.
    :param process_group: the group for the statistics' all-reduces (default: a new group of all ranks,
        with the default group's timeout).
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        num_inducing: int,
        num_heads: int,
        embedding_dim: int,
        *,
        process_group: dist.ProcessGroup | None = None,
        embedding_dtype: torch.dtype | None = None,
        statistics_dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        force_allocation: bool = False,
        **kwargs: object,
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "ShardedCachedDeepKernel: torch.distributed is not initialised; call "
                "gpex_gpytorch.distributed.init_distributed() (or init_process_group) first"
            )
        super().__init__(
            feature_extractor,
            num_inducing,
            num_heads,
            embedding_dim,
            embedding_dtype=embedding_dtype,
            statistics_dtype=statistics_dtype,
            device=device,
            force_allocation=force_allocation,
            sharding=TorchDistributed(process_group),
            **kwargs,
        )

    @property
    def process_group(self) -> dist.ProcessGroup:
        """The group the statistics travel on."""
        return self.sharding.process_group  # type: ignore[attr-defined]

    @property
    def communication(self) -> CommunicationMeter:
        """What this rank handed to the statistics' collectives."""
        return self.sharding.meters["statistics"]  # type: ignore[attr-defined]
