"""Forward hooks that read (and optionally rewrite) one layer's activations as rows of vectors.

Two choices fix what "the activations of a layer" are:

* ``stage``: ``"post"`` is the output of the named module. ``"pre"`` is the input of its
  non-linearity: the named module must be an activation module (``nn.ReLU`` …) or an
  ``nn.Sequential`` ending in one, and the hook reads the input of that activation.
* ``spatial``, for outputs with spatial axes (``(N, C, *S)``, channels on axis 1 as in
  ``nn.Conv*d``): ``"positions"`` makes every spatial position a sample of a ``C``-dimensional
  vector (``N·|S|`` rows, the convention of the PCA-vs-neurons paper for conv layers);
  ``"pooled"`` averages over the positions (``N`` rows of ``C``); ``"flatten"`` treats the
  whole map as one ``C·|S|``-dimensional vector. 2-D outputs ``(N, F)`` are used as they are.

The hooks are :class:`~gpex_gpytorch.utils.hooks.ForwardHooks`: always removed on exit, also
when the forward pass raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import torch
from torch import Tensor, nn

from ...utils.hooks import ForwardHooks, ModuleCall
from ._checks import check_choice, resolve_module

__all__ = [
    "ACTIVATION_TYPES",
    "ActivationRecorder",
    "CapturePoint",
    "LayerRewriter",
    "Spatial",
    "Stage",
    "apply_to_vectors",
    "resolve_capture_point",
    "rows_per_input",
    "to_vectors",
]

Stage = Literal["post", "pre"]
Spatial = Literal["positions", "pooled", "flatten"]
STAGES: tuple[str, ...] = ("post", "pre")
SPATIAL_MODES: tuple[str, ...] = ("positions", "pooled", "flatten")

#: Modules treated as the non-linearity of a layer when ``stage="pre"``.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
)


@dataclass(frozen=True)
class CapturePoint:
    """Where a layer's activations are read.

    :ivar layer: the sub-module name the user gave.
    :ivar module_name: the name of the module the hook is attached to.
    :ivar module: that module.
    :ivar where: ``"output"`` (forward hook) or ``"input"`` (forward pre-hook, first positional input).
    :ivar stage: ``"post"`` or ``"pre"``.
    """

    layer: str
    module_name: str
    module: nn.Module
    where: Literal["output", "input"]
    stage: str


def resolve_capture_point(model: nn.Module, layer: str | nn.Module, stage: Stage = "post") -> CapturePoint:
    """Resolve ``layer`` (a dotted sub-module name, or the module) and ``stage`` to a hook site.

    :raises ValueError: unknown ``layer`` (with close-name suggestions), unknown ``stage``, or
        ``stage="pre"`` on a module that has no final non-linearity.
    """
    check_choice("stage", stage, STAGES)
    name, module = resolve_module(model, layer, "layer")
    if stage == "post":
        return CapturePoint(name, name, module, "output", stage)
    if isinstance(module, ACTIVATION_TYPES):
        return CapturePoint(name, name, module, "input", stage)
    if isinstance(module, nn.Sequential) and len(module) > 0 and isinstance(module[-1], ACTIVATION_TYPES):
        child_name = f"{name}.{len(module) - 1}" if name else str(len(module) - 1)
        return CapturePoint(name, child_name, module[-1], "input", stage)
    raise ValueError(
        f"stage: 'pre' needs layer {name!r} to be an activation module or an nn.Sequential ending in one; "
        f"it is a {type(module).__name__}. Name the activation module itself, or use stage='post' on the "
        "module that computes the pre-activation (e.g. the Linear or Conv layer)."
    )


def rows_per_input(shape: torch.Size | tuple[int, ...], spatial: Spatial) -> int:
    """How many activation rows one input contributes for an output of ``shape`` (``(N, C, *S)``)."""
    if len(shape) <= 2 or spatial != "positions":
        return 1
    count = 1
    for size in shape[2:]:
        count *= int(size)
    return count


def to_vectors(activation: Tensor, spatial: Spatial = "positions") -> Tensor:
    """Reshape a layer output ``(N, F)`` or ``(N, C, *S)`` to rows of vectors (see the module docs)."""
    check_choice("spatial", spatial, SPATIAL_MODES)
    if activation.dim() < 2:
        raise ValueError(f"activation: expected at least 2 dimensions (batch, features), got {tuple(activation.shape)}")
    if activation.dim() == 2:
        return activation
    if spatial == "flatten":
        return activation.flatten(1)
    grid = activation.flatten(2)  # shape: (N, C, P)
    if spatial == "pooled":
        return grid.mean(2)
    return grid.transpose(1, 2).reshape(-1, activation.shape[1])


def apply_to_vectors(activation: Tensor, fn: Callable[[Tensor], Tensor], spatial: Spatial = "positions") -> Tensor:
    """Apply a row-wise map ``fn`` (``(n, F) -> (n, F)``) to a layer output and restore its shape.

    For ``"positions"`` and ``"pooled"`` the map acts on the channel vector of every position. For
    an affine map that is exactly right in both cases, because averaging over positions commutes
    with it: the pooled vector of the rewritten map is the rewritten pooled vector.
    """
    check_choice("spatial", spatial, SPATIAL_MODES)
    # contiguous(): fn may return a broadcast view (e.g. the mean expanded), which in-place
    # modules downstream (ReLU(inplace=True)) cannot write to.
    if activation.dim() == 2:
        return fn(activation).contiguous()
    if spatial == "flatten":
        return fn(activation.flatten(1)).reshape(activation.shape).contiguous()
    moved = activation.movedim(1, -1)  # shape: (N, *S, C)
    rows = fn(moved.reshape(-1, activation.shape[1]))
    return rows.reshape(moved.shape).movedim(-1, 1).contiguous()


class _StopForward(Exception):
    """Raised by a capture hook to skip the rest of the forward pass once the layer has been read."""


class ActivationRecorder:
    """Context manager that records a layer's activations on every forward pass.

    Example::

        with ActivationRecorder(model, "penultimate", stage="pre") as recorder:
            rows = recorder.run(images)      # (N, F) float tensor, detached

    :param model: the network.
    :param layer: dotted sub-module name (see :func:`resolve_capture_point`) or the module.
    :param stage: ``"post"`` or ``"pre"`` (the input of the layer's final non-linearity).
    :param spatial: ``"positions"``, ``"pooled"`` or ``"flatten"`` for outputs with spatial axes.
    :param stop_forward: skip everything after the layer in :meth:`run` (saves time; only the
        activations are wanted).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module,
        *,
        stage: Stage = "post",
        spatial: Spatial = "positions",
        stop_forward: bool = True,
    ) -> None:
        self.point = resolve_capture_point(model, layer, stage)
        self.spatial: Spatial = check_choice("spatial", spatial, SPATIAL_MODES)  # type: ignore[assignment]
        self.model = model
        self.stop_forward = stop_forward
        self.last: Tensor | None = None
        self.last_shape: torch.Size | None = None
        self._hooks = ForwardHooks({self.point.module_name: self.point.module}, self._record, site=self.point.where)
        self._stopping = False

    def _record(self, call: ModuleCall) -> None:
        value = call.value
        if not isinstance(value, Tensor):
            raise TypeError(
                f"layer: expected {self.point.module_name!r} to produce a tensor, got {type(value).__name__}"
            )
        # clone: an in-place non-linearity downstream would otherwise overwrite what was recorded.
        self.last_shape = value.shape
        self.last = to_vectors(value.detach(), self.spatial).clone()
        if self._stopping:
            raise _StopForward

    def __enter__(self) -> ActivationRecorder:
        if self._hooks.active:
            raise RuntimeError("ActivationRecorder is already active")
        self._hooks.register()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hook (idempotent)."""
        self._hooks.remove()

    @torch.no_grad()
    def run(self, inputs: Tensor) -> Tensor:
        """Forward ``inputs`` (in the model's current mode) and return the recorded rows.

        :raises RuntimeError: if the forward pass never reached the layer.
        """
        if not self._hooks.active:
            raise RuntimeError("ActivationRecorder.run must be called inside its `with` block")
        self.last = None
        self._stopping = self.stop_forward
        try:
            self.model(inputs)
        except _StopForward:
            pass
        finally:
            self._stopping = False
        if self.last is None:
            raise RuntimeError(f"layer: the forward pass did not reach {self.point.module_name!r}")
        return self.last


class LayerRewriter:
    """Context manager that replaces a layer's activations by ``fn`` of them during forward passes.

    ``fn`` maps rows of vectors ``(n, F) -> (n, F)`` (the layout given by ``spatial``, see
    :func:`apply_to_vectors`); the hook returns the rewritten tensor, so everything downstream sees it.
    The hook is removed on exit, whether or not the block raised.

    :param model: the network.
    :param layer: dotted sub-module name or module.
    :param fn: the row-wise rewrite.
    :param stage: ``"post"`` rewrites the module's output, ``"pre"`` the input of its final non-linearity.
    :param spatial: how spatial outputs are laid out as rows.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module,
        fn: Callable[[Tensor], Tensor],
        *,
        stage: Stage = "post",
        spatial: Spatial = "positions",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        self.point = resolve_capture_point(model, layer, stage)
        self.spatial: Spatial = check_choice("spatial", spatial, SPATIAL_MODES)  # type: ignore[assignment]
        self.fn = fn
        self._hooks = ForwardHooks({self.point.module_name: self.point.module}, self._rewrite, site=self.point.where)

    def _rewrite(self, call: ModuleCall) -> Tensor:
        return apply_to_vectors(call.value, self.fn, self.spatial)

    def __enter__(self) -> LayerRewriter:
        if self._hooks.active:
            raise RuntimeError("LayerRewriter is already active")
        self._hooks.register()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._hooks.remove()
