"""Kernels: the cached deep linear kernel of GPEX, and the policy that says where its rows live."""

from .cached_deep_kernel import CachedDeepKernel, InducingStatistics
from .shard_layout import ShardLayout
from .sharding import Sharding, SingleProcess

__all__ = ["CachedDeepKernel", "InducingStatistics", "ShardLayout", "Sharding", "SingleProcess"]
