"""Capture what a named sub-module of a pipeline receives and returns, while the pipeline runs as usual.

The user's own data loader drives ordinary forward passes of the whole pipeline; a forward hook
on the sub-module (:class:`~gpex_gpytorch.utils.hooks.ForwardHooks`) records its input and output.
Nothing about the pipeline is changed: the hook is removed on exit whatever happens, no
``forward`` is replaced, and every module's train/eval flag is restored afterwards
(:func:`~gpex_gpytorch.utils.modules.restored_modes`).

How a batch reaches the pipeline (:func:`run_pipeline`):

* with ``forward_fn``: ``forward_fn(pipeline, batch)``, for any batch structure (tuples with
  labels, dicts with metadata, objects...); the function decides what the pipeline is called with;
* a tensor batch: ``pipeline(batch)``;
* a mapping batch: ``pipeline(**batch)``;
* anything else (e.g. an ``(inputs, labels)`` tuple) is ambiguous and raises :class:`TypeError`
  asking for a ``forward_fn`` such as ``lambda pipeline, batch: pipeline(batch[0])``.

Outputs are flattened to heads row-major: an output of per-example shape ``(C, h, w)`` becomes
``C·h·w`` heads, head ``c·h·w + i·w + j`` being channel ``c`` at row ``i``, column ``j`` (this is
``output.reshape(N, -1)``; :meth:`CapturedActivations.unflatten` inverts it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..utils.hooks import ForwardHooks, ModuleCall
from ..utils.modules import resolve_submodule as shared_resolve_submodule
from ..utils.modules import restored_modes
from ..utils.network_output import OutputSelector, check_output_selector, select_output
from .submodule_call import SubmoduleCall

__all__ = [
    "CapturedActivations",
    "ForwardFn",
    "capture_submodule",
    "flatten_heads",
    "preserved_modes",
    "resolve_submodule",
    "run_pipeline",
]

ForwardFn = Callable[[nn.Module, Any], Any]
"""``forward_fn(pipeline, batch)``: runs the pipeline on one batch of the user's loader."""


def resolve_submodule(pipeline: nn.Module, name: str | nn.Module) -> tuple[str, nn.Module]:
    """Find a sub-module by its dotted name (as in ``named_modules()``) or by identity.

    :param pipeline: the whole model.
    :param name: a dotted name such as ``"attention.2"``, or the sub-module object itself.
    :returns: ``(dotted_name, module)``.
    :raises ValueError: when no sub-module has that name (the message lists the closest names) or
        the module object is not part of ``pipeline``.
    :raises TypeError: for a ``name`` that is neither a string nor a module.
    """
    return shared_resolve_submodule(pipeline, name, argument="name", model_argument="pipeline")


@contextmanager
def preserved_modes(pipeline: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Optionally switch ``pipeline`` to eval mode, and restore every module's own flag afterwards.

    Flags are saved per module (not only the root's), so pipelines with mixed modes — e.g. a
    frozen backbone in eval mode inside a model in train mode — come back exactly as they were
    (:func:`~gpex_gpytorch.utils.modules.restored_modes`).
    """
    with restored_modes(pipeline):
        if eval_mode:
            # Eval mode keeps BatchNorm running statistics (buffers) untouched and dropout off.
            pipeline.eval()
        yield


def _to_device(value: Any, device: torch.device | None) -> Any:
    if device is None or not isinstance(value, Tensor):
        return value
    return value.to(device)


def _device_of(pipeline: nn.Module) -> torch.device | None:
    parameter = next(pipeline.parameters(), None)
    return None if parameter is None else parameter.device


def run_pipeline(pipeline: nn.Module, batch: Any, forward_fn: ForwardFn | None = None) -> Any:
    """Run one forward pass of ``pipeline`` on a batch of the user's loader (see the module docs).

    Without ``forward_fn``, tensors (a tensor batch, or a mapping's tensor values) are moved to the
    device of the pipeline's parameters first.
    """
    if forward_fn is not None:
        return forward_fn(pipeline, batch)
    device = _device_of(pipeline)
    if isinstance(batch, Tensor):
        return pipeline(_to_device(batch, device))
    if isinstance(batch, Mapping):
        return pipeline(**{key: _to_device(value, device) for key, value in batch.items()})
    raise TypeError(
        f"batch: a {type(batch).__name__} batch has no default way into the pipeline (only a tensor, "
        "passed as-is, or a mapping, passed as keyword arguments); pass forward_fn=(pipeline, batch) -> output, "
        "e.g. lambda pipeline, batch: pipeline(batch[0])"
    )


def flatten_heads(output: Any, where: str) -> Tensor:
    """A sub-module output ``(N, ...)`` as ``(N, heads)``, row-major; ``(N,)`` becomes ``(N, 1)``.

    :raises TypeError: if ``output`` is not a tensor.
    :raises ValueError: for a 0-d tensor.
    """
    if not isinstance(output, Tensor):
        raise TypeError(
            f"{where}: expected the sub-module to return a tensor, got {type(output).__name__}; "
            "explain a sub-module whose output is one tensor (e.g. a child that produces it)"
        )
    if output.dim() == 0:
        raise ValueError(f"{where}: expected a batched output (N, ...), got a 0-d tensor")
    return output.reshape(output.shape[0], -1)


@dataclass(frozen=True)
class CapturedActivations:
    """Inputs and outputs of one sub-module, recorded over a pass through the user's loader.

    One row per example per call of the sub-module, in call order (a sub-module called once per
    forward pass gives the loader's order).

    :ivar name: the sub-module's dotted name.
    :ivar inputs: ``(N, *input_shape)`` the tensor the sub-module was called with (on the CPU).
    :ivar outputs: ``(N, heads)`` its output flattened row-major (on the CPU).
    :ivar output_shape: the per-example output shape, e.g. ``(1, 4, 4)``.
    :ivar num_calls: how many times the sub-module ran.
    :ivar call: how the sub-module was called (other arguments, replayed with new inputs).
    """

    name: str
    inputs: Tensor
    outputs: Tensor
    output_shape: tuple[int, ...]
    num_calls: int
    call: SubmoduleCall | None = None

    @property
    def num_heads(self) -> int:
        """Heads after flattening: the product of :attr:`output_shape`."""
        return int(self.outputs.shape[1])

    def unflatten(self, heads: Tensor) -> Tensor:
        """``(N, heads)`` back to the sub-module's output shape ``(N, *output_shape)``."""
        if not isinstance(heads, Tensor) or heads.dim() != 2 or heads.shape[1] != self.num_heads:
            got = tuple(heads.shape) if isinstance(heads, Tensor) else type(heads).__name__
            raise ValueError(f"heads: expected shape (*, {self.num_heads}), got {got}")
        return heads.reshape(heads.shape[0], *self.output_shape)


@torch.no_grad()
def capture_submodule(
    pipeline: nn.Module,
    name: str | nn.Module,
    loader: Iterable[Any],
    *,
    forward_fn: ForwardFn | None = None,
    max_samples: int | None = None,
    eval_mode: bool = True,
    input: int | str | None = None,
    output: OutputSelector = None,
) -> CapturedActivations:
    """Record a sub-module's input and output during forward passes of the whole pipeline.

    Example::

        captured = capture_submodule(model, "attention", train_loader,
                                     forward_fn=lambda m, batch: m(batch["image"]))
        captured.inputs.shape, captured.outputs.shape   # (N, 32, 8, 8), (N, 16)

    :param pipeline: the model containing the sub-module.
    :param name: the sub-module's dotted name, or the module object.
    :param loader: any iterable of batches (a ``DataLoader``, a list...), in whatever structure.
    :param forward_fn: how to run the pipeline on a batch (see :func:`run_pipeline`).
    :param max_samples: stop once this many rows are captured (the rest are dropped).
    :param eval_mode: run the pipeline in eval mode (restored afterwards either way).
    :param input: the explained input when the sub-module takes several arguments: a position or
        a parameter name (default: the first positional argument); the others are recorded and
        replayed (:class:`~gpex_gpytorch.explain.submodule_call.SubmoduleCall`).
    :param output: which part of the sub-module's output to explain when it is not one tensor (a
        tuple index, a key or attribute name, or a callable; see
        :mod:`gpex_gpytorch.utils.network_output`).
    :raises ValueError: unknown sub-module name, or a loader that never reaches the sub-module.
    :raises TypeError: the selected output is not a tensor, or the explained input is not a tensor.
    :raises ValueError: an argument other than the explained input differs between examples or calls.
    """
    bad_max = isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    if max_samples is not None and bad_max:
        raise ValueError(f"max_samples: expected None or an integer >= 1, got {max_samples!r}")
    check_output_selector("output", output)
    dotted, module = resolve_submodule(pipeline, name)
    calls: list[SubmoduleCall] = []
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []
    shapes: list[tuple[int, ...]] = []

    def record(seen: ModuleCall) -> None:
        where = f"sub-module {dotted!r}"
        selected = select_output(seen.output, output, where)
        flat = flatten_heads(selected, where)
        call, x = SubmoduleCall.record(module, seen.args, seen.kwargs, input, where)
        if calls:
            calls[0].check_same(call, where)
        else:
            calls.append(call)
        shape = tuple(selected.shape[1:])
        if shapes and shape != shapes[0]:
            raise ValueError(
                f"sub-module {dotted!r}: per-example output shape changed from {shapes[0]} to {shape} "
                "between calls; heads must be the same on every call"
            )
        shapes.append(shape)
        inputs.append(x.detach().cpu())
        outputs.append(flat.detach().cpu())

    # The hook is removed whatever happens, so the pipeline never keeps a stray one.
    with ForwardHooks({dotted: module}, record), preserved_modes(pipeline, eval_mode=eval_mode):
        for batch in loader:
            run_pipeline(pipeline, batch, forward_fn)
            count = sum(o.shape[0] for o in outputs)
            if max_samples is not None and count >= max_samples:
                break
    if not outputs:
        raise ValueError(f"loader: the pipeline ran without calling sub-module {dotted!r} (or the loader is empty)")
    x_all, y_all = torch.cat(inputs), torch.cat(outputs)
    if max_samples is not None:
        x_all, y_all = x_all[:max_samples], y_all[:max_samples]
    return CapturedActivations(dotted, x_all, y_all, shapes[0], len(shapes), calls[0])
