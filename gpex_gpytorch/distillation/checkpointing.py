"""Atomic checkpoints that load without unpickling arbitrary objects."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    A process killed mid-write leaves the previous checkpoint intact (and at most a stray
    temporary, which the next save removes).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A writer killed mid-write (SIGKILL, power loss) leaves its temporary behind; sweep them.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _load_failure_reason(error: BaseException) -> str:
    """What made ``torch.load`` fail, without torch's advice to retry with ``weights_only=False``
    (which would unpickle arbitrary code, the very thing checkpoints must not need)."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s+Please use|\n\n|$)", text, flags=re.S)
    if found and found.group(1).strip():
        return f"unpickling stopped: {' '.join(found.group(1).split())}"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first.split(". This is an internal")[0]


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    :raises FileNotFoundError: no file at ``path``.
    :raises ValueError: the file is truncated, corrupted, or holds objects other than tensors and
        plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        reason = _load_failure_reason(error)
        raise ValueError(
            f"checkpoint: {path} is truncated or corrupted, or not a gpex checkpoint ({reason}); "
            "it was not unpickled beyond tensors and plain containers"
        ) from error
    if not isinstance(state, dict) or "format" not in state:
        raise ValueError(f"checkpoint: {path} is not a gpex checkpoint (no 'format' entry)")
    return state
