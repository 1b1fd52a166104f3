"""Old names kept working after a rename: a function alias that warns with a ``DeprecationWarning``."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["deprecated_alias"]

P = ParamSpec("P")
R = TypeVar("R")


def deprecated_alias(function: Callable[P, R], old_name: str, *, reason: str = "") -> Callable[P, R]:
    """``function`` under its former name ``old_name``: same signature and result, plus a warning.

    Example::

        random_scores = deprecated_alias(random_review_scores, "random_scores")

    :param function: the function under its new name.
    :param old_name: the name being retired (as users import it).
    :param reason: why it was renamed, appended to the warning.
    :returns: a function that emits a :class:`DeprecationWarning` pointing at the caller, then
        calls ``function``.
    """
    if not callable(function):
        raise TypeError(f"function: expected a callable, got {type(function).__name__}")
    if not isinstance(old_name, str) or not old_name.isidentifier():
        raise ValueError(f"old_name: expected a Python identifier, got {old_name!r}")
    new_name = f"{function.__module__}.{function.__qualname__}"
    message = f"{old_name} is deprecated; use {new_name}" + (f" ({reason})" if reason else "")

    @functools.wraps(function)
    def alias(*args: P.args, **kwargs: P.kwargs) -> R:
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return function(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated alias of :func:`{new_name}`" + (f" ({reason})." if reason else ".")
    return alias
