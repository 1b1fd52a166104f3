"""Contiguous row ranges of the inducing set, one per rank (defined in :mod:`gpex_gpytorch.kernels.shard_layout`)."""

from ..kernels.shard_layout import ShardLayout

__all__ = ["ShardLayout"]
