"""The one training loop of GPEX (Alg. 2), for one process or many: the sharding policy makes the difference."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from gpytorch.distributions import MultitaskMultivariateNormal
from torch import Tensor
from torch.utils.data import Dataset

from ..kernels import Sharding
from ..mlls import ANNMatchingELBO
from ..utils import NonFiniteError, nonfinite_rows
from ..utils.progress import ProgressSetting, progress_bar
from .dataset_access import take_inputs
from .input_mixing import apply_mixing, mix_inputs, mixing_weights
from .metrics import pearson_per_head, summarise_pearson
from .training_state import TrainingState

__all__ = ["LoopData", "LoopSettings", "run_training"]


@dataclass(frozen=True)
class LoopData:
    """What the loop reads: the data sets and where the GPs live.

    :ivar train: the training inputs (map-style).
    :ivar inducing: the inducing inputs, in cache order.
    :ivar num_train: ``len(train)``.
    :ivar input_shape: the shape of one input.
    :ivar device: the GPs' device.
    :ivar targets: the network's outputs ``(N, H)`` on a batch (no gradient).
    """

    train: Dataset
    inducing: Dataset
    num_train: int
    input_shape: torch.Size
    device: torch.device
    targets: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LoopSettings:
    """The :class:`~gpex_gpytorch.Distiller` settings the loop uses (see its parameters)."""

    steps: int
    batch_size: int
    inducing_batch_size: int
    refresh_batch_size: int
    mix: bool
    beta: float
    ann_noise: float
    detach_variance: bool
    recompute_every: int | None
    eval_every: int
    eval_size: int
    checkpoint_every: int | None
    seed: int
    progress: ProgressSetting


def eval_indices(settings: LoopSettings, num_train: int) -> tuple[Tensor, Tensor, torch.Generator]:
    """The held-out batch's training indices, from a generator of its own (the run's draws stay unchanged)."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    i1 = torch.randint(num_train, (settings.eval_size,), generator=generator)
    i2 = torch.randint(num_train, (settings.eval_size,), generator=generator)
    return i1, i2, generator


def _check_targets(target: Tensor, step: int, i1: Tensor, i2: Tensor | None) -> None:
    bad = nonfinite_rows(target).cpu()
    if bad.numel():
        mixed = f" mixed with {i2[bad].tolist()}" if i2 is not None else ""
        raise FloatingPointError(
            f"step {step}: ann produced non-finite outputs for training indices {i1[bad].tolist()}{mixed}"
        )


def _culprits(output: MultitaskMultivariateNormal, i1: Tensor, i2: Tensor | None) -> str:
    """Which training indices made the loss non-finite (their GP mean or variance is NaN/inf)."""
    with torch.no_grad():
        bad = nonfinite_rows(torch.stack([output.mean, output.variance]), 1).cpu()
    if not bad.numel():
        return "the GP means and variances are finite: a variance underflowed or the KL term is not (raise noise)"
    shown = f"training indices {i1[bad].tolist()[:10]}"
    if i2 is not None:
        shown += f" mixed with {i2[bad].tolist()[:10]}"
    return f"the kernel network's embeddings (GP mean or variance) are not finite for {shown}"


def _evaluate(
    state: TrainingState, settings: LoopSettings, data: LoopData, eval_x: Tensor, eval_ann: Tensor
) -> dict[str, float]:
    kernel = state.model.covar_module
    mean, _ = state.model.predict(eval_x)  # the global posterior: the same in every process
    record = summarise_pearson(pearson_per_head(mean, eval_ann))
    # Staleness on a sample drawn from a generator of its own (keeps the run's draws unchanged).
    generator = torch.Generator().manual_seed(settings.seed + state.step)
    rows = kernel.local_part(torch.randint(kernel.num_inducing, (256,), generator=generator).unique())
    record["staleness"] = kernel.staleness(rows, take_inputs(data.inducing, rows, data.input_shape).to(data.device))
    return record


def run_training(
    state: TrainingState,
    settings: LoopSettings,
    data: LoopData,
    sharding: Sharding,
    save: Callable[[TrainingState], Any] | None = None,
) -> None:
    """Take steps until ``state.step == settings.steps`` (Alg. 2), in place.

    Every process of a sharded run draws the same global batch from ``state.generator`` (training
    indices, mixing weights, inducing rows), keeps its slice of the training batch and the inducing
    rows it holds, and joins the same collectives in the same order; with one process the policy's
    reductions are identities. The checks are the same for every policy: the network's targets,
    the fresh and refreshed embeddings and the loss are checked each step, and a failure names the
    step and the training indices or inducing rows at fault.

    :param save: writes a checkpoint of ``state`` (every ``checkpoint_every`` steps and at the last).
    """
    for name, value, expected in (
        ("state", state, TrainingState),
        ("settings", settings, LoopSettings),
        ("data", data, LoopData),
        ("sharding", sharding, Sharding),
    ):
        if not isinstance(value, expected):
            raise TypeError(f"{name}: expected a {expected.__name__}, got {type(value).__name__}")
    model, kernel = state.model, state.model.covar_module
    mll = ANNMatchingELBO(
        None,
        model,
        num_data=data.num_train,
        beta=settings.beta,
        ann_noise=settings.ann_noise,
        detach_variance=settings.detach_variance,
    )
    i1, i2, generator = eval_indices(settings, data.num_train)
    eval_x = mix_inputs(take_inputs(data.train, i1), take_inputs(data.train, i2), generator).to(data.device)
    eval_ann = data.targets(eval_x)
    local = sharding.local_batch(settings.batch_size)
    device_ids = [data.device.index] if data.device.type == "cuda" else None
    wrapped = kernel.data_parallel(device_ids=device_ids)
    covered = {id(p) for p in wrapped.parameters()} if wrapped is not None else set()
    # Trainable parameters the data-parallel wrapper does not see (a learnable noise): averaged here.
    outside = [p for p in model.parameters() if p.requires_grad and id(p) not in covered]
    meters = sharding.communication()
    model.train()
    bar = progress_bar(
        total=settings.steps,
        initial=state.step,
        desc="distilling",
        progress=settings.progress if sharding.is_main else False,
    )
    start_time = time.perf_counter()
    while state.step < settings.steps:
        step = state.step + 1
        step_start = time.perf_counter()
        sent_before = sum(m.bytes for m in meters.values())
        g = state.generator
        i1 = torch.randint(data.num_train, (settings.batch_size,), generator=g)
        x = take_inputs(data.train, i1[local])
        i2 = None
        if settings.mix:
            i2 = torch.randint(data.num_train, (settings.batch_size,), generator=g)
            alpha = mixing_weights(settings.batch_size, g)
            x = apply_mixing(x, take_inputs(data.train, i2[local]), alpha[local])
        x = x.to(data.device)
        target = data.targets(x)
        _check_targets(target, step, i1[local], i2[local] if i2 is not None else None)
        fresh = kernel.local_part(state.fresh_sweep.next(settings.inducing_batch_size, g))
        fresh_inputs = take_inputs(data.inducing, fresh, data.input_shape).to(data.device)
        try:
            output = model(x, fresh_indices=fresh, fresh_inputs=fresh_inputs)
        except NonFiniteError as error:  # the kernel network's embedding of fresh inducing rows
            raise FloatingPointError(f"step {step}: {error}") from error
        loss = -mll(output, target.to(output.mean.dtype))
        state.optimizer.zero_grad(set_to_none=True)
        # A dead peer surfaces in the backward (the statistics' and the gradients' all-reduces).
        with sharding.collectives(f"step {step}: the backward (gradient all-reduces)"):
            loss.backward()
        loss_value = sharding.average_gradients(loss, outside)
        if not bool(torch.isfinite(loss_value)):  # the same verdict in every process: all stop together
            where = " (averaged over ranks)" if sharding.world_size > 1 else ""
            culprits = _culprits(output, i1[local], i2[local] if i2 is not None else None)
            raise FloatingPointError(f"step {step}: non-finite loss{where}; {culprits}")
        state.optimizer.step()
        rows = kernel.local_part(state.refresh_sweep.next(settings.refresh_batch_size, g))
        try:
            kernel.refresh(rows, take_inputs(data.inducing, rows, data.input_shape).to(data.device))
        except NonFiniteError as error:
            raise FloatingPointError(f"step {step}: refreshing inducing rows failed: {error}") from error
        if settings.recompute_every is not None and step % settings.recompute_every == 0:
            kernel.recompute_statistics()
        state.step = step
        record: dict[str, float] = {
            "step": float(step),
            "loss": float(loss_value),
            "step_seconds": time.perf_counter() - step_start,
        }
        if meters:  # payload this process handed to collectives in the step (before any evaluation)
            record["bytes_sent"] = float(sum(m.bytes for m in meters.values()) - sent_before)
        if step % settings.eval_every == 0 or step == settings.steps:
            bad = nonfinite_rows(eval_ann).cpu()
            if bad.numel():  # the same held-out batch in every process: all raise together
                raise FloatingPointError(
                    f"step {step}: ann produced non-finite outputs on the evaluation batch, for mixes of training "
                    f"indices {_eval_mixes(settings, data, bad)}"
                )
            record.update(_evaluate(state, settings, data, eval_x, eval_ann))
            record["seconds"] = time.perf_counter() - start_time
            bar.set_postfix(
                loss=f"{record['loss']:.3g}",
                pearson=f"{record['pearson']:.4f}",
                stale=f"{record['staleness']:.3g}",
                refresh=False,
            )
        state.history.append(record)
        bar.update(1)
        # The last step is always saved, whether or not checkpoint_every divides steps.
        every = settings.checkpoint_every
        if save is not None and every is not None and (step % every == 0 or step == settings.steps):
            save(state)
    bar.close()


def _eval_mixes(settings: LoopSettings, data: LoopData, bad: Tensor) -> str:
    """The training indices mixed into the held-out rows ``bad``, for an error message."""
    i1, i2, _ = eval_indices(settings, data.num_train)
    return f"{i1[bad].tolist()[:10]} with {i2[bad].tolist()[:10]}"
