"""Datasets: scikit-learn's digits (embedded default), local MNIST IDX and CIFAR-10 files, torchvision."""

from .cifar10 import load_cifar10
from .digits import load_digits
from .mnist import load_mnist_idx, read_idx
from .torchvision_datasets import load_torchvision

__all__ = ["load_cifar10", "load_digits", "load_mnist_idx", "load_torchvision", "read_idx"]
