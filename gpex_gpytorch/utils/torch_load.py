"""Messages for ``torch.load`` failures that never suggest unpickling arbitrary code."""

from __future__ import annotations

import re

__all__ = ["load_failure_reason"]


def load_failure_reason(error: BaseException) -> str:
    """What made ``torch.load(..., weights_only=True)`` fail, in one line.

    torch's own message ends with advice to retry with ``weights_only=False``, which would
    unpickle arbitrary code, the very thing a checkpoint or a saved network must never need; that
    advice is left out.

    :param error: the exception ``torch.load`` raised.
    :returns: the reason, e.g. ``"unpickling stopped: Unsupported global: GLOBAL os.system"``.
    """
    if not isinstance(error, BaseException):
        raise TypeError(f"error: expected an exception, got {type(error).__name__}")
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s+Please use|\n\n|$)", text, flags=re.S)
    if found and found.group(1).strip():
        return f"unpickling stopped: {' '.join(found.group(1).split())}"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first.split(". This is an internal")[0]
