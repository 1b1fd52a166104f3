"""scikit-learn's 8×8 handwritten digits: the embedded default dataset (no download needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["load_digits"]

NUM_DIGIT_CLASSES = 10


def _check_classes(classes: Sequence[int]) -> list[int]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ValueError(f"classes: expected a sequence of digit labels, got {type(classes).__name__}")
    chosen = list(classes)
    if len(chosen) == 0:
        raise ValueError("classes: expected at least one digit label, got an empty sequence")
    for c in chosen:
        # bool is an int subclass, but True/False as labels is almost certainly a mistake.
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < NUM_DIGIT_CLASSES:
            raise ValueError(f"classes: expected integers in 0..{NUM_DIGIT_CLASSES - 1}, got {c!r}")
    if len(set(int(c) for c in chosen)) != len(chosen):
        raise ValueError(f"classes: expected distinct labels, got {chosen}")
    return [int(c) for c in chosen]


def load_digits(
    seed: int = 0,
    test_size: float = 0.25,
    classes: Sequence[int] | None = None,
) -> tuple[TensorDataset, TensorDataset]:
    """Load scikit-learn's 1,797 handwritten 8×8 digits as a stratified train/test split.

    The data ships with scikit-learn, so this works offline. Pixel counts (0..16) are divided by
    16, giving float32 images in ``[0, 1]``.

    :param seed: seed of the split; the same seed gives the same split on every call.
    :param test_size: fraction of the images put in the test split, in ``(0, 1)``. The split is
        stratified, so each class appears in both splits in (nearly) the same proportion.
    :param classes: keep only these digits. Labels are then renumbered ``0..k-1`` in the order
        given here: ``classes=[3, 8]`` maps digit 3 to label 0 and digit 8 to label 1. ``None``
        keeps all ten digits with their own labels.
    :returns: ``(train, test)``, each a :class:`~torch.utils.data.TensorDataset` of images
        ``(N, 1, 8, 8)`` float32 and labels ``(N,)`` int64.
    :raises ValueError: for a ``test_size`` outside ``(0, 1)``, invalid ``classes`` or a
        non-integer ``seed``.
    """
    # Imported here so that importing gpex_gpytorch.datasets stays cheap.
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if not 0 <= int(seed) < 2**32:  # scikit-learn's random_state range
        raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size: expected a fraction strictly between 0 and 1, got {test_size!r}")

    bunch = sklearn_load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # counts of 4×4 pixel blocks: 0..16
    labels = bunch.target.astype(np.int64)

    if classes is not None:
        chosen = _check_classes(classes)
        keep = np.isin(labels, chosen)
        images, labels = images[keep], labels[keep]
        relabel = np.full(NUM_DIGIT_CLASSES, -1, dtype=np.int64)
        relabel[chosen] = np.arange(len(chosen))
        labels = relabel[labels]

    try:
        x_train, x_test, y_train, y_test = train_test_split(
            images, labels, test_size=float(test_size), random_state=int(seed), stratify=labels
        )
    except ValueError as error:  # e.g. a test split too small to hold every class
        raise ValueError(f"test_size: cannot make a stratified split with test_size={test_size}: {error}") from error

    def to_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1), torch.from_numpy(y))

    return to_dataset(x_train, y_train), to_dataset(x_test, y_test)
