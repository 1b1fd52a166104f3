"""Alg. 2 under ``torch.distributed``: the :class:`Distiller` loop over a sharded inducing cache."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..distillation.checkpointing import check_writable
from ..distillation.dataset_access import dataset_length, take_inputs
from ..distillation.distiller import CHECKPOINT_FORMAT, Distiller, _Run, _Sweep, pearson_per_head
from ..distillation.input_mixing import mix_inputs
from ..mlls import ANNMatchingELBO
from ..models.gpex_model import GPEXModel
from ..utils.progress import resolve_progress
from .checkpoint_shards import MANIFEST, ShardedCheckpoint, load_sharded_checkpoint, save_sharded_checkpoint
from .communication import CommunicationMeter, all_reduce_sum, collective_errors, counting_allreduce_hook
from .sharded_cached_deep_kernel import ShardedCachedDeepKernel
from .sharding import ShardLayout

__all__ = ["DistributedDistiller"]

# What _save_sharded writes beside the model (the RNG of torch is not part of a sharded run's state).
_SHARDED_EXTRA_KEYS = ("format", "config", "step", "optimizer", "generator", "fresh_sweep", "refresh_sweep", "history")


def _take(dataset: Dataset, indices: Tensor, input_shape: torch.Size) -> Tensor:
    # take_inputs cannot stack zero items; a rank may own none of a step's rows.
    if indices.numel() == 0:
        return torch.empty((0, *input_shape))
    return take_inputs(dataset, indices)


class DistributedDistiller(Distiller):
    r""":class:`~gpex_gpytorch.Distiller` on every rank of a ``torch.distributed`` job (launch with ``torchrun``).

    Same parameters and fitted attributes as the :class:`Distiller`; ``checkpoint_path`` and
    ``resume`` name a *folder* of per-rank shards (:func:`save_sharded_checkpoint`), which can be
    resumed on another number of ranks. Each rank holds ``M/P`` rows of the inducing cache
    (:class:`ShardedCachedDeepKernel`); the kernel network trains under
    :class:`~torch.nn.parallel.DistributedDataParallel`.

    Every random draw is the single-process run's: all ranks draw the *global* batch from the
    same generator (training indices, mixing weights, inducing rows to recompute and refresh),
    then rank ``r`` keeps its slice of the training batch (``batch_size / P`` inputs) and the
    inducing rows it holds. So the run reproduces ``Distiller(same settings).fit(...)`` on one
    process to float round-off, whatever ``P``. Per step a rank sends three all-reduces of
    ``H*D*D + H*D`` float64 (the fresh rows' delta, its gradient, the refresh's delta), DDP's
    gradient buckets (the kernel network's size), and one small all-reduce of the loss and of the
    gradients of parameters outside DDP (the noise); nothing scales with ``M``.

    ``batch_size`` must be a multiple of the world size (equal local batches make DDP's average
    of the local means the global mean). ``device`` defaults to the ANN's device (put the ANN on
    ``cuda:<local rank>`` under NCCL). Measured traffic is in ``communication_`` (bytes and calls
    per category, whole run), per-step times and bytes in ``history_`` (``step_seconds``,
    ``bytes_sent``).
    """

    def fit(
        self,
        train_dataset: Dataset,
        inducing_dataset: Dataset | None = None,
        *,
        resume: str | Path | None = None,
    ) -> DistributedDistiller:
        """Run Alg. 2 for ``steps`` steps on every rank (collective; see :meth:`Distiller.fit`)."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "DistributedDistiller: torch.distributed is not initialised; launch with torchrun and call "
                "gpex_gpytorch.distributed.init_distributed() first (or use Distiller on one process)"
            )
        world = dist.get_world_size()
        if self.batch_size % world:
            raise ValueError(f"batch_size: expected a multiple of the world size {world}, got {self.batch_size}")
        num_train = dataset_length(train_dataset, "train_dataset")
        inducing_dataset = train_dataset if inducing_dataset is None else inducing_dataset
        num_inducing = dataset_length(inducing_dataset, "inducing_dataset")
        device = self._device()
        if self.checkpoint_path is not None:
            # The folder of shards: found read-only now, not after an interval's work.
            check_writable(Path(self.checkpoint_path) / MANIFEST)
        checkpoint = None
        if resume is not None:
            layout = ShardLayout(num_inducing, world)
            checkpoint = load_sharded_checkpoint(resume, layout, dist.get_rank(), map_location=device)
        ann_was_training = self.ann.training
        self.ann.eval()
        try:
            num_heads = self._check_ann(train_dataset, device, inducing_dataset)
            run = self._start_sharded(train_dataset, inducing_dataset, num_inducing, num_heads, device, checkpoint)
            self._train_sharded(run, train_dataset, inducing_dataset, num_train, device)
        finally:
            self.ann.train(ann_was_training)
        run.model.eval()
        self.final_refresh_ = None
        if self.final_refresh:  # each rank refreshes its own rows; the statistics are all-reduced
            kernel = run.model.covar_module
            rows = torch.arange(kernel.shard_start, kernel.shard_stop).split(self.fill_batch_size)
            self.final_refresh_ = self._refresh_cache(
                run.model, (take_inputs(inducing_dataset, r).to(device) for r in rows)
            )
        self.model_ = run.model
        self.history_ = run.history
        return self

    # ------------------------------------------------------------------ set-up
    def _start_sharded(
        self,
        train_dataset: Dataset,
        inducing_dataset: Dataset,
        num_inducing: int,
        num_heads: int,
        device: torch.device,
        checkpoint: ShardedCheckpoint | None,
    ) -> _Run:
        self.input_shape_ = take_inputs(train_dataset, torch.arange(1)).shape[1:]
        network = self._kernel_network(self.input_shape_, num_heads, device)
        kernel = ShardedCachedDeepKernel(
            network, num_inducing, num_heads, self.embedding_dim, embedding_dtype=self.embedding_dtype, device=device
        )
        generator = torch.Generator().manual_seed(self.seed)
        if checkpoint is None:
            rows = torch.arange(kernel.shard_start, kernel.shard_stop).split(self.fill_batch_size)
            values = torch.cat([self._ann_outputs(take_inputs(inducing_dataset, r).to(device)).float() for r in rows])
            if not bool(torch.isfinite(values).all()):
                raise FloatingPointError(f"ann: non-finite outputs on inducing_dataset rows of rank {kernel.rank}")
            kernel.fill((take_inputs(inducing_dataset, r).to(device) for r in rows), staged=False)
        else:
            self._check_checkpoint(checkpoint.extra, num_inducing, num_heads, _SHARDED_EXTRA_KEYS)
            values = checkpoint.model_state["variational_strategy.kernel.inducing_values"]
        model = GPEXModel(kernel, values, noise=self.noise, learn_noise=self.learn_noise).to(device)
        if checkpoint is not None:
            model.load_state_dict(checkpoint.model_state)
        # After loading: DDP broadcasts rank 0's weights, which are then everyone's.
        ddp = kernel.data_parallel(device_ids=[device.index] if device.type == "cuda" else None)
        self.communication_: dict[str, CommunicationMeter] = {
            "statistics": kernel.communication,
            "ddp_gradients": CommunicationMeter(),
            "other": CommunicationMeter(),
        }
        ddp.register_comm_hook(None, counting_allreduce_hook(self.communication_["ddp_gradients"]))
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)
        run = _Run(model, optimizer, generator, _Sweep(num_inducing, generator), _Sweep(num_inducing, generator), 0, [])
        if checkpoint is not None:
            extra = checkpoint.extra
            optimizer.load_state_dict(extra["optimizer"])
            generator.set_state(extra["generator"])
            run.fresh_sweep.load(extra["fresh_sweep"])
            run.refresh_sweep.load(extra["refresh_sweep"])
            run.step = int(extra["step"])
            run.history = list(extra["history"])
        return run

    def _save_sharded(self, run: _Run, kernel: ShardedCachedDeepKernel) -> None:
        assert self.checkpoint_path is not None
        extra = {
            "format": CHECKPOINT_FORMAT,
            "config": {**self._config(), "num_inducing": kernel.num_inducing, "num_heads": kernel.num_heads},
            "step": run.step,
            "optimizer": run.optimizer.state_dict(),
            "generator": run.generator.get_state(),
            "fresh_sweep": run.fresh_sweep.state(),
            "refresh_sweep": run.refresh_sweep.state(),
            "history": run.history,
        }
        save_sharded_checkpoint(Path(self.checkpoint_path), run.model, kernel, extra, step=run.step)

    # ------------------------------------------------------------------ the loop
    def _train_sharded(
        self, run: _Run, train_dataset: Dataset, inducing_dataset: Dataset, num_train: int, device: torch.device
    ) -> None:
        model = run.model
        kernel: ShardedCachedDeepKernel = model.covar_module  # type: ignore[assignment]
        layout, rank, world = kernel.layout, kernel.rank, kernel.world_size
        mll = ANNMatchingELBO(
            None,
            model,
            num_data=num_train,
            beta=self.beta,
            ann_noise=self.ann_noise,
            detach_variance=self.detach_variance,
        )
        eval_x = self._eval_batch(train_dataset, num_train, device)
        eval_ann = self._ann_outputs(eval_x)
        refresh_size = self.refresh_batch_size or self.inducing_batch_size
        local = slice(rank * self.batch_size // world, (rank + 1) * self.batch_size // world)
        ddp_params = {id(p) for p in kernel.feature_extractor.parameters()}
        # Trainable parameters DDP does not see (a learnable noise): their gradients are averaged here.
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in ddp_params]
        model.train()
        show = resolve_progress(self.progress) and rank == 0
        bar = tqdm(total=self.steps, initial=run.step, desc="distilling", disable=not show)
        start_time = time.perf_counter()
        while run.step < self.steps:
            step = run.step + 1
            step_start = time.perf_counter()
            sent_before = sum(m.bytes for m in self.communication_.values())
            # The global batch, drawn identically on every rank (the single-process draws, in order).
            i1 = torch.randint(num_train, (self.batch_size,), generator=run.generator)
            x = take_inputs(train_dataset, i1[local])
            if self.mix:
                i2 = torch.randint(num_train, (self.batch_size,), generator=run.generator)
                # mix_inputs of ones and zeros returns its α exactly, drawn as the single process draws it.
                alpha = mix_inputs(torch.ones(self.batch_size, 1), torch.zeros(self.batch_size, 1), run.generator)
                a = alpha[local].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
                x = a * x + (1 - a) * take_inputs(train_dataset, i2[local])
            x = x.to(device)
            target = self._ann_outputs(x)
            fresh = layout.local_part(run.fresh_sweep.next(self.inducing_batch_size, run.generator), rank)
            fresh_inputs = _take(inducing_dataset, fresh, self.input_shape_).to(device)
            output = model(x, fresh_indices=fresh, fresh_inputs=fresh_inputs)
            loss = -mll(output, target.to(output.mean.dtype))
            run.optimizer.zero_grad(set_to_none=True)
            # The backward runs the statistics' all-reduce and DDP's gradient buckets: a dead peer
            # surfaces here as a raw RuntimeError from DDP's callback unless named.
            with collective_errors(f"step {step}: the backward (gradient all-reduces)", kernel.process_group):
                loss.backward()
            loss_value = self._average_others(loss.detach(), others, kernel.process_group, world)
            if not bool(torch.isfinite(loss_value)):  # the same verdict on every rank: all stop together
                raise FloatingPointError(
                    f"step {step}: non-finite loss (averaged over ranks); the kernel network's embeddings or the "
                    "ANN's outputs are not finite, or the GP variance underflowed (raise noise)"
                )
            run.optimizer.step()
            rows = layout.local_part(run.refresh_sweep.next(refresh_size, run.generator), rank)
            kernel.refresh(rows, _take(inducing_dataset, rows, self.input_shape_).to(device))
            if self.recompute_every is not None and step % self.recompute_every == 0:
                kernel.recompute_statistics()
            run.step = step
            record: dict[str, float] = {
                "step": float(step),
                "loss": float(loss_value),
                "step_seconds": time.perf_counter() - step_start,
                # Payload this rank handed to collectives in the step (before any evaluation).
                "bytes_sent": float(sum(m.bytes for m in self.communication_.values()) - sent_before),
            }
            if step % self.eval_every == 0 or step == self.steps:
                # eval_ann is identical on every rank: all raise together, none waits on a collective.
                self._check_eval_outputs(eval_ann, num_train, step)
                record.update(self._evaluate_sharded(run, eval_x, eval_ann, inducing_dataset, device))
                record["seconds"] = time.perf_counter() - start_time
            run.history.append(record)
            bar.update(1)
            if self.checkpoint_every is not None and step % self.checkpoint_every == 0:
                self._save_sharded(run, kernel)
        bar.close()

    def _average_others(
        self, loss: Tensor, others: list[torch.nn.Parameter], group: dist.ProcessGroup | None, world: int
    ) -> Tensor:
        """Mean over ranks of the loss and of the gradients of ``others``, in one all-reduce."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in others]
        parts = [loss.double().reshape(1)] + [g.double().reshape(-1) for g in grads]
        with torch.no_grad():
            total = all_reduce_sum(torch.cat(parts), group, self.communication_["other"], what="the loss all-reduce")
            total = total / world
        offset = 1
        for p, g in zip(others, grads, strict=True):
            p.grad = total[offset : offset + g.numel()].reshape(g.shape).to(g.dtype)
            offset += g.numel()
        return total[0]

    def _evaluate_sharded(
        self, run: _Run, eval_x: Tensor, eval_ann: Tensor, inducing_dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        model = run.model
        kernel: ShardedCachedDeepKernel = model.covar_module  # type: ignore[assignment]
        mean, _ = model.predict(eval_x)  # the global posterior: the same on every rank, no communication
        corr = pearson_per_head(mean, eval_ann)
        generator = torch.Generator().manual_seed(self.seed + run.step)
        rows = torch.randint(kernel.num_inducing, (256,), generator=generator).unique()
        rows = kernel.layout.local_part(rows, kernel.rank)
        staleness = kernel.staleness(rows, _take(inducing_dataset, rows, self.input_shape_).to(device))
        valid = corr[~corr.isnan()]
        return {
            "pearson": float(valid.mean()) if valid.numel() else float("nan"),
            "pearson_min": float(valid.min()) if valid.numel() else float("nan"),
            "staleness": staleness,
        }
