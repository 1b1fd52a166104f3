"""Read the user's data for ``gpex distill`` / ``gpex explain``: ``.npz``, ``.pt`` or ``.csv`` files.

* ``.npz``: arrays under ``--inputs-key`` (default ``inputs``) and, optionally, ``--labels-key``
  (default ``labels``); read without pickle;
* ``.pt``: a dict of tensors with those keys, an ``(inputs, labels)`` tuple, or one tensor of
  inputs; read with ``torch.load(weights_only=True)``;
* ``.csv``: a header row; the column named ``--labels-key`` (if present) holds the labels, every
  other column is a feature (the header gives the feature names).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DataFile", "load_data_file", "split_indices"]


@dataclass(frozen=True)
class DataFile:
    """Inputs (float32), optional labels, and feature names (CSV)."""

    inputs: Tensor
    labels: Tensor | None
    feature_names: list[str] | None = None


def _tensor(value: object, what: str) -> Tensor:
    tensor = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
    if tensor.dim() == 0 or tensor.shape[0] == 0:
        raise ValueError(f"--data: {what} must be a non-empty batch (N, ...), got shape {tuple(tensor.shape)}")
    return tensor


def _finish(inputs: Tensor, labels: Tensor | None, names: list[str] | None = None) -> DataFile:
    if not (inputs.is_floating_point() or inputs.dtype in (torch.uint8, torch.int64, torch.int32)):
        raise TypeError(f"--data: inputs must be numeric, got dtype {inputs.dtype}")
    inputs = inputs.to(torch.float32)  # numpy's float64 (or integer pixels) to the networks' dtype
    if not bool(torch.isfinite(inputs).all()):
        rows = (~torch.isfinite(inputs.reshape(inputs.shape[0], -1))).any(1).nonzero().flatten()[:10].tolist()
        raise ValueError(f"--data: inputs hold NaN or inf (rows {rows})")
    if labels is not None and labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"--data: {inputs.shape[0]} inputs but {labels.shape[0]} labels")
    if labels is not None and not labels.is_floating_point():
        labels = labels.long()
    return DataFile(inputs, labels, names)


def load_data_file(path: str | Path, inputs_key: str = "inputs", labels_key: str = "labels") -> DataFile:
    """Read ``path`` (see the module documentation).

    :raises FileNotFoundError: no such file.
    :raises ValueError: an unknown suffix, a missing key (the message lists the keys present), or
        inputs that are empty or not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            if inputs_key not in arrays:
                raise ValueError(f"--data: {path} has no array {inputs_key!r} (--inputs-key); it has {list(arrays)}")
            inputs = _tensor(arrays[inputs_key], "inputs")
            labels = _tensor(arrays[labels_key], "labels") if labels_key in arrays else None
        return _finish(inputs, labels)
    if suffix == ".pt":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"--data: {path} could not be read as tensors ({str(error).splitlines()[0]})") from error
        if isinstance(data, Tensor):
            return _finish(_tensor(data, "inputs"), None)
        if isinstance(data, (tuple, list)) and data:
            return _finish(_tensor(data[0], "inputs"), _tensor(data[1], "labels") if len(data) > 1 else None)
        if isinstance(data, dict):
            if inputs_key not in data:
                raise ValueError(f"--data: {path} has no entry {inputs_key!r} (--inputs-key); it has {list(data)}")
            labels = _tensor(data[labels_key], "labels") if labels_key in data else None
            return _finish(_tensor(data[inputs_key], "inputs"), labels)
        raise ValueError(f"--data: {path} holds a {type(data).__name__}; expected a dict, a tuple or a tensor")
    if suffix == ".csv":
        with path.open(newline="") as file:
            rows = list(csv.reader(file))
        if len(rows) < 2:
            raise ValueError(f"--data: {path} needs a header row and at least one data row")
        header, body = rows[0], rows[1:]
        try:
            values = np.array(body, dtype=np.float64)
        except ValueError as error:
            raise ValueError(f"--data: {path} has non-numeric cells ({error})") from error
        features = [j for j, name in enumerate(header) if name != labels_key]
        labels = torch.as_tensor(values[:, header.index(labels_key)]) if labels_key in header else None
        if labels is not None and bool((labels == labels.round()).all()):
            labels = labels.long()
        return _finish(torch.as_tensor(values[:, features]), labels, [header[j] for j in features])
    raise ValueError(f"--data: expected a .npz, .pt or .csv file, got {path.name}")


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split into ``(train, test)`` indices; ``test_fraction`` 0 gives an empty test set."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"--test-fraction: expected a value in [0, 1), got {test_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    num_test = int(round(n * test_fraction))
    if n - num_test < 2:
        raise ValueError(f"--test-fraction: leaves {n - num_test} training examples of {n}; at least 2 are needed")
    return order[num_test:].sort().values, order[:num_test].sort().values
