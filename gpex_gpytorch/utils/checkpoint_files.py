"""Atomic, verified checkpoints that load without unpickling arbitrary objects.

Guarantees (tested in ``tests/test_checkpointing.py``):

- **Atomic**: a checkpoint is written to a temporary file in the same folder, fsynced, then
  renamed over the target. A writer killed at any moment, a full disk or a failed write leave
  the previous checkpoint intact.
- **Concurrent writers**: each writer's temporary has a name of its own
  (``.<name>.<host>.<pid>.<token>.tmp``); the sweep of stale temporaries removes only those of
  *this* checkpoint name whose writer (same host) is no longer running. Two processes saving to
  the same path both finish, and the file holds one of the two states, whole.
- **Verified**: a SHA-256 digest of the payload (every tensor's bytes, every plain value) is
  stored with it and checked on load, so a flipped byte that torch would load silently (it does
  not verify the zip's CRCs) is reported as corruption.
- **Plain failures**: a write that fails in the operating system (disk full, read-only folder,
  file too large) raises :class:`OSError` with the path, the reason and the promise that the
  previous checkpoint is unchanged, not torch's ``[enforce fail at inline_container.cc]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import secrets
import socket
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from .torch_load import load_failure_reason

__all__ = ["check_writable", "load_checkpoint", "save_checkpoint", "write_json_atomically"]

DIGEST_KEY = "sha256"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _writer_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _sweep_stale_temporaries(path: Path) -> None:
    """Remove the temporaries that writers of exactly ``path`` left behind when they died."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")
    host = _host()
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        found = pattern.match(candidate.name)
        # Another host's writer cannot be checked from here; a live writer's file is its own.
        if found and found["host"] == host and not _writer_is_running(int(found["pid"])):
            candidate.unlink(missing_ok=True)


def _write_failure(path: Path, error: OSError, what: str) -> OSError:
    reason = error.strerror or str(error) or type(error).__name__
    return OSError(
        error.errno,
        f"checkpoint: could not {what} {path}: {reason}; the previous checkpoint there (if any) is unchanged",
    )


def check_writable(path: str | Path, name: str = "checkpoint_path") -> Path:
    """Check that a checkpoint can be written at ``path`` (its folder exists or can be made, and takes files).

    Creates the folder if needed and writes and removes a probe file, so a read-only folder or a
    file where a folder should be is found before any training, not at the first save.

    :param name: the argument's name for the message.
    :raises OSError: (``PermissionError``, ``NotADirectoryError``...) naming ``name`` and the reason.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = _temporary_name(path)
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(descriptor)
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise type(error)(error.errno, f"{name}: cannot write checkpoints to {path.parent} ({reason})") from error
    return path


class _RecordingWriter:
    """A file wrapper for ``torch.save`` that keeps the operating system's error.

    torch's zip writer turns a failed ``write`` into ``[enforce fail at inline_container.cc]``;
    the :class:`OSError` behind it (``ENOSPC``, ``EFBIG``...) is kept here to report plainly.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


def _update_digest(digest: Any, value: object) -> None:
    """Feed ``value`` (tensors, plain containers and scalars) into ``digest`` in a canonical order."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{tensor.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            digest.update(repr(key).encode())
            _update_digest(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _update_digest(digest, item)
    else:
        digest.update(f"{type(value).__name__}:{value!r}".encode())


def _digest(state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    _update_digest(digest, state)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, with a digest that :func:`load_checkpoint` verifies.

    A temporary file in the same folder, fsynced, then renamed over ``path``: a process killed
    mid-write, or a failed write, leaves the previous checkpoint intact. Temporaries left by
    writers of ``path`` that died are removed; those of running writers are not touched.

    :param state: tensors and plain containers (dicts, lists, tuples, numbers, strings); the key
        ``"sha256"`` is reserved for the digest.
    :raises OSError: the folder cannot be written or the disk is full (the message names ``path``).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    if DIGEST_KEY in state:
        raise ValueError(f"state: the key {DIGEST_KEY!r} is reserved for the checkpoint's digest")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_failure(path, error, "create the folder of") from error
    _sweep_stale_temporaries(path)
    payload = {**state, DIGEST_KEY: _digest(state)}
    temporary = _temporary_name(path)
    writer: _RecordingWriter | None = None
    try:
        with open(temporary, "xb") as file:
            writer = _RecordingWriter(file)
            torch.save(payload, writer)  # type: ignore[arg-type]
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        cause = writer.error if writer is not None and writer.error is not None else error
        if isinstance(cause, OSError):
            raise _write_failure(path, cause, "write") from error
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` and verify its digest.

    Checkpoints written before digests were stored (no ``"sha256"`` entry) load unverified.

    :returns: the state that was saved (without the digest entry).
    :raises FileNotFoundError: no file at ``path``.
    :raises ValueError: the file is truncated, corrupted (its contents do not match the stored
        digest), or holds objects other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = load_failure_reason(error)
        raise ValueError(
            f"checkpoint: {path} is truncated or corrupted, or not a gpex checkpoint ({reason}); "
            "it was not unpickled beyond tensors and plain containers"
        ) from error
    if not isinstance(state, dict) or "format" not in state:
        raise ValueError(f"checkpoint: {path} is not a gpex checkpoint (no 'format' entry)")
    stored = state.pop(DIGEST_KEY, None)
    if stored is not None and stored != _digest(state):
        raise ValueError(
            f"checkpoint: {path} is corrupted: its contents do not match the SHA-256 digest stored when it was "
            "written (a changed byte on disk or in transfer); use an earlier copy"
        )
    return state


def write_json_atomically(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (the temporary-then-rename of :func:`save_checkpoint`)."""
    path = Path(path)
    _sweep_stale_temporaries(path)
    temporary = _temporary_name(path)
    try:
        with open(temporary, "x") as file:
            json.dump(payload, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_failure(path, error, "write") from error
        raise
