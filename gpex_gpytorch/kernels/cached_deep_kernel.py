"""A deep linear kernel whose inducing embeddings are a cache, refreshed a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from gpytorch.kernels import Kernel
from linear_operator.operators import LinearOperator, LowRankRootLinearOperator, MatmulLinearOperator
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..functions.gram_delta import GramDelta
from ..utils import (
    NonFiniteError,
    check_allocation,
    check_finite_rows,
    check_index_tensor,
    check_positive_int,
    check_tensor,
    nonfinite_rows,
)
from .shard_layout import ShardLayout
from .sharding import Sharding, SingleProcess

__all__ = ["CachedDeepKernel", "InducingStatistics"]


@dataclass(frozen=True)
class InducingStatistics:
    """The sufficient statistics of the inducing set that the posterior needs.

    :ivar gram: :math:`U_l^\\top U_l` per head, shape ``(H, D, D)``.
    :ivar cross: :math:`U_l^\\top v_l` per head, shape ``(H, D)`` (``None`` without inducing values).
    """

    gram: Tensor
    cross: Tensor | None


class CachedDeepKernel(Kernel):
    r"""Deep linear kernel :math:`k_l(x, x') = f_l(x)^\top f_l(x')`, one per output head :math:`l`.

    The kernel network ``feature_extractor`` maps a batch of inputs to ``(N, H, D)`` (or
    ``(N, H*D)``, read head-major). The embeddings of the ``M`` inducing inputs,
    :math:`U_l = f_l(\tilde x)`, are kept as a cache (the buffer :attr:`embeddings`) together with
    their Gram matrices :math:`G_l = U_l^\top U_l` and, once inducing values :math:`v_l` are set,
    the cross moments :math:`b_l = U_l^\top v_l`. The cache goes stale as ``f`` trains;
    :meth:`refresh` recomputes a batch of rows and updates ``G`` and ``b`` by the difference, so a
    refresh costs :math:`O(H b D^2)` whatever ``M`` is. The statistics are accumulated in
    ``statistics_dtype`` (float64 by default), which keeps the incremental updates within
    float64 round-off of a recomputation; :meth:`recompute_statistics` recomputes them exactly.

    Called as a kernel, ``kernel(x1, x2)`` returns a lazily evaluated operator of shape
    ``(H, N1, N2)`` (a low-rank root when ``x2`` is omitted or is ``x1``).

    :param feature_extractor: the kernel network ``f``.
    :param num_inducing: ``M``, the number of inducing instances.
    :param num_heads: ``H``, the number of GP heads (output heads of the network explained).
    :param embedding_dim: ``D``, the kernel-space width per head.
    :param embedding_dtype: storage dtype of the cache (default: torch's default dtype). bfloat16 or
        float16 halve the memory; the statistics are computed from the stored (rounded) values,
        so they stay consistent with the cache.
    :param statistics_dtype: dtype of ``G`` and ``b`` (float64 recommended).
    :param device: where to allocate the cache (allocate a million-row cache directly on the GPU
        rather than moving it there).
    :param force_allocation: skip the check that the cache fits in the available memory.
    :param sharding: which rows of the inducing set this process holds and how the statistics are
        summed (:class:`~gpex_gpytorch.kernels.Sharding`; default one process holding every row).
        Under ``gpex_gpytorch.distributed.TorchDistributed`` the buffers :attr:`embeddings`
        ``(H, M_r, D)`` and :attr:`inducing_values` ``(M_r, H)`` hold this rank's contiguous rows
        ``[shard_start, shard_stop)`` only, while ``G``, ``b`` and ``VᵀV`` are global and identical on
        every rank; row indices in the API are global, and the calls that change or read the whole
        cache are collective. The strategy's ``prior_distribution`` (which materialises ``U``) then
        sees the local rows only.
    """

    has_lengthscale = False

    def __init__(
        self,
        feature_extractor: nn.Module,
        num_inducing: int,
        num_heads: int,
        embedding_dim: int,
        *,
        embedding_dtype: torch.dtype | None = None,
        statistics_dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        force_allocation: bool = False,
        sharding: Sharding | None = None,
        **kwargs: object,
    ) -> None:
        if sharding is not None and not isinstance(sharding, Sharding):
            raise TypeError(f"sharding: expected a gpex_gpytorch.kernels.Sharding, got {type(sharding).__name__}")
        if not isinstance(feature_extractor, nn.Module):
            raise TypeError(f"feature_extractor: expected a torch.nn.Module, got {type(feature_extractor).__name__}")
        for name, value in (
            ("num_inducing", num_inducing),
            ("num_heads", num_heads),
            ("embedding_dim", embedding_dim),
        ):
            check_positive_int(name, value)
        embedding_dtype = torch.get_default_dtype() if embedding_dtype is None else embedding_dtype
        if not embedding_dtype.is_floating_point:
            raise TypeError(f"embedding_dtype: expected a floating-point dtype, got {embedding_dtype}")
        if not statistics_dtype.is_floating_point:
            raise TypeError(f"statistics_dtype: expected a floating-point dtype, got {statistics_dtype}")
        sharding = SingleProcess() if sharding is None else sharding
        sharding.setup()
        layout = sharding.layout(num_inducing)
        local = layout.size(sharding.rank)  # the rows held here (all of them for one process)
        itemsize = torch.empty((), dtype=embedding_dtype).element_size()
        check_allocation(
            num_heads * local * embedding_dim * itemsize + local * num_heads * 4,
            device,
            f"the inducing cache ({num_heads} heads x {num_inducing} inducing x {embedding_dim} dims, "
            f"{embedding_dtype})",
            force=force_allocation,
        )
        if kwargs.get("active_dims") is not None:
            raise ValueError(
                f"active_dims: CachedDeepKernel takes whatever inputs feature_extractor takes (images included), so it "
                f"cannot select input dimensions; select them inside feature_extractor (e.g. a first module returning "
                f"x[..., dims]), got active_dims={kwargs['active_dims']!r}"
            )
        if kwargs.get("batch_shape") is not None:
            raise ValueError(
                f"batch_shape: CachedDeepKernel's batch shape is (num_heads,) = ({num_heads},), set by num_heads; "
                f"got batch_shape={kwargs['batch_shape']!r}"
            )
        kwargs.pop("active_dims", None)
        kwargs.pop("batch_shape", None)
        super().__init__(batch_shape=torch.Size([num_heads]), **kwargs)
        self.feature_extractor = feature_extractor
        self.sharding = sharding
        self.layout: ShardLayout = layout
        # The global M: index checks and the posterior's formulas (the KL's (M - D) log σ²) use it.
        self.num_inducing = num_inducing
        self.num_heads = num_heads
        self.embedding_dim = embedding_dim
        # shape: (H, M_r, D), stored row-major as (M_r, H, D): a row's H*D values are one contiguous
        # read or write, which is what a step's gathers and refreshes of scattered rows need. The
        # (H, M, D) view keeps state_dict shapes, and old checkpoints load into it unchanged.
        rows = torch.zeros(local, num_heads, embedding_dim, dtype=embedding_dtype, device=device)
        self.register_buffer("embeddings", rows.permute(1, 0, 2))
        # shape: (H, D, D)
        self.register_buffer(
            "gram", torch.zeros(num_heads, embedding_dim, embedding_dim, dtype=statistics_dtype, device=device)
        )
        # Set by set_inducing_values; `values_set` records whether they were.
        # shape: (M_r, H)
        self.register_buffer("inducing_values", torch.zeros(local, num_heads, device=device))
        self.register_buffer("values_set", torch.tensor(False, device=device))
        # shape: (H, D)
        self.register_buffer("cross", torch.zeros(num_heads, embedding_dim, dtype=statistics_dtype, device=device))
        # shape: (H,) — v_l^T v_l, needed by the KL divergence.
        self.register_buffer("values_sq", torch.zeros(num_heads, dtype=statistics_dtype, device=device))

    # ------------------------------------------------------------------ properties
    @property
    def has_inducing_values(self) -> bool:
        """Whether :meth:`set_inducing_values` has been called (``b`` and ``VᵀV`` are then maintained)."""
        return bool(self.values_set)

    @property
    def statistics_dtype(self) -> torch.dtype:
        """dtype of the statistics ``G``, ``b`` and ``VᵀV``."""
        return self.gram.dtype

    @property
    def is_stationary(self) -> bool:
        return False

    @property
    def num_local_inducing(self) -> int:
        """``M_r``, the rows this process holds (``M`` for one process)."""
        return self.embeddings.shape[1]

    @property
    def rank(self) -> int:
        """This process's rank under :attr:`sharding` (0 for one process)."""
        return self.sharding.rank

    @property
    def world_size(self) -> int:
        """The number of processes sharing the cache."""
        return self.layout.world_size

    @property
    def shard_start(self) -> int:
        """First global row held here."""
        return self.layout.start(self.rank)

    @property
    def shard_stop(self) -> int:
        """One past the last global row held here."""
        return self.layout.stop(self.rank)

    def local_part(self, indices: Tensor) -> Tensor:
        """The entries of ``indices`` (global rows) held here, in their order (all of them for one process)."""
        return self.layout.local_part(indices, self.rank)

    def local_indices(self) -> Tensor:
        """The global indices of the rows held here, in cache order."""
        return torch.arange(self.shard_start, self.shard_stop)

    # ------------------------------------------------------------------ embeddings
    def data_parallel(self, **kwargs: Any) -> nn.Module | None:
        """Wrap the kernel network for data-parallel training under :attr:`sharding` (``None``: nothing to wrap).

        Embeddings with gradient then go through the wrapper; those without (refreshes,
        evaluation) bypass it, so they need no collective.

        :param kwargs: passed to the policy's wrapper (e.g. ``device_ids`` of ``DistributedDataParallel``).
        """
        wrapped = self.sharding.data_parallel(self.feature_extractor, **kwargs)
        # Not a sub-module: state_dict keys stay those of the unwrapped network.
        object.__setattr__(self, "_data_parallel", wrapped)
        return wrapped

    def embed(self, x: Tensor) -> Tensor:
        """Embed a batch with gradient: ``(H, N, D)`` (through :meth:`data_parallel`'s wrapper when set)."""
        self._check_device("x", x)
        wrapped = self.__dict__.get("_data_parallel")
        network = wrapped if wrapped is not None and torch.is_grad_enabled() else self.feature_extractor
        try:
            # A data-parallel forward starts with collectives of its own (its bucket rebuild).
            with self.sharding.collectives("the kernel network's data-parallel forward", mixed=True):
                features = network(x)
        except (RuntimeError, TypeError, ValueError) as error:
            # The network's own error (e.g. a shape mismatch) does not say which call fed it what.
            received = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            error.add_note(f"CachedDeepKernel.embed: feature_extractor failed on x ({received})")
            raise
        if not isinstance(features, Tensor):
            raise TypeError(f"feature_extractor: expected a tensor output, got {type(features).__name__}")
        n, h, d = features.shape[0] if features.dim() else 0, self.num_heads, self.embedding_dim
        if features.dim() == 2 and features.shape[1] == h * d:
            features = features.reshape(n, h, d)
        elif not (features.dim() == 3 and features.shape[1:] == (h, d)):
            if isinstance(x, Tensor) and features.dim() >= 3 and features.shape[-1] in (d, h * d):
                raise ValueError(
                    f"x: got shape {tuple(x.shape)}, for which feature_extractor returned {tuple(features.shape)}: a "
                    f"leading batch dimension in front of the N inputs (a data batch) is not supported; pass one "
                    f"batch of inputs (N, ...) at a time (the heads are the kernel's batch dimension, ({h},))"
                )
            raise ValueError(
                f"feature_extractor: expected an output of shape (N, {h}, {d}) or (N, {h * d}) "
                f"(num_heads={h}, embedding_dim={d}), got {tuple(features.shape)}"
            )
        # shape: (H, N, D)
        return features.transpose(0, 1)

    def _check_device(self, name: str, x: object) -> None:
        if isinstance(x, Tensor) and x.device != self.embeddings.device:
            raise ValueError(
                f"{name}: expected a tensor on {self.embeddings.device} (the inducing cache's device), "
                f"got one on {x.device}"
            )

    def _embed_checked(self, inputs: Tensor, expected_rows: int, name: str, rows: Tensor | None = None) -> Tensor:
        self._check_device(name, inputs)
        new = self.embed(inputs)
        if new.shape[1] != expected_rows:
            raise ValueError(f"{name}: expected {expected_rows} rows (one per index), got {new.shape[1]}")
        # Name the inducing rows (not positions in the (H, b, D) block) whose embedding is bad.
        check_finite_rows(f"{name} (embeddings from feature_extractor)", new, 1, rows, "inducing rows")
        return new

    def _local_rows(self, indices: Tensor, name: str, *, unique: bool = True) -> Tensor:
        """Global row indices -> positions in this process's buffers.

        Under several processes each passes only the rows it holds (possibly none: an empty tensor).
        """
        if self.world_size > 1 and isinstance(indices, Tensor) and indices.dim() == 1 and indices.numel() == 0:
            return torch.empty(0, dtype=torch.long, device=self.embeddings.device)
        idx = check_index_tensor(name, indices, self.num_inducing, unique=unique)
        if self.world_size > 1:
            start, stop = self.shard_start, self.shard_stop
            outside = (idx < start) | (idx >= stop)
            if bool(outside.any()):
                stray = idx[outside][:5]
                raise ValueError(
                    f"{name}: rank {self.rank} holds the global rows [{start}, {stop}); got {stray.tolist()} "
                    f"(held by ranks {self.layout.owners(stray).tolist()}); pass only this rank's rows "
                    "(kernel.local_part(indices))"
                )
            idx = idx - start
        return idx.to(self.embeddings.device)

    # ------------------------------------------------------------------ the cache
    def set_inducing_values(self, values: Tensor) -> None:
        """Attach the inducing values ``V``: ``(M, H)``, the network's outputs on the inducing set.

        Under several processes the global ``(M, H)`` (each keeps its rows) or this process's
        ``(M_r, H)`` is accepted. Computes :math:`b = U^\top V` and :math:`V^\top V` exactly (one
        :math:`O(MHD)` pass; collective).
        """
        local = self.num_local_inducing
        if self.world_size == 1 or not isinstance(values, Tensor) or values.shape[:1] != (local,):
            check_tensor(
                "inducing_values", values, shape=(self.num_inducing, self.num_heads), floating=True, finite=True
            )
            values = values[self.shard_start : self.shard_stop]
        else:
            check_tensor("inducing_values", values, shape=(local, self.num_heads), floating=True, finite=True)
        values = values.detach().to(device=self.embeddings.device, dtype=self.inducing_values.dtype)
        # Finite in float64 is not finite in float32: values beyond float32's range would become inf.
        check_finite_rows("inducing_values (after conversion to the cache's dtype)", values, 0)
        self.inducing_values.copy_(values)
        self.values_set.fill_(True)
        self.recompute_statistics()

    def _gather(self, idx: Tensor) -> Tensor:
        """The cached rows ``idx`` (local positions), ``(H, b, D)``."""
        rows = self.embeddings.transpose(0, 1)  # shape: (M_r, H, D)
        if rows.is_contiguous():
            return rows.index_select(0, idx).transpose(0, 1)
        # A cache replaced by a head-major tensor: index_select, not [:, idx] (several times slower).
        return self.embeddings.index_select(1, idx)

    def _scatter(self, idx: Tensor, stored: Tensor) -> None:
        """Write ``stored`` ``(H, b, D)`` (in ``embedding_dtype``) into the rows ``idx`` (local positions)."""
        rows = self.embeddings.transpose(0, 1)  # shape: (M_r, H, D)
        if rows.is_contiguous():
            rows.index_copy_(0, idx, stored.transpose(0, 1))
        else:
            self.embeddings.index_copy_(1, idx, stored)

    def _deltas(self, idx: Tensor, new: Tensor | None) -> list[Tensor]:
        """``[ΔG, Δb]`` (``Δb`` with inducing values only) of replacing the local rows ``idx`` by ``new``.

        ``new`` is ``None`` when this process has no rows in the call (zeros: it still joins the sum).
        """
        stats_dtype = self.statistics_dtype
        if new is None:
            parts = [torch.zeros_like(self.gram)]
            if self.has_inducing_values:
                parts.append(torch.zeros_like(self.cross))
            return parts
        # shape: (H, b)
        values = self.inducing_values.index_select(0, idx).T if self.has_inducing_values else None
        gram, cross = GramDelta.apply(new, self._gather(idx), values, stats_dtype)
        return [gram] if cross is None else [gram, cross]

    def _check_deltas(self, parts: list[Tensor], new: Tensor, stored: Tensor | None, rows: Tensor, name: str) -> None:
        """Reject non-finite embeddings, checked on the ``(H, D, D)`` delta rather than on every row.

        A NaN or inf in any row makes ``ΔG`` non-finite, so the cheap check sees every bad row; only
        then are the rows searched, to name them (before any state changes).
        """
        # The sum is finite iff every entry is, unless it overflows: only then look at the entries.
        delta = parts[0].detach()
        if bool(torch.isfinite(delta.sum())) or bool(torch.isfinite(delta).all()):
            return
        check_finite_rows(f"{name} (embeddings from feature_extractor)", new.detach(), 1, rows, "inducing rows")
        if stored is not None:
            self._stored(name, new.detach(), rows)  # finite, but not once rounded to embedding_dtype
        raise NonFiniteError(
            f"{name} (embeddings from feature_extractor): the rows {rows.tolist()[:10]} are finite but their Gram "
            f"overflows {self.statistics_dtype}; scale the kernel network's output down"
        )

    @torch.no_grad()
    def refresh(self, indices: Tensor, inputs: Tensor) -> None:
        """Recompute the cached rows ``indices`` from ``inputs`` (no gradient) and update ``G``, ``b``.

        Under several processes each passes the rows it holds (possibly none); the deltas are summed
        by one reduction of ``H*D*D + H*D`` numbers (collective).

        :param indices: ``(b,)`` distinct global row indices into the inducing set.
        :param inputs: the inducing inputs of those rows, in the same order.
        """
        idx = self._local_rows(indices, "indices")
        stored = None
        if idx.numel():
            self._check_device("inputs", inputs)
            new = self.embed(inputs)
            if new.shape[1] != idx.numel():
                raise ValueError(f"inputs: expected {idx.numel()} rows (one per index), got {new.shape[1]}")
            # The statistics must describe what is stored (rounded to embedding_dtype), not `new`.
            stored = new.to(self.embeddings.dtype)
        parts = self._deltas(idx, stored)
        if stored is not None:
            self._check_deltas(parts, new, stored, idx + self.shard_start, "inputs")
        parts = self.sharding.sum(parts, "the all-reduce of a refresh")
        self.gram.add_(parts[0])
        if self.has_inducing_values:
            self.cross.add_(parts[1])
        if stored is not None:
            self._scatter(idx, stored)

    def _stored(self, name: str, new: Tensor, rows: Tensor) -> Tensor:
        """``new`` rounded to ``embedding_dtype``, rejecting rows that overflow it (finite before, inf after)."""
        stored = new.to(self.embeddings.dtype)
        bad = nonfinite_rows(stored, 1)
        if bad.numel():
            limit = torch.finfo(self.embeddings.dtype).max
            shown = rows.reshape(-1)[bad.to(rows.device)].tolist()[:10]
            raise NonFiniteError(
                f"{name} (embeddings from feature_extractor): values beyond the range of embedding_dtype="
                f"{self.embeddings.dtype} (|x| <= {limit:.4g}) for inducing rows {shown}; scale the kernel network's "
                "output down or store the cache in a wider dtype"
            )
        return stored

    @torch.no_grad()
    def fill(
        self,
        inputs: Tensor | Iterable[Tensor],
        *,
        batch_size: int = 1024,
        progress: bool = True,
        staged: bool = True,
    ) -> None:
        """Compute every row of the cache, in order, without gradient (the initial sweep).

        With ``staged=True`` (the default) it is all or nothing: the rows are computed into a
        staging copy and committed, with ``G`` and ``b`` recomputed, only once all rows are in
        and finite (after rounding to ``embedding_dtype``). A failure — a NaN or an overflow in any
        batch, an iterable yielding too few or too many rows, the kernel network raising — leaves
        the cache and its statistics exactly as they were. The staging copy needs as much memory
        as the cache for the duration of the call. With ``staged=False`` rows are written in place
        (no second copy, for caches too large to hold twice); after a failure the rows before the
        failing batch hold the new embeddings, the others are unchanged, and ``G`` and ``b`` are
        recomputed to match what is stored.

        Under several processes each fills the rows it holds and the statistics are summed
        (collective: every process reaches the reduction, even one that failed).

        :param inputs: all ``M`` inducing inputs as one tensor (a process keeps its rows), this
            process's ``M_r`` of them, or an iterable of batches of this process's inputs in index
            order (e.g. a non-shuffled ``DataLoader`` yielding input tensors).
        :param batch_size: rows per forward pass when ``inputs`` is a tensor.
        :param progress: show a progress bar (on the main process only).
        :param staged: all-or-nothing through a staging copy (see above).
        """
        check_positive_int("batch_size", batch_size)
        if not isinstance(staged, bool):
            raise TypeError(f"staged: expected a bool, got {type(staged).__name__}")
        local = self.num_local_inducing
        if isinstance(inputs, Tensor):
            if inputs.dim() and inputs.shape[0] == self.num_inducing:
                inputs = inputs[self.shard_start : self.shard_stop]
            elif inputs.dim() == 0 or inputs.shape[0] != local:
                expected = f"{self.num_inducing} inducing inputs (num_inducing)"
                if self.world_size > 1:
                    expected += f" or rank {self.rank}'s {local}"
                raise ValueError(f"inputs: expected {expected} along dimension 0, got shape {tuple(inputs.shape)}")
            self._check_device("inputs", inputs)
            batches: Iterable[Tensor] = inputs.split(batch_size)
            total: int | None = -(-local // batch_size)
        else:
            batches, total = inputs, None
        target = torch.empty_like(self.embeddings) if staged else self.embeddings  # shape: (H, M_r, D)
        offset, start, complete = self.shard_start, 0, False
        try:
            show = progress and self.sharding.is_main
            for batch in tqdm(batches, total=total, desc="filling inducing cache", disable=not show):
                self._check_device(f"inputs[{start}:]", batch)
                new = self.embed(batch)
                stop = start + new.shape[1]
                if stop > local:
                    raise ValueError(f"inputs: yielded more than {self._rows_held()} rows")
                rows = torch.arange(start, stop) + offset
                name = f"inputs[{start + offset}:{stop + offset}]"
                stored = new.to(self.embeddings.dtype)
                # One sum says whether every value is finite (unless it overflows); only then are rows searched.
                if not (bool(torch.isfinite(stored.sum())) or bool(torch.isfinite(stored).all())):
                    check_finite_rows(f"{name} (embeddings from feature_extractor)", new, 1, rows, "inducing rows")
                    self._stored(name, new, rows)  # finite, but not once rounded to embedding_dtype
                target[:, start:stop] = stored
                start = stop
            if start != local:
                raise ValueError(f"inputs: yielded {start} rows, expected {self._rows_held()}")
            complete = True
        finally:
            if complete and staged:
                self.embeddings.copy_(target)
            # Statistics matching what is stored; a failed staged fill on one process changed nothing to match,
            # but under several processes every one must still join the reduction.
            if complete or not staged or self.world_size > 1:
                self.recompute_statistics()

    def _rows_held(self) -> str:
        if self.world_size == 1:
            return f"num_inducing={self.num_inducing}"
        return f"rank {self.rank}'s {self.num_local_inducing}"

    @torch.no_grad()
    def recompute_statistics(self, batch_size: int = 512) -> None:
        """Recompute ``G = UᵀU``, ``b = UᵀV`` and ``VᵀV`` exactly from the cache (:math:`O(MHD^2)`; collective).

        :param batch_size: rows converted to the statistics' dtype at a time (small blocks stay in the
            processor's cache: measured 3x faster at 512 rows than at 16,384).
        """
        gram, cross, values_sq = self._exact_statistics(batch_size)
        self.gram.copy_(gram)
        if self.has_inducing_values:
            self.cross.copy_(cross)
            self.values_sq.copy_(values_sq)

    def _exact_statistics(self, batch_size: int = 512) -> list[Tensor]:
        """``[G, b, VᵀV]`` summed over the rows (and processes) from the cache; ``b`` is zero without values."""
        check_positive_int("batch_size", batch_size)
        stats_dtype = self.statistics_dtype
        gram, cross = torch.zeros_like(self.gram), torch.zeros_like(self.cross)
        rows = self.embeddings.transpose(0, 1)  # shape: (M_r, H, D), contiguous in the row-major layout
        # One buffer for every block: its conversion to stats_dtype is one contiguous copy, not an allocation.
        buffer = torch.empty((min(batch_size, rows.shape[0]), *rows.shape[1:]), dtype=stats_dtype, device=rows.device)
        values = self.inducing_values
        for start in range(0, self.num_local_inducing, batch_size):
            block = buffer[: min(batch_size, rows.shape[0] - start)]
            block.copy_(rows[start : start + batch_size])
            u = block.transpose(0, 1)  # shape: (H, b, D)
            gram.baddbmm_(u.mT, u)
            if self.has_inducing_values:
                v = values[start : start + batch_size].T.to(stats_dtype).unsqueeze(-1)  # shape: (H, b, 1)
                cross.unsqueeze(-1).baddbmm_(u.mT, v)
        values_sq = values.to(stats_dtype).square().sum(0)
        return self.sharding.sum([gram, cross, values_sq], "the exact recompute")

    @torch.no_grad()
    def gram_drift(self) -> float:
        r"""Relative drift of the cached Gram, :math:`\max_l \|G_l - U_l^\top U_l\|_F / \|U_l^\top U_l\|_F`."""
        exact = self._exact_statistics()[0]
        num = torch.linalg.matrix_norm(self.gram - exact)
        den = torch.linalg.matrix_norm(exact).clamp_min(torch.finfo(exact.dtype).tiny)
        return float((num / den).max())

    @torch.no_grad()
    def staleness(self, indices: Tensor, inputs: Tensor) -> float:
        r"""How stale the cache is on a sample: :math:`\|U_{cache} - f(\tilde x)\|_F / \|f(\tilde x)\|_F`.

        Under several processes each passes the rows it holds; the value is that of the whole sample.
        """
        idx = self._local_rows(indices, "indices", unique=False)
        sums = torch.zeros(2, dtype=torch.float64, device=self.embeddings.device)
        if idx.numel():
            current = self._embed_checked(inputs, idx.numel(), "inputs", idx + self.shard_start)
            cached = self._gather(idx).to(current.dtype)
            sums = torch.stack([(cached - current).double().square().sum(), current.double().square().sum()])
        num, den = self.sharding.sum([sums], "the staleness all-reduce")[0]
        return float(num.sqrt() / den.sqrt().clamp_min(1e-30))

    def statistics(self, fresh_indices: Tensor | None = None, fresh_inputs: Tensor | None = None) -> InducingStatistics:
        r"""``G`` and ``b`` with the rows ``fresh_indices`` recomputed *with gradient* (Alg. 1).

        :math:`G = G_{cache} - U_{old}^\top U_{old} + U_{fresh}^\top U_{fresh}`: the cached part is
        constant, gradient reaches ``f`` through the fresh rows. Cost :math:`O(H b D^2)`. Under
        several processes each passes the fresh rows it holds (possibly none) and the deltas are
        summed by a differentiable reduction, so each process's rows receive the gradient of the
        loss of all (collective). Without fresh rows: the cached statistics, no communication.
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
            self._check_device("fresh_inputs", fresh_inputs)
            fresh = self.embed(fresh_inputs)
            if fresh.shape[1] != idx.numel():
                raise ValueError(
                    f"fresh_inputs: expected {idx.numel()} rows (one per fresh index), got {fresh.shape[1]}"
                )
        parts = self._deltas(idx, fresh)
        if fresh is not None:
            # A NaN here would surface later as a failed Cholesky of G; name the rows instead.
            self._check_deltas(parts, fresh, None, idx + self.shard_start, "fresh_inputs")
        parts = self.sharding.differentiable_sum(parts, "the all-reduce of the fresh rows")
        gram = self.gram + parts[0]
        if cross is not None:
            cross = cross + parts[1]
        return InducingStatistics(gram, cross)

    # ------------------------------------------------------------------ as a GPyTorch kernel
    def forward(
        self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch: bool = False, **params: object
    ) -> Tensor | LinearOperator:
        if last_dim_is_batch:
            raise NotImplementedError("CachedDeepKernel does not support last_dim_is_batch")
        f1 = self.embed(x1)
        f2 = f1 if x2 is x1 else self.embed(x2)
        if diag:
            return (f1 * f2).sum(-1)  # shape: (H, N)
        if f2 is f1:
            return LowRankRootLinearOperator(f1)  # shape: (H, N, N)
        return MatmulLinearOperator(f1, f2.mT)  # shape: (H, N1, N2)

    def num_outputs_per_input(self, x1: Tensor, x2: Tensor) -> int:
        """One output per input; also the hook through which GPyTorch's compositions see the inputs.

        ``ScaleKernel``, sums and products of kernels go through ``Kernel.__call__``, which reads the inputs
        as ``(..., N, d)`` (the leading dimensions as batch dimensions) to size its lazy result. That is
        right only for 2-D inputs ``(N, d)``, so other shapes are refused here with the remedy, rather than
        failing later with a shape mismatch.
        """
        for name, x in (("x1", x1), ("x2", x2)):
            if isinstance(x, Tensor) and x.dim() != 2:
                raise ValueError(
                    f"{name}: GPyTorch's kernel compositions (ScaleKernel, kernel sums and products) read inputs as "
                    f"(..., N, d), taking leading dimensions for batch dimensions, so a CachedDeepKernel inside "
                    f"one needs 2-D inputs (N, d); got shape {tuple(x.shape)}. Flatten the inputs (x.flatten(1)) "
                    f"and begin feature_extractor with nn.Unflatten(1, {tuple(x.shape[1:])}), or call the "
                    f"CachedDeepKernel directly, which takes any input shape"
                )
        return 1

    def __getitem__(self, index: object) -> CachedDeepKernel:
        """Not supported: a head's kernel cannot be split off the shared kernel network and cache.

        GPyTorch's ``kernel[i]`` copies the kernel with its batch parameters sliced; here the heads share
        ``feature_extractor`` and one cache, so a copy would duplicate the network and the whole cache.
        """
        raise NotImplementedError(
            f"CachedDeepKernel[{index!r}]: slicing out heads is not supported (the heads share feature_extractor "
            f"and one inducing cache). Head h's kernel is k_h(x, x') = f_h(x)ᵀf_h(x'): index the result instead, "
            f"kernel(x1, x2)[h], or the embeddings, kernel.embed(x)[h]; the cache rows of head h are "
            f"kernel.embeddings[h] and its inducing values kernel.inducing_values[:, h]"
        )

    def __call__(  # type: ignore[override]
        self,
        x1: Tensor,
        x2: Tensor | None = None,
        diag: bool = False,
        last_dim_is_batch: bool = False,
        **params: object,
    ) -> Tensor | LinearOperator:
        # Inputs are whatever the kernel network takes (images included), so GPyTorch's
        # (..., N, d) bookkeeping in Kernel.__call__ does not apply; the result is lazy already.
        return self.forward(x1, x1 if x2 is None else x2, diag=diag, last_dim_is_batch=last_dim_is_batch, **params)
