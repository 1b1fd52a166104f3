"""Where the inducing cache's rows live and how its statistics are summed: the sharding policy.

:class:`~gpex_gpytorch.CachedDeepKernel` and the :class:`~gpex_gpytorch.Distiller`'s training loop
ask a :class:`Sharding` every question whose answer depends on how many processes share the work:
which rows of the inducing set this process holds, which slice of a training batch is its own,
how the per-step deltas of ``G = UᵀU`` and ``b = UᵀV`` are summed, how the loss and the gradients
are averaged, and how a checkpoint is written and read back. The base class is the single
process: it holds every row and every reduction is the identity (no copy, no cost).
``gpex_gpytorch.distributed.TorchDistributed`` answers the same questions for the ranks of a
``torch.distributed`` job. A new backend (another collective library, a device-specific path)
is a subclass; the kernel and the loop stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..utils.checkpoint_files import check_writable, load_checkpoint, save_checkpoint
from .shard_layout import ShardLayout

__all__ = ["Sharding", "SingleProcess"]


class Sharding:
    """The single-process policy: this process holds all ``M`` rows; reductions are identities.

    Subclasses override the reductions (:meth:`sum`, :meth:`differentiable_sum`,
    :meth:`average_gradients`), the row ownership (:attr:`rank`, :attr:`world_size`), the
    wrapping of the kernel network (:meth:`data_parallel`) and the checkpoint files
    (:meth:`save_state`, :meth:`load_state`). Every method of a multi-process policy that
    communicates is collective: all processes call it, in the same order.
    """

    @property
    def rank(self) -> int:
        """This process's index among :attr:`world_size`."""
        return 0

    @property
    def world_size(self) -> int:
        """The number of processes sharing the inducing set."""
        return 1

    @property
    def is_main(self) -> bool:
        """Whether this process shows progress and writes the replicated files (rank 0)."""
        return self.rank == 0

    def setup(self) -> None:
        """Check the policy can run here (called once by the kernel that adopts it)."""

    def layout(self, num_rows: int) -> ShardLayout:
        """The split of ``num_rows`` inducing rows over the processes."""
        return ShardLayout(num_rows, self.world_size)

    def local_batch(self, batch_size: int) -> slice:
        """This process's slice of a global training batch of ``batch_size`` inputs."""
        return slice(self.rank * batch_size // self.world_size, (self.rank + 1) * batch_size // self.world_size)

    def check_batch_size(self, batch_size: int) -> None:
        """Reject a global batch that does not split evenly (unequal local means would bias the gradient)."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size: expected a multiple of the world size {self.world_size}, got {batch_size}")

    # ------------------------------------------------------------------ reductions
    def sum(self, parts: list[Tensor], what: str) -> list[Tensor]:
        """Sum each tensor over the processes (without gradient); ``what`` names the call in errors."""
        return parts

    def differentiable_sum(self, parts: list[Tensor], what: str) -> list[Tensor]:
        """:meth:`sum` through which gradient flows back to every process's own terms."""
        return parts

    def average_gradients(self, loss: Tensor, parameters: list[nn.Parameter]) -> Tensor:
        """Average ``loss`` and the gradients of ``parameters`` (those outside :meth:`data_parallel`) over the
        processes, in place; returns the averaged loss, detached."""
        return loss.detach()

    @contextmanager
    def collectives(self, what: str, *, mixed: bool = False) -> Iterator[None]:
        """A block that runs collectives: a failing peer is reported as what it is, naming ``what``.

        :param mixed: the block also runs user code (whose own errors must pass through unchanged).
        """
        yield

    def data_parallel(self, network: nn.Module, **kwargs: Any) -> nn.Module | None:
        """The kernel network wrapped for data-parallel training, or ``None`` when there is nothing to wrap."""
        return None

    def communication(self) -> dict[str, Any]:
        """What this process handed to collectives so far, per category (empty for one process)."""
        return {}

    # ------------------------------------------------------------------ checkpoints
    def check_checkpoint_path(self, path: str | Path) -> None:
        """Find an unwritable checkpoint location now, before any training."""
        check_writable(path)

    def save_state(
        self, path: str | Path, state: dict[str, Any], row_entries: dict[str, int], *, num_rows: int, step: int
    ) -> None:
        """Write a training state atomically.

        :param state: plain values and tensors; ``state["model"]`` is a ``state_dict``.
        :param row_entries: the keys of ``state["model"]`` that hold inducing rows, with the dimension
            of their rows (a multi-process policy writes each process's rows to a file of its own).
        :param num_rows: ``M``, the inducing rows of the whole set.
        :param step: the training step (names the files of a multi-process policy).
        """
        save_checkpoint(path, state)

    def load_state(self, path: str | Path, num_rows: int, map_location: torch.device | str | None) -> dict[str, Any]:
        """Read a state written by :meth:`save_state` (of any policy over ``num_rows`` rows): this process's rows."""
        return load_checkpoint(path, map_location=map_location)


class SingleProcess(Sharding):
    """One process holds the whole inducing set (the default)."""

    def __repr__(self) -> str:
        return "SingleProcess()"
