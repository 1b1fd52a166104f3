"""Argument checks shared by the principal-component tools (messages name the argument)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from torch import nn

__all__ = ["check_count", "check_fraction", "check_choice", "suggest_names", "resolve_module"]


def check_count(name: str, value: object, *, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` in ``[low, high]``; raise ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an integer in {bound}, got {value}")
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


def suggest_names(name: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
    """Close matches of ``name`` among ``candidates`` (spelling first, then shared prefixes)."""
    pool = [c for c in candidates if c]
    close = difflib.get_close_matches(name, pool, n=limit, cutoff=0.5)
    for candidate in pool:
        if len(close) >= limit:
            break
        if candidate not in close and (candidate.startswith(name) or name.startswith(candidate)):
            close.append(candidate)
    return close


def resolve_module(model: nn.Module, layer: str | nn.Module, name: str = "layer") -> tuple[str, nn.Module]:
    """Find a sub-module of ``model`` by dotted name (or identity) and return ``(name, module)``.

    :raises ValueError: naming ``name`` and suggesting close sub-module names when there is no match.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for module_name, module in modules.items():
            if module is layer:
                return module_name, module
        raise ValueError(f"{name}: the module given is not a sub-module of the {type(model).__name__} model")
    if not isinstance(layer, str):
        raise TypeError(f"{name}: expected a sub-module name (str) or an nn.Module, got {type(layer).__name__}")
    if layer in modules:
        return layer, modules[layer]
    suggestions = suggest_names(layer, modules)
    hint = f"; did you mean {', '.join(map(repr, suggestions))}?" if suggestions else ""
    available = ", ".join(repr(n) for n in list(modules)[1:13])
    raise ValueError(
        f"{name}: no sub-module named {layer!r} in {type(model).__name__}{hint} (sub-modules include {available})"
    )
