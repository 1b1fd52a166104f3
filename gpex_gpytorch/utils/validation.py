"""Argument checks shared by the public entry points.

Every check raises before any state is touched, and every message names the argument and
says what was expected versus what was received.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class NonFiniteError(ValueError, FloatingPointError):
    """A tensor holds NaN or inf.

    A :class:`ValueError` (bad input to the function that checked it) and a
    :class:`FloatingPointError` (what a training loop reports), so a loop can catch exactly the
    non-finite case and add its step number.
    """


def _shape_str(shape: Sequence[int | None]) -> str:
    inner = ", ".join("*" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def check_tensor(
    name: str,
    value: object,
    *,
    shape: Sequence[int | None] | None = None,
    ndim: int | Sequence[int] | None = None,
    floating: bool = False,
    finite: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Check that ``value`` is a tensor with the given properties and return it.

    :param name: the argument's name, used in the error message.
    :param shape: expected shape; ``None`` entries match any size.
    :param ndim: expected number of dimensions (or a set of allowed ones).
    :param floating: require a floating-point dtype.
    :param finite: require every entry to be finite (no NaN / inf).
    :param device: require this device.
    :param dtype: require exactly this dtype.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            raise ValueError(
                f"{name}: expected a tensor with {' or '.join(map(str, allowed))} dimensions, "
                f"got shape {tuple(value.shape)}"
            )
    if shape is not None:
        ok = value.dim() == len(shape) and all(s is None or s == v for s, v in zip(shape, value.shape, strict=False))
        if not ok:
            raise ValueError(f"{name}: expected shape {_shape_str(shape)}, got {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {value.dtype}")
    if device is not None and value.device != torch.device(device):
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {value.device}")
    if finite:
        check_finite(name, value)
    return value


def _check_has_data(name: str, value: Tensor) -> None:
    # Meta tensors have no values to read: say so instead of failing inside Tensor.item().
    if value.is_meta:
        raise ValueError(f"{name}: expected a tensor with data (cpu or cuda), got one on the meta device")


def check_finite(name: str, value: Tensor) -> Tensor:
    """Raise :class:`NonFiniteError` naming ``name`` and the first bad positions if ``value`` has NaN or inf."""
    _check_has_data(name, value)
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        positions = bad.nonzero()[:5].tolist()
        raise NonFiniteError(
            f"{name}: expected finite values, found {int(bad.sum())} non-finite entries (first at indices {positions})"
        )
    return value


def nonfinite_rows(value: Tensor, dim: int = 0) -> Tensor:
    """Positions along ``dim`` of the slices of ``value`` that hold a NaN or inf (a 1-D ``int64`` tensor)."""
    check_tensor("value", value)
    if not -value.dim() <= dim < max(value.dim(), 1):
        raise ValueError(f"dim: expected a dimension of a {value.dim()}-d tensor, got {dim}")
    finite = torch.isfinite(value).movedim(dim, 0)
    if finite.dim() > 1:
        finite = finite.flatten(1).all(1)
    return (~finite).nonzero().flatten()


def check_finite_rows(name: str, value: Tensor, dim: int, labels: Tensor | None = None, what: str = "rows") -> Tensor:
    """Raise :class:`NonFiniteError` listing the rows (slices along ``dim``) of ``value`` with NaN or inf.

    :param labels: what to call each slice in the message (e.g. dataset or inducing indices), one per slice;
        default: the positions themselves.
    :param what: how the message names the slices (``"inducing rows"``, ``"training indices"``).
    """
    _check_has_data(name, value)
    bad = nonfinite_rows(value, dim)
    if bad.numel():
        shown = (bad if labels is None else labels.reshape(-1)[bad.to(labels.device)]).tolist()
        more = f" (first 10 of {bad.numel()})" if bad.numel() > 10 else ""
        raise NonFiniteError(f"{name}: expected finite values, got NaN or inf for {what} {shown[:10]}{more}")
    return value


def module_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter or buffer (``None`` if it has none)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def check_input_data(
    name: str,
    value: object,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    integer_ok: bool = False,
) -> Tensor:
    """The shared check of data at public entry points (model ``predict``, ``Distiller.fit``, explainers).

    Policy (``docs/numerics.md``): a batch of inputs must be a non-empty tensor on ``device`` of
    exactly the model's floating-point ``dtype`` — other floating dtypes (float64 from numpy or
    scikit-learn, float16) are rejected naming the dtype and the conversion, never cast
    silently — and finite: a NaN or inf is rejected naming the first bad rows, at O(N) cost.

    :param dtype: the model's dtype (e.g. :func:`module_dtype` of its network); ``None``: any floating dtype.
    :param integer_ok: also let integer inputs through (token ids for a network that starts with
        an embedding); the caller then names the dtype if the network fails on them.
    """
    check_tensor(name, value, device=None if device is None else torch.device(device))
    assert isinstance(value, Tensor)
    _check_has_data(name, value)
    if value.dim() == 0 or value.shape[0] == 0:
        raise ValueError(
            f"{name}: expected a non-empty batch (N >= 1 along dimension 0), got shape {tuple(value.shape)}"
        )
    if integer_ok and not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool:
        return value
    if not value.is_floating_point() or (dtype is not None and value.dtype != dtype):
        wanted = "a floating-point dtype" if dtype is None else f"dtype {dtype} (the model's)"
        fix = "" if dtype is None else f"; convert with .to({dtype})"
        raise TypeError(f"{name}: expected {wanted}, got {value.dtype}{fix}")
    check_finite_rows(name, value, 0)
    return value


def broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (without growing it)."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` >= 1 (``bool`` and floats refused), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return value


def check_positive(name: str, value: float | Tensor) -> None:
    """Raise ``ValueError`` unless every entry of ``value`` is finite and strictly positive."""
    if isinstance(value, Tensor):
        _check_has_data(name, value)
    tensor = torch.as_tensor(value)
    if not bool(torch.isfinite(tensor).all()) or not bool((tensor > 0).all()):
        shown = tensor.item() if tensor.numel() == 1 else tensor.tolist()
        raise ValueError(f"{name}: expected a finite value > 0, got {shown}")


def check_index_tensor(name: str, value: object, size: int, *, unique: bool = True) -> Tensor:
    """Check a 1-D integer index tensor into a dimension of length ``size``.

    :param unique: also reject repeated indices (an incremental Gram update would count them twice).
    :returns: the indices as ``int64``.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a 1-D torch.Tensor of integer indices, got {type(value).__name__}")
    if value.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor of indices, got shape {tuple(value.shape)}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer dtype, got {value.dtype}")
    if value.numel() == 0:
        raise ValueError(f"{name}: expected at least one index, got an empty tensor")
    _check_has_data(name, value)
    low, high = int(value.min()), int(value.max())
    if low < 0 or high >= size:
        raise ValueError(f"{name}: expected indices in [0, {size - 1}], got values in [{low}, {high}]")
    if unique and torch.unique(value).numel() != value.numel():
        raise ValueError(f"{name}: expected distinct indices, got repeated ones")
    return value.long()
