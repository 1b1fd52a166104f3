"""Explanations through the GPs' kernels: neighbours, maps, uncertainty, and neighbouring explainers."""

from .nearest_neighbours import Neighbours, nearest_neighbours

__all__ = ["Neighbours", "nearest_neighbours"]
