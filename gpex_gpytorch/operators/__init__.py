"""Linear operators: structured covariances that stay exact and never form M×M matrices."""

from .low_rank_plus_diagonal import LowRankPlusDiagonal, LowRankPlusDiagonalLinearOperator

__all__ = ["LowRankPlusDiagonal", "LowRankPlusDiagonalLinearOperator"]
