"""The sharding policy of a ``torch.distributed`` job: rows split over the ranks, statistics all-reduced."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..kernels.shard_layout import ShardLayout
from ..kernels.sharding import Sharding
from ..utils.checkpoint_files import check_writable
from .checkpoint_shards import MANIFEST, load_sharded_checkpoint, write_sharded_state
from .communication import CommunicationMeter, all_reduce_sum, collective_errors, counting_allreduce_hook
from .process_group import new_group_like_default

__all__ = ["TorchDistributed"]


class TorchDistributed(Sharding):
    r"""Shard the inducing cache by rows over the ranks of a ``torch.distributed`` process group.

    Rank ``r`` holds the contiguous rows of :class:`~gpex_gpytorch.kernels.ShardLayout`; the
    statistics :math:`G = \sum_r U_r^\top U_r` and :math:`b = \sum_r U_r^\top v_r` stay identical on
    every rank because each change is applied as a delta summed by **one** all-reduce of
    ``H*D*D + H*D`` numbers, whatever ``M`` is. The kernel network trains under
    :class:`~torch.nn.parallel.DistributedDataParallel` (:meth:`data_parallel`); the loss and the
    gradients of parameters outside it (a learnable noise) are averaged by one more small
    all-reduce per step. Checkpoints are folders of per-rank shards that load on any number of
    ranks (:func:`~gpex_gpytorch.distributed.save_sharded_checkpoint`).

    The statistics travel on a process group of their own (created at :meth:`setup` unless
    given), so they never interleave with DDP's gradient buckets, whose order differs between
    ranks. What each rank hands to collectives is counted in :meth:`communication`.

    Use as ``CachedDeepKernel(..., sharding=TorchDistributed())`` or
    ``Distiller(ann, sharding=TorchDistributed())`` on every rank of a ``torchrun`` job.

    :param process_group: the group for the statistics (default: a new group of all ranks with the
        default group's timeout).
    """

    def __init__(self, process_group: dist.ProcessGroup | None = None) -> None:
        self._given_group = process_group
        self._group: dist.ProcessGroup | None = None
        self.meters = {
            "statistics": CommunicationMeter(),
            "ddp_gradients": CommunicationMeter(),
            "other": CommunicationMeter(),
        }

    def __repr__(self) -> str:
        world = self.world_size if self._group is not None else "?"
        return f"TorchDistributed(world_size={world})"

    def __deepcopy__(self, memo: dict[int, Any]) -> TorchDistributed:
        # A process group cannot be copied: copies of a kernel or a Distiller share the policy.
        return self

    # ------------------------------------------------------------------ ranks
    def setup(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "TorchDistributed: torch.distributed is not initialised; launch with torchrun and call "
                "gpex_gpytorch.distributed.init_distributed() (or init_process_group) first"
            )
        if self._group is None:
            # A private group keeps the statistics' collectives apart from DDP's gradient buckets; it
            # inherits the default group's timeout (dist.new_group() alone would wait 30 minutes).
            self._group = new_group_like_default() if self._given_group is None else self._given_group

    @property
    def process_group(self) -> dist.ProcessGroup:
        """The group the statistics travel on (created by :meth:`setup`)."""
        self.setup()
        assert self._group is not None
        return self._group

    @property
    def rank(self) -> int:
        return dist.get_rank(self.process_group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.process_group)

    # ------------------------------------------------------------------ reductions
    def _packed_sum(self, parts: list[Tensor], what: str) -> list[Tensor]:
        flat = torch.cat([p.reshape(-1) for p in parts])
        total = all_reduce_sum(flat, self.process_group, self.meters["statistics"], what=what)
        return [t.reshape(p.shape) for t, p in zip(total.split([p.numel() for p in parts]), parts, strict=True)]

    def sum(self, parts: list[Tensor], what: str) -> list[Tensor]:
        with torch.no_grad():
            return self._packed_sum(parts, what)

    def differentiable_sum(self, parts: list[Tensor], what: str) -> list[Tensor]:
        # Every rank joins the backward collective, even one whose parts carry no gradient.
        return self._packed_sum(parts, what)

    def average_gradients(self, loss: Tensor, parameters: list[nn.Parameter]) -> Tensor:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        packed = torch.cat([loss.detach().double().reshape(1)] + [g.double().reshape(-1) for g in grads])
        with torch.no_grad():
            total = all_reduce_sum(packed, self.process_group, self.meters["other"], what="the loss all-reduce")
            total = total / self.world_size
        offset = 1
        for p, g in zip(parameters, grads, strict=True):
            p.grad = total[offset : offset + g.numel()].reshape(g.shape).to(g.dtype)
            offset += g.numel()
        return total[0]

    @contextmanager
    def collectives(self, what: str, *, mixed: bool = False) -> Iterator[None]:
        with collective_errors(what, self.process_group, mixed=mixed):
            yield

    def data_parallel(self, network: nn.Module, **kwargs: Any) -> nn.Module:
        """:class:`DistributedDataParallel` over ``network``, its gradient buckets counted in :meth:`communication`.

        Buffers are not synchronised in the forward (``forward_sync_buffers`` / ``broadcast_buffers``
        default to ``False``): embeddings without gradient bypass the wrapper, and a kernel network
        with batch-norm statistics keeps them per rank.
        """
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
            kwargs.setdefault("forward_sync_buffers", False)
        else:
            kwargs.setdefault("broadcast_buffers", False)
        with collective_errors("the broadcast of the kernel network's weights (DistributedDataParallel)"):
            ddp = DistributedDataParallel(network, **kwargs)
        ddp.register_comm_hook(None, counting_allreduce_hook(self.meters["ddp_gradients"]))
        return ddp

    def communication(self) -> dict[str, CommunicationMeter]:
        return self.meters

    # ------------------------------------------------------------------ checkpoints
    def check_checkpoint_path(self, path: str | Path) -> None:
        # The folder of shards: found read-only now, not after an interval's work.
        check_writable(Path(path) / MANIFEST)

    def save_state(
        self, path: str | Path, state: dict[str, Any], row_entries: dict[str, int], *, num_rows: int, step: int
    ) -> None:
        write_sharded_state(path, state, row_entries, self.layout(num_rows), self.process_group, step=step)

    def load_state(self, path: str | Path, num_rows: int, map_location: torch.device | str | None) -> dict[str, Any]:
        loaded = load_sharded_checkpoint(
            path, ShardLayout(num_rows, self.world_size), self.rank, map_location=map_location
        )
        return {**loaded.extra, "model": loaded.model_state}
