"""Per-instance channel masks applied to chosen layers of a frozen network through forward hooks.

A *neural pathway* of an input is a binary mask over the channels (conv) or neurons (linear) of
some layers of the target network. The mask multiplies the layer's **output**: channel ``c`` of
``layer(x)`` becomes ``mask[c] * layer(x)[c]``. For a conv or linear layer followed by a ReLU,
zeroing the pre-activation output is the same as removing the neuron (``relu(0) = 0``). For a
layer followed by a normalisation with a shift (e.g. BatchNorm), zeroing its output does not
silence the channel -- the shift is added back -- so such a layer is not a faithful mask site;
only conv and linear layers are accepted here (see :func:`resolve_layers`).

Everything here works through forward hooks (:class:`~gpex_gpytorch.utils.hooks.ForwardHooks`):
the network's ``forward`` is never replaced, and every hook registered by a context manager is
removed on exit, so an exception raised inside the block (or by a hook itself, e.g. a mask of the
wrong shape) leaves the network exactly as it was.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ...utils.hooks import ForwardHooks, ModuleCall, capture_forward

__all__ = [
    "MASKABLE_TYPES",
    "apply_channel_masks",
    "capture_outputs",
    "channel_dim",
    "layer_channels",
    "resolve_layers",
]

#: Layer types whose outputs can be masked, with the attribute holding their channel count.
MASKABLE_TYPES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Conv1d, "out_channels"),
    (nn.Conv2d, "out_channels"),
    (nn.Conv3d, "out_channels"),
    (nn.Linear, "out_features"),
)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def channel_dim(module: nn.Module, output: Tensor) -> int:
    """Index of the channel dimension of ``output`` produced by ``module``.

    Conv outputs are ``(B, C, *spatial)`` (channel dimension 1); linear outputs are
    ``(B, *, C)`` (last dimension).
    """
    return output.dim() - 1 if _is_linear(module) else 1


def resolve_layers(model: nn.Module, layers: Sequence[str], *, argument: str = "layers") -> dict[str, nn.Module]:
    """Look up the named sub-modules of ``model`` and check that each can be masked.

    :param model: the target network.
    :param layers: names as given by :meth:`torch.nn.Module.named_modules` (e.g. ``"features.0"``).
    :param argument: the argument name used in error messages.
    :returns: ``{name: module}`` in the order given.
    :raises ValueError: for an empty list, a repeated name, an unknown name (the message lists the
        closest existing names) or a layer that is neither conv nor linear.
    """
    if isinstance(layers, str):
        raise TypeError(f"{argument}: expected a sequence of layer names, got the single string {layers!r}")
    names = list(layers)
    if not names:
        raise ValueError(f"{argument}: expected at least one layer name, got an empty sequence")
    if len(set(names)) != len(names):
        raise ValueError(f"{argument}: expected distinct layer names, got {names}")
    available = dict(model.named_modules())
    resolved: dict[str, nn.Module] = {}
    for name in names:
        if name not in available:
            candidates = [n for n in available if n]
            close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
            maskable = [n for n in candidates if _channel_count(available[n]) is not None]
            hint = f"closest names: {close}" if close else "no close names"
            raise ValueError(
                f"{argument}: unknown layer {name!r} in {type(model).__name__} ({hint}; maskable layers: {maskable})"
            )
        module = available[name]
        if _channel_count(module) is None:
            allowed = ", ".join(t.__name__ for t, _ in MASKABLE_TYPES)
            raise ValueError(f"{argument}: layer {name!r} is a {type(module).__name__}; expected one of {allowed}")
        resolved[name] = module
    return resolved


def _channel_count(module: nn.Module) -> int | None:
    for layer_type, attribute in MASKABLE_TYPES:
        if isinstance(module, layer_type):
            return int(getattr(module, attribute))
    return None


def layer_channels(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    """Number of maskable channels of each named layer: ``out_channels`` (conv) or ``out_features`` (linear)."""
    channels: dict[str, int] = {}
    for name, module in resolve_layers(model, layers).items():
        count = _channel_count(module)
        assert count is not None  # resolve_layers checked it
        channels[name] = count
    return channels


def _check_mask(name: str, mask: object, channels: int) -> Tensor:
    argument = f"masks[{name!r}]"
    if not isinstance(mask, Tensor):
        raise TypeError(f"{argument}: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() not in (1, 2) or mask.shape[-1] != channels:
        raise ValueError(
            f"{argument}: expected shape ({channels},) or (batch, {channels}) for a layer with {channels} "
            f"channels, got {tuple(mask.shape)}"
        )
    if not mask.is_floating_point():
        if mask.dtype == torch.bool:
            return mask.float()
        raise TypeError(f"{argument}: expected a floating-point or bool tensor, got dtype {mask.dtype}")
    return mask


def _broadcast_mask(name: str, mask: Tensor, output: Tensor, dim: int) -> Tensor:
    """Reshape a ``(C,)`` or ``(B, C)`` mask so that it broadcasts against ``output`` along ``dim``."""
    if mask.dim() == 2 and mask.shape[0] != output.shape[0]:
        raise ValueError(
            f"masks[{name!r}]: expected a batch of {output.shape[0]} masks to match the input batch, "
            f"got shape {tuple(mask.shape)}"
        )
    shape = [1] * output.dim()
    shape[dim] = mask.shape[-1]
    if mask.dim() == 2:
        shape[0] = mask.shape[0]
    return mask.to(dtype=output.dtype, device=output.device).reshape(shape)


@contextmanager
def apply_channel_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Context manager: inside the block, every forward pass of ``model`` has the given channels masked.

    The hook returns ``output * mask`` broadcast over the non-channel dimensions, which keeps the
    graph differentiable with respect to ``mask`` (used to train the generator). Multiplying by
    ``1.0`` is exact in IEEE arithmetic, so with all-ones masks the outputs equal the unmasked
    network's bit for bit.

    :param model: any :class:`torch.nn.Module`; it is not modified outside the block.
    :param masks: ``{layer name: mask}`` with masks of shape ``(C,)`` (shared by the batch) or
        ``(B, C)`` (one per instance; ``B`` must equal the batch size of each forward call).
        Values are usually in ``[0, 1]``; ``bool`` masks are converted to float.
    :yields: ``model``.
    :raises ValueError: for unknown layers (with close names) or masks of the wrong shape. A batch
        size mismatch is only detectable during the forward pass and is raised from there; the hooks
        are removed all the same.
    """
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks: expected a mapping from layer name to tensor, got {type(masks).__name__}")
    modules = resolve_layers(model, list(masks), argument="masks")
    checked = {name: _check_mask(name, masks[name], _channel_count(module) or 0) for name, module in modules.items()}

    def mask_output(call: ModuleCall) -> Tensor:
        output = call.output
        if not isinstance(output, Tensor):
            raise TypeError(f"masks[{call.name!r}]: layer output is a {type(output).__name__}, expected a tensor")
        dim = channel_dim(call.module, output)
        return output * _broadcast_mask(call.name, checked[call.name], output, dim)

    with ForwardHooks(modules, mask_output):
        yield model


@contextmanager
def capture_outputs(model: nn.Module, layers: Sequence[str], *, detach: bool = False) -> Iterator[dict[str, Tensor]]:
    """Context manager recording the outputs of the named layers during forward passes in the block.

    The hooks return ``None``, so the forward pass is untouched. The yielded dict is filled (and
    overwritten) by each forward call; it is a fresh dict owned by the caller.

    :param layers: names of conv/linear layers (see :func:`resolve_layers`).
    :param detach: store detached outputs (for feature extraction without gradients).
    """
    with capture_forward(resolve_layers(model, layers), detach=detach) as store:
        yield store
