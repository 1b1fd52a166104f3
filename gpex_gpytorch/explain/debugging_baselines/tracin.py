"""TracIn-CP (Pruthi et al., 2020): gradient agreement summed over training checkpoints.

:math:`\\mathrm{TracIn}(i, t) = \\sum_k \\eta_k \\nabla L(z_i; \\theta_k)^\\top \\nabla L(z_t; \\theta_k)`.
Two implementations, both restricted to the last layer (as captum's ``TracInCPFast`` is):

* :func:`tracin_last_layer` — native, no extra dependency. On a linear layer the per-instance
  gradient is :math:`g \\otimes \\tilde f` (softmax minus one-hot, outer the features with a 1
  appended), so the dot product factorises into :math:`(g_i^\\top g_t)(\\tilde f_i^\\top \\tilde f_t)`.
* :func:`captum_tracin` — captum's ``TracInCPFast`` when captum is installed; otherwise an
  :class:`ImportError` with an explanation (check :func:`captum_available` first).

Positive scores are proponents (training on ``i`` lowered the loss at ``t``); for a misclassified
test instance scored with its true label, flipped training labels show up as opponents, so rank
by the negated score.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from ...utils import check_tensor
from .representer_points import _augment, _check_features_labels

__all__ = ["Checkpoint", "captum_available", "captum_tracin", "tracin_last_layer"]


def captum_available() -> bool:
    """Whether captum can be imported (without importing it)."""
    return importlib.util.find_spec("captum") is not None


@dataclass(frozen=True)
class Checkpoint:
    """What TracIn needs from one training checkpoint, restricted to the last layer.

    :ivar train_features: ``(n, d)`` penultimate activations of the training set at this checkpoint.
    :ivar test_features: ``(T, d)`` those of the test instances.
    :ivar weight: ``(C, d)`` the last layer.
    :ivar bias: ``(C,)`` or ``None``.
    :ivar learning_rate: :math:`\\eta_k`.
    """

    train_features: Tensor
    test_features: Tensor
    weight: Tensor
    bias: Tensor | None
    learning_rate: float


def _gradient_factor(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    x = _augment(features.double())
    b = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    logits = x @ torch.cat([weight.detach().double(), b.unsqueeze(1)], 1).T
    return torch.softmax(logits, 1) - F.one_hot(labels.long(), weight.shape[0]).double(), x


@torch.no_grad()
def tracin_last_layer(checkpoints: Sequence[Checkpoint], train_labels: Tensor, test_labels: Tensor) -> Tensor:
    """Native last-layer TracIn-CP scores, ``(T, n)``.

    :param checkpoints: one :class:`Checkpoint` per saved model (at least one).
    :param train_labels: ``(n,)`` the labels the model was trained on.
    :param test_labels: ``(T,)`` the labels whose loss is explained.
    :raises ValueError: for no checkpoints or mismatched shapes.
    """
    if len(checkpoints) == 0:
        raise ValueError("checkpoints: expected at least one checkpoint, got none")
    total: Tensor | None = None
    for k, cp in enumerate(checkpoints):
        _check_features_labels(
            cp.train_features, train_labels, names=(f"checkpoints[{k}].train_features", "train_labels")
        )
        _check_features_labels(cp.test_features, test_labels, names=(f"checkpoints[{k}].test_features", "test_labels"))
        check_tensor(f"checkpoints[{k}].weight", cp.weight, shape=(None, cp.train_features.shape[1]))
        g_train, x_train = _gradient_factor(cp.train_features, train_labels, cp.weight, cp.bias)
        g_test, x_test = _gradient_factor(cp.test_features, test_labels, cp.weight, cp.bias)
        term = cp.learning_rate * (g_test @ g_train.T) * (x_test @ x_train.T)
        total = term if total is None else total + term
    assert total is not None
    return total


def captum_tracin(
    model: nn.Module,
    final_fc_layer: nn.Module,
    train_dataset: Dataset,
    checkpoint_paths: Sequence[str | Path],
    test_inputs: Tensor,
    test_labels: Tensor,
    *,
    learning_rates: Sequence[float] | None = None,
    batch_size: int = 256,
    loss_fn: Callable[..., Tensor] | None = None,
) -> Tensor:
    """TracIn-CP scores ``(T, n)`` from captum's ``TracInCPFast`` (needs ``pip install captum``).

    :param model: the network; its parameters are overwritten by each checkpoint's state dict.
    :param final_fc_layer: its last linear layer (a sub-module of ``model``).
    :param train_dataset: ``(inputs, labels)`` items, the labels the model was trained on.
    :param checkpoint_paths: files written with ``torch.save(model.state_dict(), path)``.
    :param learning_rates: :math:`\\eta_k` per checkpoint (default 1).
    :raises ImportError: when captum is not installed.
    :raises ValueError: for no checkpoints or mismatched learning rates.
    """
    if not captum_available():
        raise ImportError("captum_tracin: captum is not installed (pip install captum); TracInCPFast is unavailable")
    from captum.influence import TracInCPFast

    paths = [str(p) for p in checkpoint_paths]
    if not paths:
        raise ValueError("checkpoint_paths: expected at least one checkpoint file, got none")
    rates = [1.0] * len(paths) if learning_rates is None else [float(r) for r in learning_rates]
    if len(rates) != len(paths):
        raise ValueError(f"learning_rates: expected {len(paths)} values (one per checkpoint), got {len(rates)}")
    rate_of = dict(zip(paths, rates, strict=True))

    def load(net: nn.Module, path: str) -> float:
        net.load_state_dict(torch.load(path, weights_only=True))
        return rate_of[path]

    tracin = TracInCPFast(
        model,
        final_fc_layer,
        train_dataset,
        paths,
        checkpoints_load_func=load,
        loss_fn=loss_fn if loss_fn is not None else nn.CrossEntropyLoss(reduction="sum"),
        batch_size=batch_size,
        vectorize=False,
    )
    return tracin.influence((test_inputs, test_labels), show_progress=False).detach()
