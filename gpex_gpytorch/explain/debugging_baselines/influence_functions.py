"""Influence functions (Koh & Liang, 2017) on the last layer, with a native LiSSA solver.

The influence of up-weighting training instance :math:`z_i` on the loss at test instance
:math:`z_t` is :math:`\\mathcal I(i, t) = -\\nabla L(z_t)^\\top H^{-1} \\nabla L(z_i)` with :math:`H` the
Hessian of the mean training loss. Here the parameters are the last linear layer (bias folded
in as a constant feature), where per-instance gradients are rank one and Hessian-vector products
are closed-form, and :math:`H^{-1}v` is approximated by LiSSA (Agarwal et al., 2017): the
truncated Neumann recursion :math:`h_j = v + h_{j-1} - (H + \\lambda I) h_{j-1} / s`, whose fixed
point is :math:`s (H + \\lambda I)^{-1} v`.

No optional library is needed; captum's own influence classes need the full model and a
checkpoint file, so this module deliberately stays native (the benchmark says which ran).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ...utils import check_tensor
from .representer_points import _augment, _check_features_labels

__all__ = ["InfluenceScores", "influence_scores", "last_layer_hvp", "lissa_inverse_hvp", "power_iteration"]


def lissa_inverse_hvp(
    hvp: Callable[[Tensor], Tensor],
    vectors: Tensor,
    *,
    damping: float = 0.01,
    scale: float = 10.0,
    steps: int = 100,
) -> Tensor:
    """Approximate :math:`(H + \\lambda I)^{-1} v` for a batch of vectors by the LiSSA recursion.

    Converges when ``scale`` exceeds the largest eigenvalue of :math:`H + \\lambda I` (and
    :math:`H + \\lambda I \\succ 0`); the error shrinks like :math:`(1 - \\mu_{min}/s)^{steps}`.

    :param hvp: maps a batch ``(B, *P)`` of vectors to their Hessian-vector products (same shape).
    :param vectors: ``(B, *P)`` right-hand sides.
    :param damping: :math:`\\lambda \\ge 0`.
    :param scale: :math:`s > 0`.
    :param steps: recursion depth.
    """
    check_tensor("vectors", vectors, floating=True, finite=True)
    if not damping >= 0:
        raise ValueError(f"damping: expected a value >= 0, got {damping!r}")
    if not scale > 0:
        raise ValueError(f"scale: expected a value > 0, got {scale!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    estimate = vectors.clone()
    for _ in range(steps):
        estimate = vectors + estimate - (hvp(estimate) + damping * estimate) / scale
    return estimate / scale


def last_layer_hvp(features: Tensor, probabilities: Tensor) -> Callable[[Tensor], Tensor]:
    """Hessian-vector products of the mean cross-entropy w.r.t. a linear layer, in closed form.

    :param features: ``(n, d)`` layer inputs (append a constant 1 to include the bias).
    :param probabilities: ``(n, C)`` softmax outputs at the current weights.
    :returns: a map from ``(B, C, d)`` to ``(B, C, d)``:
        :math:`V \\mapsto \\frac1n \\sum_i (\\mathrm{diag}(p_i) - p_i p_i^\\top) V f_i f_i^\\top`.
    """
    check_tensor("features", features, ndim=2, floating=True, finite=True)
    check_tensor("probabilities", probabilities, shape=(features.shape[0], None), floating=True, finite=True)
    n = features.shape[0]
    p = probabilities.T.unsqueeze(0)  # shape: (1, C, n)

    def hvp(v: Tensor) -> Tensor:
        z = v @ features.T  # V f_i, shape: (B, C, n)
        s = p * z - p * (p * z).sum(1, keepdim=True)  # softmax Jacobian applied per instance
        return s @ features / n

    return hvp


def power_iteration(
    hvp: Callable[[Tensor], Tensor], shape: tuple[int, ...], *, steps: int = 30, seed: int = 0
) -> float:
    """The largest eigenvalue of a PSD operator given by ``hvp``, by power iteration (used to pick ``scale``)."""
    if not callable(hvp):
        raise TypeError(f"hvp: expected a callable, got {type(hvp).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn((1, *shape), generator=generator, dtype=torch.float64)
    value = 0.0
    for _ in range(steps):
        w = hvp(v)
        value = float(w.flatten().norm())
        if value == 0.0:
            return 0.0
        v = w / value
    return value


@dataclass(frozen=True)
class InfluenceScores:
    """Influence of every training instance on every test loss.

    :ivar scores: ``(T, n)`` :math:`\\mathcal I(i, t)`; positive = up-weighting ``i`` raises the test
        loss (a harmful instance — for a misclassified test instance, a likely flipped label).
    :ivar backend: which implementation ran.
    :ivar scale: the LiSSA scale used.
    :ivar steps: its depth.
    :ivar damping: its damping.
    """

    scores: Tensor
    backend: str
    scale: float
    steps: int
    damping: float


@torch.no_grad()
def influence_scores(
    train_features: Tensor,
    train_labels: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    damping: float = 0.01,
    steps: int = 100,
    scale: float | None = None,
) -> InfluenceScores:
    """Last-layer influence functions with native LiSSA.

    :param train_features: ``(n, d)`` penultimate activations of the training set.
    :param train_labels: ``(n,)`` the labels the model was trained on.
    :param weight: ``(C, d)`` the trained last layer.
    :param bias: ``(C,)`` or ``None``.
    :param test_features: ``(T, d)``.
    :param test_labels: ``(T,)`` their (trusted) labels.
    :param damping: :math:`\\lambda`.
    :param steps: LiSSA depth.
    :param scale: LiSSA's :math:`s`; default ``1.1 × (λ_max(H) + λ)`` from power iteration.
    :raises ValueError: for empty or mismatched inputs.
    """
    _check_features_labels(train_features, train_labels, names=("train_features", "train_labels"))
    _check_features_labels(test_features, test_labels, names=("test_features", "test_labels"))
    d = train_features.shape[1]
    check_tensor("weight", weight, shape=(None, d))
    if test_features.shape[1] != d:
        raise ValueError(f"test_features: expected {d} columns like train_features, got {test_features.shape[1]}")
    w = weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
    check_tensor("bias", b, shape=(w.shape[0],))
    theta = torch.cat([w, b.unsqueeze(1)], 1)  # shape: (C, d + 1)
    x_train, x_test = _augment(train_features.double()), _augment(test_features.double())
    classes = theta.shape[0]
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if bool((labels < 0).any() | (labels >= classes).any()):
            raise ValueError(f"{name}: expected classes in [0, {classes - 1}]")
    p_train = torch.softmax(x_train @ theta.T, 1)
    g_train = p_train - F.one_hot(train_labels.long(), classes).double()  # ∂L/∂Φ, shape: (n, C)
    g_test = torch.softmax(x_test @ theta.T, 1) - F.one_hot(test_labels.long(), classes).double()
    hvp = last_layer_hvp(x_train, p_train)
    if scale is None:
        scale = 1.1 * (power_iteration(hvp, tuple(theta.shape)) + damping)
    test_grads = g_test.unsqueeze(2) * x_test.unsqueeze(1)  # ∇θ L(z_t), shape: (T, C, d + 1)
    solved = lissa_inverse_hvp(hvp, test_grads, damping=damping, scale=scale, steps=steps)
    # −⟨s_t, g_i ⊗ x_i⟩ without forming the (n, C, d + 1) per-instance gradients.
    scores = -((solved @ x_train.T) * g_train.T.unsqueeze(0)).sum(1)
    return InfluenceScores(
        scores=scores, backend="native LiSSA (last layer)", scale=float(scale), steps=steps, damping=damping
    )
