"""CIFAR-10 from the "python version" batches in a local folder (no download, no torchvision).

The batches are Python pickles, the format's own choice. Unpickling can run arbitrary code, so
the loader uses an unpickler that only resolves the few globals those files need (NumPy's array
reconstruction and ``dtype``); anything else is refused. Still, load only files from a source
you trust.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["load_cifar10"]

IMAGE_SHAPE = (3, 32, 32)
ROW_LENGTH = 3 * 32 * 32  # the red, green and blue 32×32 planes, each row-major
NUM_CLASSES = 10
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
FOLDER = "cifar-10-batches-py"


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as protocol 2 pickles ``b""``; any argument is refused (``bytes(10**12)`` would allocate)."""
    if args:
        raise pickle.UnpicklingError("refusing bytes(...) with arguments: not part of a CIFAR-10 batch")
    return b""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # NumPy 2 moved numpy.core to numpy._core; the original batches (pickled by Python 2 with
    # NumPy 1) name the old module, newer re-pickled files the new one. Map both spellings to
    # the objects of whichever NumPy is installed, without touching the deprecated shim.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles bytes as _codecs.encode(str, "latin1") at protocols < 3 ...
        ("_codecs", "encode"): codecs.encode,
        # ... and the empty bytes as bytes() (named __builtin__.bytes at protocol 2).
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol-5 arrays
            allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR batch needs."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:  # noqa: ANN401 - returns any allowed class/function
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not part of a CIFAR-10 batch"
            ) from None


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _unpickle(f)
    except OSError as error:
        raise ValueError(f"{path}: cannot read CIFAR-10 batch: {error}") from error
    except Exception as error:  # unpickling corrupt data can raise almost anything
        raise ValueError(f"{path}: corrupt or not a CIFAR-10 python batch ({type(error).__name__}: {error})") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")

    def get(key: str) -> Any:  # noqa: ANN401 - whatever the batch stored
        # Pickled by Python 2 and read with encoding="bytes", the keys are bytes.
        for candidate in (key.encode(), key):
            if candidate in batch:
                return batch[candidate]
        # Only plain keys are shown: repr of a crafted nested key could take exponential time.
        shown = sorted(repr(k) if isinstance(k, (bytes, str)) and len(k) < 100 else type(k).__name__ for k in batch)
        raise ValueError(f"{path}: missing key {key.encode()!r}; found keys {shown[:20]}")

    # Types and sizes are checked before any conversion: np.asarray on a crafted object (a label
    # list whose items share one nested list) can take time exponential in the file's size.
    data = get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(
            f"{path}: expected b'data', a numpy array of dtype uint8 and shape (N, {ROW_LENGTH}), got {found}"
        )
    raw_labels = get("labels")
    if isinstance(raw_labels, np.ndarray):
        if raw_labels.ndim != 1 or not np.issubdtype(raw_labels.dtype, np.integer):
            raise ValueError(
                f"{path}: expected b'labels' as a 1-d integer array, got {raw_labels.dtype} {raw_labels.shape}"
            )
        labels = raw_labels.astype(np.int64)
    elif isinstance(raw_labels, list):
        bad = next((v for v in raw_labels if isinstance(v, bool) or not isinstance(v, (int, np.integer))), None)
        if bad is not None:
            raise ValueError(f"{path}: expected b'labels' as a list of integers, found a {type(bad).__name__}")
        if any(not 0 <= v < NUM_CLASSES for v in raw_labels):  # also keeps huge ints out of np.array
            raise ValueError(f"{path}: expected integer labels in 0..{NUM_CLASSES - 1}")
        labels = np.array(raw_labels, dtype=np.int64)
    else:
        raise ValueError(
            f"{path}: expected b'labels' as a list or 1-d array of integers, got {type(raw_labels).__name__}"
        )
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{path}: expected integer labels in 0..{NUM_CLASSES - 1}")
    return data, labels


def _unpickle(f: BinaryIO) -> object:
    # Equivalent to pickle.load(f, encoding="bytes"), restricted to the allowed globals.
    return _BatchUnpickler(f, encoding="bytes").load()


def load_cifar10(root: str | Path, train: bool = True) -> TensorDataset:
    """Load CIFAR-10 from its python batches.

    ``root`` is either the extracted ``cifar-10-batches-py`` folder itself or the folder that
    contains it. The training set is ``data_batch_1`` … ``data_batch_5`` (50,000 images), the
    test set ``test_batch`` (10,000). See the module docstring for the trust assumption.

    :param root: where the batches are.
    :param train: load the training batches rather than the test batch.
    :returns: a :class:`~torch.utils.data.TensorDataset` of images ``(N, 3, 32, 32)`` float32 in
        ``[0, 1]`` (channels R, G, B) and labels ``(N,)`` int64.
    :raises FileNotFoundError: if a batch file is missing.
    :raises ValueError: for a corrupt or malformed batch.
    """
    root = Path(root)
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"root: {root} is not a directory")
    names = TRAIN_BATCHES if train else TEST_BATCHES
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"root: missing CIFAR-10 batch file(s) {missing} in {folder}")
    batches = [_load_batch(folder / name) for name in names]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    # Each row is the R plane, then G, then B, each 32 rows of 32 pixels: exactly (3, 32, 32) in C order.
    images = torch.from_numpy(data.reshape(-1, *IMAGE_SHAPE).astype(np.float32) / 255.0)
    return TensorDataset(images, torch.from_numpy(labels))
