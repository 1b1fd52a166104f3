"""Sub-modules of a model: finding one by dotted name (with helpful errors), and switching
train/eval mode for a block with every module's own flag restored afterwards."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode", "resolve_submodule", "restored_modes", "suggest_names"]


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


def _check_modules(modules: tuple[object, ...]) -> None:
    for index, module in enumerate(modules):
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules[{index}]: expected a torch.nn.Module, got {type(module).__name__}")


@contextmanager
def restored_modes(*modules: nn.Module) -> Iterator[None]:
    """Save the train/eval flag of every module in the given trees and restore each on exit.

    The flags are restored exactly, module by module (not only the roots'), so a tree with mixed
    modes, e.g. a frozen backbone in eval mode inside a model in train mode, comes back as it was;
    also when the block raises. Flags are restored through :meth:`torch.nn.Module.train`, parents
    before children, so modules that override ``train`` (to drop caches, say) see the change.

    :raises TypeError: for an argument that is not an ``nn.Module`` (before anything changes).
    """
    _check_modules(modules)
    roots = list({id(root): root for root in modules}.values())
    trees = [list(root.modules()) for root in roots]  # pre-order: every parent before its children
    # A root inside another root's tree is covered by that tree (restoring it first would be undone).
    inside = [
        any(i != j and any(module is root for module in tree) for j, tree in enumerate(trees))
        for i, root in enumerate(roots)
    ]
    saved: dict[int, tuple[nn.Module, bool]] = {}
    for tree, nested in zip(trees, inside, strict=True):
        if not nested:
            for module in tree:
                saved.setdefault(id(module), (module, module.training))
    try:
        yield
    finally:
        for module, training in saved.values():
            if module.training != training:
                # Sets the whole subtree; its modules come later in pre-order and are corrected in turn.
                module.train(training)
        for module, training in saved.values():
            # Only a module shared between two trees can still differ here.
            module.training = training


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put the given modules (and all their sub-modules) in eval mode for the block.

    Every module's own flag is restored on exit, also when the block raises (see
    :func:`restored_modes`).

    Example::

        with eval_mode(network, kernel):
            outputs = network(x)     # dropout off, BatchNorm running statistics used, not updated

    :raises TypeError: for an argument that is not an ``nn.Module`` (before anything changes).
    """
    with restored_modes(*modules):
        for module in modules:
            module.eval()
        yield
