"""Accept the data forms users have at hand — datasets, ``DataLoader``s, tensors — as a map-style dataset."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

__all__ = ["as_map_dataset"]


def _rows(batch: object, name: str) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], labels
    kind = "a mapping" if isinstance(batch, Mapping) else type(batch).__name__
    raise TypeError(
        f"{name}: the DataLoader yields {kind} batches; expected tensors or (inputs, labels, ...) tuples "
        "(wrap the dataset so that it yields them)"
    )


def as_map_dataset(data: object, name: str) -> Dataset:
    """``data`` as a map-style dataset whose index ``m`` is the ``m``-th example.

    * a map-style ``Dataset``: itself;
    * a ``DataLoader`` over a map-style dataset: that dataset (the distiller draws its own batches,
      so the loader's batch size and shuffling do not apply; indices are the dataset's);
    * a ``DataLoader`` over an iterable dataset: one pass, gathered into a ``TensorDataset`` in the
      loader's order (inputs, and labels when batches are ``(inputs, labels)``);
    * a tensor: a ``TensorDataset`` of its rows.
    """
    if isinstance(data, Tensor):
        if data.dim() == 0:
            raise ValueError(f"{name}: expected a batch of examples (N, ...), got a 0-d tensor")
        return TensorDataset(data)
    if isinstance(data, DataLoader):
        if not isinstance(data.dataset, IterableDataset) and hasattr(data.dataset, "__len__"):
            return data.dataset
        inputs: list[Tensor] = []
        labels: list[Tensor | None] = []
        for batch in data:
            x, y = _rows(batch, name)
            inputs.append(x)
            labels.append(y)
        if not inputs:
            raise ValueError(f"{name}: the DataLoader yielded no batches")
        if all(y is not None for y in labels):
            return TensorDataset(torch.cat(inputs), torch.cat(labels))  # type: ignore[arg-type]
        return TensorDataset(torch.cat(inputs))
    return data  # type: ignore[return-value]
