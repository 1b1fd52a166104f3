"""A :class:`CachedDeepKernel` whose inducing cache is split by rows across ``torch.distributed`` ranks."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..kernels import CachedDeepKernel, InducingStatistics
from ..utils import check_finite, check_index_tensor, check_tensor
from .communication import CommunicationMeter, all_reduce_sum, collective_errors
from .process_group import new_group_like_default
from .sharding import ShardLayout

__all__ = ["ShardedCachedDeepKernel"]


class ShardedCachedDeepKernel(CachedDeepKernel):
    r"""The cached deep kernel with ``U`` and ``V`` split by rows over the ranks of a process group.

    Rank ``r`` holds the contiguous rows ``[shard_start, shard_stop)`` of the inducing set (see
    :class:`ShardLayout`): the buffers :attr:`embeddings` ``(H, M_r, D)`` and
    :attr:`inducing_values` ``(M_r, H)`` are its shard only. The statistics :attr:`gram`
    :math:`G = \sum_r U_r^\top U_r`, :attr:`cross` :math:`b = \sum_r U_r^\top v_r` and
    :attr:`values_sq` are global and identical on every rank: each change of the cache is
    applied as a delta that is summed over the ranks by **one** all-reduce of
    ``H*D*D + H*D`` numbers, whatever ``M`` is. The posterior, which needs only ``G`` and ``b``,
    is then the single-process one, and :class:`~gpex_gpytorch.GPEXModel` works unchanged on top.

    Row indices in the public API are *global*. The calls that change or read the whole cache are
    collective (every rank of the group must make them, in the same order), each passing the rows
    it holds (possibly none: an empty index tensor): :meth:`refresh`, :meth:`statistics` with fresh
    rows (its all-reduce is differentiable, so the gradient of each rank's fresh rows is that of the
    total loss over all ranks), :meth:`fill`, :meth:`set_inducing_values`,
    :meth:`recompute_statistics`, :meth:`gram_drift` and :meth:`staleness`. Calls without fresh
    rows, and evaluation, need no communication.

    The statistics travel on a process group of their own (created here unless given), so that
    they never interleave with the gradient buckets of :class:`DistributedDataParallel`
    (:meth:`data_parallel`), whose order differs between ranks.

    The strategy's ``prior_distribution`` (which materialises ``U``) sees only the local shard.

    :param feature_extractor: the kernel network ``f`` (the same initial weights on every rank;
        :meth:`data_parallel` broadcasts rank 0's).
    :param num_inducing: ``M``, the *global* number of inducing instances (at least the world size).
    :param num_heads: ``H``.
    :param embedding_dim: ``D``.
    :param process_group: the group for the statistics' all-reduces (default: a new group of all ranks,
        with the default group's timeout).
    :param embedding_dtype: storage dtype of the shard.
    :param statistics_dtype: dtype of ``G`` and ``b``.
    :param device: where to allocate the shard (``cuda:<local rank>`` under NCCL).
    :param force_allocation: skip the check that the shard fits in memory.
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
        # A private group keeps the statistics' collectives apart from DDP's gradient buckets; it
        # inherits the default group's timeout (dist.new_group() alone would wait 30 minutes).
        group = new_group_like_default() if process_group is None else process_group
        layout = ShardLayout(num_inducing, dist.get_world_size(group))
        rank = dist.get_rank(group)
        super().__init__(
            feature_extractor,
            layout.size(rank),
            num_heads,
            embedding_dim,
            embedding_dtype=embedding_dtype,
            statistics_dtype=statistics_dtype,
            device=device,
            force_allocation=force_allocation,
            **kwargs,
        )
        # The global M: the index checks and the posterior's formulas (e.g. the KL's (M - D) log σ²) use it.
        self.num_inducing = num_inducing
        self.layout = layout
        self.rank = rank
        self.shard_start, self.shard_stop = layout.bounds(rank)
        self.communication = CommunicationMeter()
        # Neither is a sub-module: state_dict keys stay those of CachedDeepKernel.
        object.__setattr__(self, "process_group", group)
        object.__setattr__(self, "_data_parallel", None)

    # ------------------------------------------------------------------ properties
    @property
    def num_local_inducing(self) -> int:
        """``M_r``, the rows held by this rank."""
        return self.embeddings.shape[1]

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    # ------------------------------------------------------------------ data parallel kernel network
    def data_parallel(self, **ddp_kwargs: Any) -> DistributedDataParallel:
        """Wrap the kernel network in :class:`DistributedDataParallel`; embeddings with gradient then go through it.

        Embeddings without gradient (refreshes, evaluation) bypass the wrapper, so they need no
        collective and may differ between ranks. Buffers are therefore not synchronised in the
        forward (``forward_sync_buffers`` / ``broadcast_buffers`` default to ``False``): a kernel
        network with batch-norm statistics keeps them per rank.

        :param ddp_kwargs: passed to :class:`DistributedDataParallel` (e.g. ``device_ids``).
        """
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
            ddp_kwargs.setdefault("forward_sync_buffers", False)
        else:
            ddp_kwargs.setdefault("broadcast_buffers", False)
        with collective_errors("the broadcast of the kernel network's weights (DistributedDataParallel)"):
            ddp = DistributedDataParallel(self.feature_extractor, **ddp_kwargs)
        object.__setattr__(self, "_data_parallel", ddp)
        return ddp

    def embed(self, x: Tensor) -> Tensor:
        """Embed a batch with gradient: ``(H, N, D)`` (through DDP when :meth:`data_parallel` was called)."""
        ddp = self._data_parallel
        if ddp is None or not torch.is_grad_enabled():
            return super().embed(x)
        # DDP's forward starts with collectives of its own (the bucket rebuild after the first
        # backward): a dead peer fails there, inside the same call as the network's forward.
        with collective_errors("DistributedDataParallel's forward (bucket rebuild)", mixed=True):
            features = ddp(x)
        h, d = self.num_heads, self.embedding_dim
        if isinstance(features, Tensor) and features.dim() == 2 and features.shape[1] == h * d:
            features = features.reshape(features.shape[0], h, d)
        if not (isinstance(features, Tensor) and features.dim() == 3 and features.shape[1:] == (h, d)):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"feature_extractor: expected an output of shape (N, {h}, {d}) or (N, {h * d}), got {shape}"
            )
        return features.transpose(0, 1)

    # ------------------------------------------------------------------ indices
    def _local_rows(self, indices: Tensor, name: str, *, unique: bool = True) -> Tensor:
        """Global row indices held by this rank -> local positions (an empty tensor is allowed)."""
        if isinstance(indices, Tensor) and indices.dim() == 1 and indices.numel() == 0:
            return torch.empty(0, dtype=torch.long, device=self.embeddings.device)
        idx = check_index_tensor(name, indices, self.num_inducing, unique=unique)
        outside = (idx < self.shard_start) | (idx >= self.shard_stop)
        if bool(outside.any()):
            stray = idx[outside][:5]
            raise ValueError(
                f"{name}: rank {self.rank} holds the global rows [{self.shard_start}, {self.shard_stop}); got "
                f"{stray.tolist()} (held by ranks {self.layout.owners(stray).tolist()}); pass only this "
                "rank's rows (ShardLayout.local_part)"
            )
        return (idx - self.shard_start).to(self.embeddings.device)

    # ------------------------------------------------------------------ collectives
    def _sum_over_ranks(self, parts: list[Tensor], what: str) -> list[Tensor]:
        """Sum several tensors over the ranks with one all-reduce (packed flat, split back)."""
        flat = torch.cat([p.reshape(-1) for p in parts])
        total = all_reduce_sum(flat, self.process_group, self.communication, what=what)
        return [t.reshape(p.shape) for t, p in zip(total.split([p.numel() for p in parts]), parts, strict=True)]

    def _deltas(self, idx: Tensor, new: Tensor | None) -> list[Tensor]:
        """``[ΔG, Δb]`` (``Δb`` only with inducing values) of replacing the local rows ``idx`` by ``new``."""
        stats_dtype = self.statistics_dtype
        h, d = self.num_heads, self.embedding_dim
        if new is None:  # no rows of this rank in this step
            parts = [torch.zeros(h, d, d, dtype=stats_dtype, device=self.gram.device)]
            if self.has_inducing_values:
                parts.append(torch.zeros(h, d, dtype=stats_dtype, device=self.gram.device))
            return parts
        fresh = new.to(stats_dtype)  # shape: (H, b, D)
        old = self.embeddings[:, idx].to(stats_dtype)  # shape: (H, b, D)
        parts = [fresh.mT @ fresh - old.mT @ old]
        if self.has_inducing_values:
            v = self.inducing_values[idx].T.to(stats_dtype).unsqueeze(-1)  # shape: (H, b, 1)
            parts.append(((fresh - old) * v).sum(-2))
        return parts

    # ------------------------------------------------------------------ the cache
    def set_inducing_values(self, values: Tensor) -> None:
        """Attach the inducing values: the global ``(M, H)`` (this rank keeps its rows) or the local ``(M_r, H)``.

        Collective: computes the global ``b`` and ``VᵀV`` with one all-reduce.
        """
        check_tensor("inducing_values", values, ndim=2, floating=True)
        if values.shape[1] != self.num_heads or values.shape[0] not in (self.num_inducing, self.num_local_inducing):
            raise ValueError(
                f"inducing_values: expected shape ({self.num_inducing}, {self.num_heads}) (global) or "
                f"({self.num_local_inducing}, {self.num_heads}) (rank {self.rank}'s rows), got {tuple(values.shape)}"
            )
        if values.shape[0] == self.num_inducing:
            values = values[self.shard_start : self.shard_stop]
        check_finite("inducing_values", values)
        self.inducing_values.copy_(values.detach().to(device=self.embeddings.device, dtype=torch.get_default_dtype()))
        self.values_set.fill_(True)
        self.recompute_statistics()

    @torch.no_grad()
    def refresh(self, indices: Tensor, inputs: Tensor) -> None:
        """Recompute this rank's rows ``indices`` (global, possibly none) from ``inputs`` and update ``G``, ``b``.

        Collective: one all-reduce of ``H*D*D + H*D`` numbers.
        """
        idx = self._local_rows(indices, "indices")
        stored = None
        if idx.numel():
            new = self._embed_checked(inputs, idx.numel(), "inputs")
            # The statistics must describe what is stored (rounded to embedding_dtype, and finite there).
            stored = self._stored("inputs", new, idx + self.shard_start)
        parts = self._sum_over_ranks(self._deltas(idx, stored), "the all-reduce of a refresh")
        self.gram.add_(parts[0])
        if self.has_inducing_values:
            self.cross.add_(parts[1])
        if stored is not None:
            self.embeddings[:, idx] = stored

    def _write_rows(self, idx: Tensor, stored: Tensor) -> None:
        raise NotImplementedError("ShardedCachedDeepKernel: use refresh(global_indices, inputs) (collective)")

    @torch.no_grad()
    def fill(
        self,
        inputs: Tensor | Iterable[Tensor],
        *,
        batch_size: int = 1024,
        progress: bool = False,
        staged: bool = True,
    ) -> None:
        """Compute this rank's rows in order (the initial sweep), then the global statistics (collective).

        :param inputs: this rank's ``M_r`` inducing inputs, all ``M`` (the rank keeps its rows), or an
            iterable of batches of this rank's inputs in index order.
        :param batch_size: rows per forward pass when ``inputs`` is a tensor.
        :param progress: unused (kept for the signature of :meth:`CachedDeepKernel.fill`).
        :param staged: as in :meth:`CachedDeepKernel.fill` (``False``: rows written in place, no second copy).
        """
        local = self.num_local_inducing
        if isinstance(inputs, Tensor):
            if inputs.shape[0] == self.num_inducing:
                inputs = inputs[self.shard_start : self.shard_stop]
            elif inputs.shape[0] != local:
                raise ValueError(
                    f"inputs: expected {self.num_inducing} (all) or {local} (rank {self.rank}'s) inducing inputs, "
                    f"got {inputs.shape[0]}"
                )
            batches: Iterable[Tensor] = inputs.split(batch_size)
        else:
            batches = inputs
        # Staged as in CachedDeepKernel.fill: a failure on this rank leaves its rows unchanged.
        staging = torch.empty_like(self.embeddings) if staged else self.embeddings  # shape: (H, M_r, D)
        start = 0
        complete = False
        try:
            for batch in batches:
                new = self.embed(batch)
                stop = start + new.shape[1]
                if stop > local:
                    raise ValueError(f"inputs: yielded more than rank {self.rank}'s {local} rows")
                name = f"inputs[{start}:{stop}]"
                check_finite(f"{name} (embeddings from feature_extractor)", new)
                staging[:, start:stop] = self._stored(name, new, torch.arange(start, stop) + self.shard_start)
                start = stop
            if start != local:
                raise ValueError(f"inputs: yielded {start} rows, expected rank {self.rank}'s {local}")
            complete = True
        finally:
            if complete and staged:
                self.embeddings.copy_(staging)
            # Every rank reaches this collective, even one that failed above.
            self.recompute_statistics()

    def _local_exact(self, batch_size: int) -> list[Tensor]:
        stats_dtype = self.statistics_dtype
        gram = torch.zeros_like(self.gram)
        cross = torch.zeros_like(self.cross)
        for start in range(0, self.num_local_inducing, batch_size):
            rows = self.embeddings[:, start : start + batch_size].to(stats_dtype)
            gram += rows.mT @ rows
            if self.has_inducing_values:
                v = self.inducing_values[start : start + batch_size].T.to(stats_dtype)
                cross += torch.einsum("hmd,hm->hd", rows, v)
        values_sq = self.inducing_values.to(stats_dtype).square().sum(0)
        return [gram, cross, values_sq]

    @torch.no_grad()
    def recompute_statistics(self, batch_size: int = 16384) -> None:
        """Recompute the global ``G``, ``b`` and ``VᵀV`` exactly (collective; :math:`O(M_r H D^2)` per rank)."""
        gram, cross, values_sq = self._sum_over_ranks(self._local_exact(batch_size), "the exact recompute")
        self.gram.copy_(gram)
        if self.has_inducing_values:
            self.cross.copy_(cross)
            self.values_sq.copy_(values_sq)

    @torch.no_grad()
    def _exact_statistics(self, batch_size: int = 16384) -> tuple[Tensor, Tensor | None]:
        gram, cross, _ = self._sum_over_ranks(self._local_exact(batch_size), "the exact recompute")
        return gram, cross if self.has_inducing_values else None

    @torch.no_grad()
    def staleness(self, indices: Tensor, inputs: Tensor) -> float:
        r"""Global :math:`\|U_{cache} - f(\tilde x)\|_F / \|f(\tilde x)\|_F` over every rank's sample (collective)."""
        idx = self._local_rows(indices, "indices", unique=False)
        sums = torch.zeros(2, dtype=torch.float64, device=self.embeddings.device)
        if idx.numel():
            current = self._embed_checked(inputs, idx.numel(), "inputs")
            cached = self.embeddings[:, idx].to(current.dtype)
            sums = torch.stack([(cached - current).double().square().sum(), current.double().square().sum()])
        num, den = all_reduce_sum(sums, self.process_group, self.communication, what="the staleness all-reduce")
        return float(num.sqrt() / den.sqrt().clamp_min(1e-30))

    def statistics(self, fresh_indices: Tensor | None = None, fresh_inputs: Tensor | None = None) -> InducingStatistics:
        r"""Global ``G`` and ``b`` with this rank's rows ``fresh_indices`` recomputed *with gradient*.

        Collective when fresh rows are given (every rank passes its own, possibly none):
        :math:`G = G_{cache} + \sum_r (U_{r,fresh}^\top U_{r,fresh} - U_{r,old}^\top U_{r,old})`, summed
        by a differentiable all-reduce, so gradient reaches every rank's kernel network through its
        own fresh rows, weighted by the loss of all ranks (as in one process with the union of the
        rows). Without fresh rows: the cached statistics, no communication.
        """
        if (fresh_indices is None) != (fresh_inputs is None):
            missing = "fresh_inputs" if fresh_inputs is None else "fresh_indices"
            raise ValueError(f"{missing}: fresh_indices and fresh_inputs must be given together")
        cross = self.cross if self.has_inducing_values else None
        if fresh_indices is None or fresh_inputs is None:
            return InducingStatistics(self.gram, cross)
        idx = self._local_rows(fresh_indices, "fresh_indices")
        fresh = None
        if idx.numel():
            fresh = self.embed(fresh_inputs)
            if fresh.shape[1] != idx.numel():
                raise ValueError(
                    f"fresh_inputs: expected {idx.numel()} rows (one per fresh index), got {fresh.shape[1]}"
                )
        parts = self._sum_over_ranks(self._deltas(idx, fresh), "the all-reduce of the fresh rows")
        gram = self.gram + parts[0]
        if cross is not None:
            cross = cross + parts[1]
        return InducingStatistics(gram, cross)
