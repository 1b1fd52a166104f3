"""Progress bars that stay quiet in logs: shown on a terminal, off (or rare) when stderr is a file or pipe."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["ProgressSetting", "progress_bar", "resolve_progress"]

ProgressSetting = bool | str
"""``True`` (always), ``False`` (never) or ``"auto"`` (only when stderr is a terminal)."""

# When bars are forced on while stderr is not a terminal, redraw at most this often (seconds):
# tqdm's default of 0.1 s writes thousands of frames into a log file.
LOG_INTERVAL_S = 30.0


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def resolve_progress(progress: ProgressSetting) -> bool:
    """Whether to show progress: ``"auto"`` means "stderr is a terminal".

    :raises ValueError: for anything but ``True``, ``False`` or ``"auto"``.
    """
    if progress == "auto":
        return _stderr_is_terminal()
    if isinstance(progress, bool):
        return progress
    raise ValueError(f"progress: expected True, False or 'auto', got {progress!r}")


def progress_bar(iterable: Iterable[Any] | None = None, *, progress: ProgressSetting, desc: str, **kwargs: Any) -> tqdm:
    """A tqdm bar for ``iterable`` (or a manual one), disabled per :func:`resolve_progress`.

    Off a terminal (bars forced on) it redraws at most every ``LOG_INTERVAL_S`` seconds; update
    postfixes with ``bar.set_postfix(..., refresh=False)`` so that they do not force a redraw.
    """
    enabled = resolve_progress(progress)
    if enabled and not _stderr_is_terminal():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(iterable, desc=desc, disable=not enabled, **kwargs)
