"""Finding a sub-module of a model by dotted name, with helpful errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from torch import nn


def suggest_names(name: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
    """Close matches of ``name`` among ``candidates`` (spelling first, then shared prefixes)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a string, got {type(name).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit: expected an integer >= 1, got {limit!r}")
    pool = [c for c in candidates if c]
    close = difflib.get_close_matches(name, pool, n=limit, cutoff=0.5)
    for candidate in pool:
        if len(close) >= limit:
            break
        if candidate not in close and (candidate.startswith(name) or name.startswith(candidate)):
            close.append(candidate)
    return close


def resolve_submodule(
    model: nn.Module, target: str | nn.Module, *, argument: str = "name", model_argument: str = "model"
) -> tuple[str, nn.Module]:
    """Find a sub-module of ``model`` by dotted name (as in ``named_modules()``) or by identity.

    :param target: a dotted name such as ``"attention.2"``, or the sub-module object itself.
    :param argument: the caller's name for ``target``, used in error messages.
    :param model_argument: the caller's name for ``model``, used in error messages.
    :returns: ``(dotted_name, module)``.
    :raises ValueError: no such sub-module (the message suggests close names and lists some), or
        a module object that is not part of ``model``.
    :raises TypeError: ``model`` is not a module, or ``target`` is neither a string nor a module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{model_argument}: expected a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if isinstance(target, nn.Module):
        for dotted, module in modules.items():
            if module is target:
                return dotted, module
        raise ValueError(
            f"{argument}: the {type(target).__name__} given is not a sub-module of the {type(model).__name__}"
        )
    if not isinstance(target, str):
        raise TypeError(f"{argument}: expected a dotted sub-module name or an nn.Module, got {type(target).__name__}")
    if target in modules:
        return target, modules[target]
    candidates = [n for n in modules if n]
    close = suggest_names(target, candidates)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else "no name is close"
    listing = ", ".join(repr(n) for n in candidates[:20]) + (" ..." if len(candidates) > 20 else "")
    raise ValueError(
        f"{argument}: the {type(model).__name__} has no sub-module {target!r}; {hint} (sub-modules: {listing})"
    )
