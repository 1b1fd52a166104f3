"""How a sub-module is called, recorded so that it can be called again with another explained input.

Sub-modules of real models take more than one argument: a transformer block gets
``(hidden_states, attention_mask)`` (the mask often ``None``), an attention module keyword flags.
GPEX explains the sub-module as a function of *one* input tensor — the explained input, chosen by
position or name — and replays every other argument as it was:

* non-tensor arguments (``None``, flags) must be the same on every call;
* a tensor argument must be the same on every call, or have one row per example with all rows
  equal (e.g. an all-ones attention mask ``(N, T)``): that row is repeated for any batch size.

An argument that varies between examples cannot be replayed for new inputs, and is reported by
name (explain another sub-module, or make that argument the explained input).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SubmoduleCall"]

_SLOT = "<explained input>"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # objects whose == is not a bool (e.g. arrays): compare identity
        return a is b


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class SubmoduleCall:
    """One recorded call of a sub-module with the explained input left as a slot.

    :ivar args: positional arguments (the explained one replaced by a placeholder).
    :ivar kwargs: keyword arguments (likewise).
    :ivar slot: ``("arg", position)`` or ``("kw", name)``: where the explained input goes.
    :ivar repeated: the argument keys (as in ``slot``) holding one row to repeat along the batch.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    slot: tuple[str, int | str]
    repeated: frozenset[tuple[str, int | str]]

    @property
    def is_single_tensor(self) -> bool:
        """Whether the sub-module was called with the explained tensor alone."""
        return len(self.args) == 1 and not self.kwargs and self.slot == ("arg", 0)

    @classmethod
    def record(
        cls, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], input: int | str | None, where: str
    ) -> tuple[SubmoduleCall, Tensor]:
        """The call template and the explained input tensor of one call ``module(*args, **kwargs)``.

        :param input: the explained input: a positional index, a parameter name, or ``None`` (the
            first positional argument, else the only tensor keyword argument).
        """
        slot = cls.find_slot(module, args, kwargs, input, where)
        x = args[slot[1]] if slot[0] == "arg" else kwargs[slot[1]]  # type: ignore[index]
        if not isinstance(x, Tensor) or x.dim() == 0:
            raise TypeError(
                f"{where}: the explained input ({cls._describe(slot)}) is a {type(x).__name__}, expected a "
                "batched tensor; choose it with input= (a position or a parameter name)"
            )
        n = x.shape[0]
        repeated: set[tuple[str, int | str]] = set()

        def keep(key: tuple[str, int | str], value: Any) -> Any:
            if key == slot:
                return _SLOT
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
                if not bool((value == value[:1]).all()):
                    raise ValueError(
                        f"{where}: {cls._describe(key)} differs between examples (shape {tuple(value.shape)}); "
                        "GPEX explains the sub-module as a function of one input, so other arguments must be "
                        "the same for every example (None, flags, a shared or all-equal mask); choose the "
                        "varying argument with input= or explain another sub-module"
                    )
                repeated.add(key)
                return value[:1].detach().cpu()
            return _detached(value)

        kept_args = tuple(keep(("arg", i), v) for i, v in enumerate(args))
        kept_kwargs = {k: keep(("kw", k), v) for k, v in kwargs.items()}
        return cls(kept_args, kept_kwargs, slot, frozenset(repeated)), x

    @staticmethod
    def _describe(key: tuple[str, int | str]) -> str:
        return f"positional argument {key[1]}" if key[0] == "arg" else f"keyword argument {key[1]!r}"

    @staticmethod
    def find_slot(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], input: int | str | None, where: str
    ) -> tuple[str, int | str]:
        """Where the explained input sits in a call: ``("arg", position)`` or ``("kw", name)``.

        :param input: a position, a parameter name, or ``None`` (the first positional argument, else the
            only tensor keyword argument).
        """
        if input is None:
            if args:
                return ("arg", 0)
            tensors = [k for k, v in kwargs.items() if isinstance(v, Tensor)]
            if len(tensors) == 1:
                return ("kw", tensors[0])
            raise TypeError(f"{where}: called with keyword tensors {tensors}; choose the explained one with input=")
        if isinstance(input, int) and not isinstance(input, bool):
            if not 0 <= input < len(args):
                raise ValueError(
                    f"input: position {input} does not exist; the sub-module got {len(args)} positional ones"
                )
            return ("arg", input)
        if isinstance(input, str):
            if input in kwargs:
                return ("kw", input)
            names = list(inspect.signature(module.forward).parameters)
            if input in names and names.index(input) < len(args):
                return ("arg", names.index(input))
            raise ValueError(
                f"input: the sub-module was not called with an argument {input!r} (parameters {names}, "
                f"keywords given {sorted(kwargs)})"
            )
        raise TypeError(f"input: expected None, a position or a parameter name, got {type(input).__name__}")

    def check_same(self, other: SubmoduleCall, where: str) -> None:
        """Raise ``ValueError`` naming the argument if ``other`` was called differently (beyond the explained input)."""
        if other.slot != self.slot or len(other.args) != len(self.args) or other.kwargs.keys() != self.kwargs.keys():
            raise ValueError(f"{where}: the sub-module was called with other arguments on a later call")
        keys = [("arg", i) for i in range(len(self.args))] + [("kw", k) for k in self.kwargs]
        for key in keys:
            a = self.args[key[1]] if key[0] == "arg" else self.kwargs[key[1]]  # type: ignore[index]
            b = other.args[key[1]] if key[0] == "arg" else other.kwargs[key[1]]  # type: ignore[index]
            if not _same(a, b):
                raise ValueError(
                    f"{where}: {self._describe(key)} changed between calls; GPEX replays every argument "
                    "but the explained input, so they must be the same on every call"
                )

    def __call__(self, module: nn.Module, x: Tensor) -> Any:
        """``module`` called as recorded, with ``x`` as the explained input."""
        n, device = x.shape[0], x.device

        def fill(key: tuple[str, int | str], value: Any) -> Any:
            if key == self.slot:
                return x
            if key in self.repeated:
                return value.to(device).expand(n, *value.shape[1:])
            return _to(value, device)

        args = tuple(fill(("arg", i), v) for i, v in enumerate(self.args))
        kwargs = {k: fill(("kw", k), v) for k, v in self.kwargs.items()}
        return module(*args, **kwargs)
