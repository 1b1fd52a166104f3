"""Representer point selection (Yeh et al., 2018), implemented natively on the last layer.

The last linear layer is fine-tuned on fixed penultimate features :math:`f_i` (with a constant 1
appended, so the bias is part of :math:`W`) by minimising

.. math:: \\frac{1}{n} \\sum_i \\mathrm{CE}(W f_i, y_i) + \\lambda \\lVert W \\rVert_F^2 .

At the optimum the gradient vanishes, so :math:`W = \\sum_i \\alpha_i f_i^\\top` with
:math:`\\alpha_i = -\\frac{1}{2 \\lambda n} \\partial L / \\partial \\Phi(x_i)` and every pre-activation
logit decomposes over the training set: :math:`\\Phi(x_t) = \\sum_i \\alpha_i f_i^\\top f_t`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ...utils import check_tensor

__all__ = ["RepresenterPoints", "fit_representer_points"]


def _augment(features: Tensor) -> Tensor:
    return torch.cat([features, torch.ones_like(features[:, :1])], 1)


def _check_features_labels(
    features: Tensor, labels: Tensor, *, names: tuple[str, str] = ("features", "labels")
) -> None:
    """Raise a ValueError naming the argument for empty, mis-shaped or mismatched inputs."""
    check_tensor(names[0], features, ndim=2, floating=True, finite=True)
    if features.shape[0] == 0:
        raise ValueError(f"{names[0]}: expected at least one row, got an empty tensor")
    check_tensor(names[1], labels, ndim=1)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{names[1]}: expected {features.shape[0]} labels (one per row of {names[0]}), got {labels.shape[0]}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{names[1]}: expected integer class labels, got dtype {labels.dtype}")


@dataclass(frozen=True)
class RepresenterPoints:
    """A fine-tuned last layer and its representer values.

    :ivar weight: ``(C, d + 1)`` the fine-tuned layer (last column: the bias).
    :ivar alpha: ``(n, C)`` representer values :math:`\\alpha_i`.
    :ivar features: ``(n, d + 1)`` the training features with the constant 1 appended.
    :ivar lam: the L2 strength :math:`\\lambda`.
    :ivar gradient_norm: norm of the objective's gradient at the end of fine-tuning (0 at the optimum).
    """

    weight: Tensor
    alpha: Tensor
    features: Tensor
    lam: float
    gradient_norm: float

    def logits(self, test_features: Tensor) -> Tensor:
        """Pre-activation logits of the fine-tuned layer, ``(T, C)``."""
        check_tensor("test_features", test_features, shape=(None, self.features.shape[1] - 1))
        return _augment(test_features.to(self.weight.dtype)) @ self.weight.T

    def contributions(self, test_features: Tensor) -> Tensor:
        """:math:`\\alpha_{ic} f_i^\\top f_t` for every test/train pair and class, ``(T, n, C)``.

        Summed over ``n`` it reproduces :meth:`logits` (exactly at the optimum).
        """
        check_tensor("test_features", test_features, shape=(None, self.features.shape[1] - 1))
        similarity = _augment(test_features.to(self.features.dtype)) @ self.features.T  # shape: (T, n)
        return similarity.unsqueeze(-1) * self.alpha.unsqueeze(0)

    def scores(self, test_features: Tensor, classes: Tensor) -> Tensor:
        """Representer value of each training instance for class ``classes[t]`` of test ``t``, ``(T, n)``.

        With ``classes`` the (wrong) predictions of misclassified test instances, the largest
        values are the training instances that pushed hardest towards the mistake.
        """
        check_tensor("test_features", test_features, shape=(None, self.features.shape[1] - 1))
        check_tensor("classes", classes, shape=(test_features.shape[0],))
        similarity = _augment(test_features.to(self.features.dtype)) @ self.features.T  # shape: (T, n)
        return similarity * self.alpha.T[classes.long()]

    def self_scores(self, labels: Tensor) -> Tensor:
        """Yeh et al.'s global mislabel score :math:`|\\alpha_{i, y_i}|`, ``(n,)``."""
        check_tensor("labels", labels, shape=(self.alpha.shape[0],))
        return self.alpha[torch.arange(self.alpha.shape[0]), labels.long()].abs()


def fit_representer_points(
    features: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    num_classes: int | None = None,
    lam: float = 1e-3,
    max_iter: int = 500,
    tolerance: float = 1e-10,
) -> RepresenterPoints:
    """Fine-tune the last layer with L2 ``lam`` (L-BFGS, float64) and compute the representer values.

    :param features: ``(n, d)`` penultimate activations of the training set.
    :param labels: ``(n,)`` the training labels (the ones the model was trained on).
    :param weight: ``(C, d)`` the trained last layer, the starting point (default: zeros).
    :param bias: ``(C,)`` its bias (default: zeros).
    :param num_classes: ``C`` when no ``weight`` is given (default: ``labels.max() + 1``).
    :param lam: :math:`\\lambda > 0`.
    :param max_iter: L-BFGS iterations.
    :param tolerance: stop when the gradient's max-norm is below.
    :raises ValueError: for empty or mismatched inputs, a non-positive ``lam``.
    """
    _check_features_labels(features, labels)
    if not lam > 0:
        raise ValueError(f"lam: expected a value > 0, got {lam!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    x = _augment(features.detach().double())
    y = labels.long().to(x.device)
    n, width = x.shape
    if weight is not None:
        check_tensor("weight", weight, shape=(None, width - 1))
        start = torch.cat([weight.detach().double(), torch.zeros_like(weight[:, :1]).double()], 1)
        if bias is not None:
            check_tensor("bias", bias, shape=(weight.shape[0],))
            start[:, -1] = bias.detach().double()
    else:
        classes = num_classes if num_classes is not None else int(y.max()) + 1
        start = torch.zeros(classes, width, dtype=torch.float64, device=x.device)
    if bool((y < 0).any() | (y >= start.shape[0]).any()):
        raise ValueError(f"labels: expected classes in [0, {start.shape[0] - 1}]")
    w = start.clone().to(x.device).requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance, tolerance_change=0.0, line_search_fn="strong_wolfe"
    )

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w.T, y) + lam * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
        final = F.cross_entropy(x @ w.T, y) + lam * w.pow(2).sum()
        (grad,) = torch.autograd.grad(final, w)
    w = w.detach()
    # ∂L/∂Φ(x_i) of the per-instance cross-entropy: softmax minus one-hot.
    dlogits = torch.softmax(x @ w.T, 1) - F.one_hot(y, w.shape[0]).double()
    alpha = -dlogits / (2 * lam * n)
    return RepresenterPoints(weight=w, alpha=alpha, features=x, lam=float(lam), gradient_norm=float(grad.norm()))
