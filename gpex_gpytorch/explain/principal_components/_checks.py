"""Argument checks shared by the principal-component tools (messages name the argument)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ...utils import resolve_submodule

__all__ = ["check_count", "check_fraction", "check_choice", "resolve_module"]


def check_count(name: str, value: object, *, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` in ``[low, high]``; raise ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an integer {bound}, got {value}")
    return value


def check_fraction(name: str, value: object, *, allow_one: bool = True) -> float:
    """Return ``value`` as a float in ``(0, 1]`` (or ``(0, 1)``); raise ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
    value = float(value)
    if not (0.0 < value < 1.0 or (allow_one and value == 1.0)):
        raise ValueError(f"{name}: expected a number in (0, {'1]' if allow_one else '1)'}, got {value}")
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; raise ``ValueError`` listing them otherwise."""
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return str(value)


def resolve_module(model: nn.Module, layer: str | nn.Module, name: str = "layer") -> tuple[str, nn.Module]:
    """Find a sub-module of ``model`` by dotted name (or identity) and return ``(name, module)``.

    :raises ValueError: naming ``name`` and suggesting close sub-module names when there is no match.
    """
    return resolve_submodule(model, layer, argument=name)
