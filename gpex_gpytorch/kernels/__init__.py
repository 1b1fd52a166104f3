"""Kernels: the cached deep linear kernel of GPEX."""

from .cached_deep_kernel import CachedDeepKernel, InducingStatistics

__all__ = ["CachedDeepKernel", "InducingStatistics"]
