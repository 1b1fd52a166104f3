"""Iterate over inputs (and labels, when there are any) of a tensor, dataset or loader, in batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ._checks import check_count

__all__ = ["Data", "iter_batches", "num_examples", "stack_inputs"]

#: What the analysis functions accept as data: a tensor of inputs, a map-style dataset whose items
#: are ``(input, label, ...)`` tuples or bare inputs, or any iterable of such batches (a DataLoader).
Data = Union[Tensor, Dataset, DataLoader, Iterable]


def num_examples(data: Data) -> int | None:
    """The number of examples when it is known without iterating (``None`` otherwise)."""
    if isinstance(data, Tensor):
        return int(data.shape[0]) if data.dim() else 0
    if isinstance(data, DataLoader):
        dataset = data.dataset
        return len(dataset) if isinstance(dataset, Sized) else None
    if isinstance(data, Dataset) and isinstance(data, Sized):
        return len(data)
    return None


def _split(batch: object) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], labels
    raise TypeError(
        "dataset: expected batches that are tensors or (inputs, labels, ...) tuples of tensors, "
        f"got {type(batch).__name__}"
    )


def iter_batches(
    data: Data,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(inputs, labels or None)`` batches moved to ``device``.

    A :class:`~torch.utils.data.TensorDataset` or a tensor is sliced directly (no collation cost);
    other map-style datasets go through a sequential :class:`~torch.utils.data.DataLoader`; a
    DataLoader or other iterable is used as it is (its own batch size wins).

    :raises ValueError: ``dataset`` is empty.
    """
    check_count("batch_size", batch_size)
    size = num_examples(data)
    if size == 0:
        raise ValueError("dataset: expected at least one example, got an empty dataset")
    if isinstance(data, Tensor):
        sources: tuple[Tensor, ...] = (data,)
    elif isinstance(data, TensorDataset):
        sources = tuple(data.tensors)
    else:
        sources = ()
    if sources:
        assert size is not None
        for start in range(0, size, batch_size):
            labels = sources[1][start : start + batch_size] if len(sources) > 1 else None
            yield _move(sources[0][start : start + batch_size], labels, device)
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise TypeError(f"dataset: expected a tensor, a Dataset or an iterable of batches, got {type(data).__name__}")
    seen = False
    for batch in data:
        inputs, labels = _split(batch)
        if inputs.shape[0] == 0:
            continue
        seen = True
        yield _move(inputs, labels, device)
    if not seen:
        raise ValueError("dataset: expected at least one example, got an empty dataset")


def _move(inputs: Tensor, labels: Tensor | None, device: torch.device | str | None) -> tuple[Tensor, Tensor | None]:
    if device is None:
        return inputs, labels
    return inputs.to(device), None if labels is None else labels.to(device)


def stack_inputs(data: Data, batch_size: int = 256) -> Tensor:
    """All inputs of ``data`` concatenated on the CPU (for figures that show dataset examples)."""
    return torch.cat([inputs.detach().cpu() for inputs, _ in iter_batches(data, batch_size)])
