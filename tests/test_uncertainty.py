"""Posterior variance per head, and its AUROC for flagging the network's misclassifications."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from gpex_gpytorch.explain import misclassification_auroc, posterior_variance, variance_auroc
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel


def test_variance_auroc_matches_definition() -> None:
    errors = torch.tensor([False, False, True, False, True, False])
    assert variance_auroc(torch.tensor([0.1, 0.2, 0.9, 0.3, 0.8, 0.4]), errors) == 1.0
    assert variance_auroc(torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.6]), errors) == 0.0
    # Pairs (error, correct) ranked correctly: 0.5 scores above 0.1, 0.2; below 0.6, 0.7 -> 4 of 8... per error.
    scores = torch.tensor([0.1, 0.2, 0.5, 0.7, 0.65, 0.6])
    pairs = [(e, c) for e in scores[errors] for c in scores[~errors]]
    expected = sum(float(e > c) + 0.5 * float(e == c) for e, c in pairs) / len(pairs)
    assert variance_auroc(scores, errors) == pytest.approx(expected)
    assert variance_auroc(scores, torch.zeros(6, dtype=torch.bool)) is None
    with pytest.raises(ValueError, match="scores"):
        variance_auroc(scores[:3], errors)


class Fixed(nn.Module):
    """A 'network' whose logits are given per example (the first input column indexes them)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits[x[:, 0].long()]


def test_misclassification_auroc_uses_the_predicted_heads_variance() -> None:
    torch.manual_seed(0)
    n, h, d = 30, 3, 2
    features = torch.randn(n, 4)
    x = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], features], 1)
    kernel = CachedDeepKernel(nn.Linear(5, h * d), n, h, d)
    kernel.fill(x, progress=False)
    logits = torch.randn(n, h)
    model = GPEXModel(kernel, logits)
    labels = logits.argmax(1).clone()
    labels[:6] = (labels[:6] + 1) % h  # six misclassifications
    report = misclassification_auroc(model, Fixed(logits), TensorDataset(x, labels))
    variance = posterior_variance(model, x, batch_size=7)
    assert variance.shape == (n, h) and bool((variance >= 0).all())
    predicted = variance[torch.arange(n), logits.argmax(1)]
    torch.testing.assert_close(report.variance, predicted)
    assert report.num_errors == 6 and report.num_samples == n
    assert report.auroc == pytest.approx(variance_auroc(predicted, torch.arange(n) < 6))
    assert set(report.summary()) >= {"auroc", "num_errors", "num_samples"}
    with pytest.raises(ValueError, match="labels"):
        misclassification_auroc(model, Fixed(logits), TensorDataset(x))
