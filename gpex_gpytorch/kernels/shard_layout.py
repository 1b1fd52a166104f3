"""Contiguous row ranges of the inducing set, one per rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..utils import check_positive_int

__all__ = ["ShardLayout"]


@dataclass(frozen=True)
class ShardLayout:
    """``num_rows`` rows split into ``world_size`` contiguous shards, as even as possible.

    The first ``num_rows % world_size`` ranks hold one row more (the split of
    :func:`torch.tensor_split`). Rank ``r`` holds the global rows ``[start(r), stop(r))``, so a
    global index is ``start(r) + local index`` and re-sharding onto another world size is a matter
    of slicing and concatenating contiguous ranges.

    :param num_rows: ``M``, the number of inducing rows.
    :param world_size: ``P``, the number of ranks (``1 <= P <= M``).
    """

    num_rows: int
    world_size: int

    def __post_init__(self) -> None:
        for name, value in (("num_rows", self.num_rows), ("world_size", self.world_size)):
            check_positive_int(name, value)
        if self.world_size > self.num_rows:
            raise ValueError(
                f"world_size: expected at most num_rows={self.num_rows} ranks (each holds >= 1 row), "
                f"got {self.world_size}"
            )

    def _check_rank(self, rank: int) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(f"rank: expected an integer in [0, {self.world_size - 1}], got {rank!r}")

    def start(self, rank: int) -> int:
        """First global row of ``rank``."""
        self._check_rank(rank)
        base, extra = divmod(self.num_rows, self.world_size)
        return rank * base + min(rank, extra)

    def stop(self, rank: int) -> int:
        """One past the last global row of ``rank``."""
        self._check_rank(rank)
        return self.start(rank) + self.size(rank)

    def size(self, rank: int) -> int:
        """Number of rows held by ``rank``."""
        self._check_rank(rank)
        base, extra = divmod(self.num_rows, self.world_size)
        return base + (1 if rank < extra else 0)

    def bounds(self, rank: int) -> tuple[int, int]:
        """``(start, stop)`` of ``rank``."""
        return self.start(rank), self.stop(rank)

    def owners(self, indices: Tensor) -> Tensor:
        """The rank holding each global row index (same shape as ``indices``)."""
        base, extra = divmod(self.num_rows, self.world_size)
        indices = indices.long()
        # Rows below `split` sit in the (base + 1)-row shards, the rest in base-row shards.
        split = extra * (base + 1)
        big = torch.div(indices, base + 1, rounding_mode="floor")
        small = extra + torch.div(indices - split, max(base, 1), rounding_mode="floor")
        return torch.where(indices < split, big, small)

    def local_part(self, indices: Tensor, rank: int) -> Tensor:
        """The entries of ``indices`` (global rows) that ``rank`` holds, in their original order."""
        start, stop = self.bounds(rank)
        return indices[(indices >= start) & (indices < stop)]
