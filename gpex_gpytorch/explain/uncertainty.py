"""The GP's posterior variance as an error detector: does it flag the network's misclassifications?"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..distillation import predict_gp_and_ann
from ..models.gpex_model import GPEXModel
from ..utils import check_tensor

__all__ = ["UncertaintyReport", "misclassification_auroc", "posterior_variance", "variance_auroc"]


@torch.no_grad()
def posterior_variance(model: GPEXModel, inputs: Tensor, batch_size: int = 512) -> Tensor:
    """The posterior variance of every head at every input, ``(N, H)`` (batched, no gradient)."""
    check_tensor("inputs", inputs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    device = model.covar_module.embeddings.device
    parts = [model.predict(chunk.to(device))[1].cpu() for chunk in inputs.split(batch_size)]
    return torch.cat(parts)


def variance_auroc(scores: Tensor, errors: Tensor) -> float | None:
    """AUROC of ``scores`` for separating ``errors`` (True) from correct cases (False).

    0.5 is chance, 1 means every error scores above every correct case. ``None`` when only one
    class is present (AUROC undefined). Computed with :func:`sklearn.metrics.roc_auc_score`.
    """
    from sklearn.metrics import roc_auc_score

    check_tensor("scores", scores, finite=True)
    check_tensor("errors", errors)
    errors = errors.bool().flatten()
    if scores.flatten().shape != errors.shape:
        raise ValueError(f"scores: expected shape {tuple(errors.shape)}, got {tuple(scores.shape)}")
    if bool(errors.all()) or not bool(errors.any()):
        return None
    return float(roc_auc_score(errors.numpy(), scores.flatten().double().numpy()))


@dataclass(frozen=True)
class UncertaintyReport:
    """How well the GP's posterior variance flags the network's misclassifications.

    :ivar auroc: AUROC of the variance of the network's predicted head for misclassification
        (``None`` when the network makes no error, or only errors, on the data).
    :ivar num_errors: misclassified examples.
    :ivar num_samples: examples evaluated.
    :ivar mean_variance_errors: mean score on the misclassified examples (``None`` if none).
    :ivar mean_variance_correct: mean score on the correct ones (``None`` if none).
    :ivar variance: ``(N,)`` the score of each example.
    :ivar errors: ``(N,)`` whether misclassified.
    :ivar heads: ``(N,)`` the network's predicted head (class) per example.
    """

    auroc: float | None
    num_errors: int
    num_samples: int
    mean_variance_errors: float | None
    mean_variance_correct: float | None
    variance: Tensor
    errors: Tensor
    heads: Tensor

    def summary(self) -> dict[str, float | int | None]:
        """The scalar fields, for JSON."""
        return {
            "auroc": self.auroc,
            "num_errors": self.num_errors,
            "num_samples": self.num_samples,
            "mean_variance_errors": self.mean_variance_errors,
            "mean_variance_correct": self.mean_variance_correct,
        }


def misclassification_auroc(
    model: GPEXModel, ann: nn.Module, dataset: Dataset, *, batch_size: int = 512
) -> UncertaintyReport:
    """Score each labelled example by the GP's posterior variance of the head the network predicts
    (its arg-max output, i.e. the decision being explained) and report the AUROC of that score for
    the network's misclassifications.

    :param dataset: a labelled map-style dataset of ``(input, label, ...)``.
    :raises ValueError: if the dataset carries no labels.
    """
    _, variance, ann_out, labels = predict_gp_and_ann(model, ann, dataset, batch_size)
    if labels is None:
        raise ValueError("dataset: expected (input, label) items; misclassification needs labels")
    heads = ann_out.argmax(1)
    score = variance[torch.arange(heads.shape[0]), heads]
    errors = heads != labels.to(heads.device)
    return UncertaintyReport(
        auroc=variance_auroc(score, errors),
        num_errors=int(errors.sum()),
        num_samples=int(errors.numel()),
        mean_variance_errors=float(score[errors].mean()) if bool(errors.any()) else None,
        mean_variance_correct=float(score[~errors].mean()) if bool((~errors).any()) else None,
        variance=score,
        errors=errors,
        heads=heads,
    )
