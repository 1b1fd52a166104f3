"""The collectives of the sharded cache, with a byte count and a clear error on failure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "CommunicationMeter",
    "DistributedStepError",
    "all_reduce_sum",
    "collective_errors",
    "counting_allreduce_hook",
    "is_communication_failure",
]


class DistributedStepError(RuntimeError):
    """A collective failed: another rank died, or it did not answer within the process group's timeout."""


@dataclass
class CommunicationMeter:
    """Counts what this rank hands to collectives (the payload, not the wire traffic of the algorithm).

    :ivar calls: number of collectives.
    :ivar bytes: total payload in bytes.
    """

    calls: int = 0
    bytes: int = 0

    def record(self, tensor: Tensor) -> None:
        if not isinstance(tensor, Tensor):
            raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor).__name__}")
        self.calls += 1
        self.bytes += tensor.numel() * tensor.element_size()

    def reset(self) -> None:
        self.calls = 0
        self.bytes = 0


def _describe(group: dist.ProcessGroup | None, what: str, error: BaseException) -> DistributedStepError:
    rank = dist.get_rank(group) if dist.is_initialized() else -1
    return DistributedStepError(
        f"rank {rank}: {what} failed - another rank died or did not answer within the process group's "
        f"timeout (set by init_process_group(timeout=...)); original error: {error}"
    )


# Marks of the backends' own failures in a RuntimeError's text (gloo's C++ source path, c10d's
# process-group errors, NCCL's), used where a block runs user code as well as collectives.
_BACKEND_MARKS = ("gloo", "c10d", "ProcessGroup", "NCCL", "Connection reset by peer", "Connection closed by peer")


def is_communication_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from a collective (a backend error) rather than from user code."""
    if isinstance(error, (DistributedStepError, dist.DistBackendError)):
        return True
    return isinstance(error, RuntimeError) and any(mark in str(error) for mark in _BACKEND_MARKS)


@contextmanager
def collective_errors(what: str, group: dist.ProcessGroup | None = None, *, mixed: bool = False) -> Iterator[None]:
    """Turn a failure of the collectives run inside the block into :class:`DistributedStepError`.

    A peer that dies surfaces in many shapes (gloo's "Connection reset by peer", a timeout, DDP's
    "Got the following error when running the callback" from ``backward``); all are
    :class:`RuntimeError` (``DistBackendError`` included). Wrap only blocks whose failures are
    collectives: a :class:`RuntimeError` of any other origin inside would be reported as one too.

    :param what: what the block does, for the message ("the checkpoint barrier").
    :param group: the group it communicates on (for the rank in the message).
    :param mixed: the block also runs user code (a network's forward): convert only errors that
        :func:`is_communication_failure` recognises, re-raise the others unchanged.
    """
    try:
        yield
    except DistributedStepError:
        raise
    except (RuntimeError, dist.DistBackendError) as error:
        if mixed and not is_communication_failure(error):
            raise
        raise _describe(group, what, error) from error


def all_reduce_sum(
    tensor: Tensor,
    group: dist.ProcessGroup | None,
    meter: CommunicationMeter | None = None,
    *,
    what: str = "all-reduce",
) -> Tensor:
    """Sum ``tensor`` over the ranks of ``group``; differentiable when gradient mode is on.

    Under autograd the backward of a sum all-reduce is again a sum all-reduce of the incoming
    gradients (:func:`torch.distributed.nn.functional.all_reduce`), so every rank's own input
    receives the gradient of the *total* loss of all ranks; that is what makes the sharded
    gradient equal the single-process one. Every rank must then take part in the backward too,
    so an input that does not require gradient is attached to the graph anyway (a rank with no
    rows of its own in this step still answers its peers' backward collective).

    :returns: a new tensor (``tensor`` itself is not modified).
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor).__name__}")
    if meter is not None:
        meter.record(tensor)
    try:
        if torch.is_grad_enabled():
            if not tensor.requires_grad:
                tensor = tensor.detach().requires_grad_(True)
            return _MeteredSum.apply(tensor, group, meter)
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out
    except (RuntimeError, dist.DistBackendError) as error:
        raise _describe(group, what, error) from error


class _MeteredSum(torch.autograd.Function):
    """:func:`torch.distributed.nn.functional.all_reduce` (sum) whose backward is metered too."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor, group: object, meter: object) -> Tensor:  # type: ignore[override]
        ctx.group = group  # type: ignore[attr-defined]
        ctx.meter = meter  # type: ignore[attr-defined]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)  # type: ignore[arg-type]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        group, meter = ctx.group, ctx.meter  # type: ignore[attr-defined]
        if meter is not None:
            meter.record(grad)
        out = grad.clone(memory_format=torch.contiguous_format)
        try:
            # As in torch.distributed.nn.functional.all_reduce: the gradient is summed over ranks.
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
            return out, None, None
        except (RuntimeError, dist.DistBackendError) as error:
            raise _describe(group, "the backward all-reduce of the inducing statistics", error) from error


def counting_allreduce_hook(
    meter: CommunicationMeter,
) -> object:
    """A DDP communication hook: DDP's default mean all-reduce, with each bucket counted in ``meter``.

    Use as ``ddp.register_comm_hook(None, counting_allreduce_hook(meter))``.
    """
    if not isinstance(meter, CommunicationMeter):
        raise TypeError(f"meter: expected a CommunicationMeter, got {type(meter).__name__}")
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state: object, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
        meter.record(bucket.buffer())
        return allreduce_hook(state, bucket)  # type: ignore[arg-type]

    # DDP checks the annotations as objects; postponed (string) annotations would fail that check.
    hook.__annotations__ = {"state": object, "bucket": dist.GradBucket, "return": torch.futures.Future[Tensor]}
    return hook
