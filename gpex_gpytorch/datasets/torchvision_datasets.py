"""Datasets from torchvision, when it is installed (it is an optional dependency)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType

from torch.utils.data import Dataset

__all__ = ["load_torchvision"]

INSTALL_HINT = "pip install gpex-gpytorch[vision]"


def _import_torchvision() -> tuple[ModuleType, ModuleType]:
    # Imported lazily: torchvision has no CPU wheel for every torch build, so the package must
    # import and work without it.
    try:
        datasets = importlib.import_module("torchvision.datasets")
        transforms = importlib.import_module("torchvision.transforms")
    except ImportError as error:
        raise ImportError(
            f"load_torchvision needs torchvision, which could not be imported ({error}). "
            f"Install it with `{INSTALL_HINT}`, or use the built-in loaders load_digits, "
            "load_mnist_idx and load_cifar10, which do not need it."
        ) from error
    return datasets, transforms


def load_torchvision(name: str, root: str | Path, train: bool = True, download: bool = False) -> Dataset:
    """Load a dataset of ``torchvision.datasets`` by class name, as tensors in ``[0, 1]``.

    Items are ``(image, label)`` with ``image`` a float32 tensor ``(C, H, W)`` in ``[0, 1]``
    (torchvision's ``ToTensor``), matching the built-in loaders' layout.

    :param name: the class name in ``torchvision.datasets``, e.g. ``"MNIST"``, ``"FashionMNIST"``,
        ``"CIFAR10"``, ``"SVHN"`` (case-insensitive).
    :param root: the dataset folder, as torchvision expects it.
    :param train: the training split rather than the test split (passed as ``train=`` or, for
        datasets such as SVHN that take one, ``split="train"/"test"``).
    :param download: let torchvision download the files if they are missing.
    :raises ImportError: if torchvision cannot be imported, with the install command.
    :raises ValueError: if ``name`` is not a torchvision dataset.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a torchvision.datasets class name, got {type(name).__name__}")
    datasets, transforms = _import_torchvision()
    lookup = {attr.lower(): attr for attr in dir(datasets) if inspect.isclass(getattr(datasets, attr))}
    if not isinstance(name, str) or name.lower() not in lookup:
        raise ValueError(f"name: {name!r} is not a dataset in torchvision.datasets")
    cls = getattr(datasets, lookup[name.lower()])
    parameters = inspect.signature(cls).parameters
    kwargs: dict[str, object] = {"root": str(root), "transform": transforms.ToTensor()}
    if "train" in parameters:
        kwargs["train"] = train
    elif "split" in parameters:
        kwargs["split"] = "train" if train else "test"
    if "download" in parameters:
        kwargs["download"] = download
    return cls(**kwargs)
