"""Random access to the inputs of any map-style dataset, in batches."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset


def dataset_length(dataset: Dataset, name: str) -> int:
    """``len(dataset)``, with a clear error for an empty or unsized dataset."""
    try:
        length = len(dataset)  # type: ignore[arg-type]
    except TypeError as error:
        raise TypeError(f"{name}: expected a map-style dataset with __len__, got {type(dataset).__name__}") from error
    if length == 0:
        raise ValueError(f"{name}: expected a non-empty dataset, got one of length 0")
    return length


def _first(item: object) -> Tensor:
    # Datasets yield an input tensor, or a tuple/list whose first element is the input.
    value = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(value, Tensor):
        raise TypeError(f"dataset items: expected a tensor or a tuple starting with one, got {type(value).__name__}")
    return value


def take_inputs(dataset: Dataset, indices: Tensor, input_shape: torch.Size | None = None) -> Tensor:
    """The inputs of ``dataset`` at ``indices`` as one batch tensor (a fast path for ``TensorDataset``).

    :param input_shape: the shape of one input, to return an empty ``(0, *input_shape)`` batch for no
        indices (a process of a sharded run may hold none of a step's rows).
    """
    if indices.numel() == 0 and input_shape is not None:
        return torch.empty((0, *input_shape))
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][indices]
    return torch.stack([_first(dataset[int(i)]) for i in indices])


def take_labels(dataset: Dataset, indices: Tensor) -> Tensor | None:
    """The labels (second element of each item) at ``indices``, or ``None`` if items carry none."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1][indices] if len(dataset.tensors) > 1 else None
    items = [dataset[int(i)] for i in indices]
    if not all(isinstance(item, (tuple, list)) and len(item) > 1 for item in items):
        return None
    return torch.as_tensor([int(item[1]) for item in items])
