"""Variational strategy and distribution of GPEX."""

from .gpex_variational_distribution import GPEXVariationalDistribution
from .gpex_variational_strategy import GPEXVariationalStrategy

__all__ = ["GPEXVariationalDistribution", "GPEXVariationalStrategy"]
