r"""Scores that flag the network's misclassifications: the network's own, and the GPs' posterior ones.

Every score is oriented so that *higher* means "more likely an error":

========================== ===========================================================================
``max_softmax``            :math:`1 - \max_k \mathrm{softmax}(z)_k` of the network's logits :math:`z`
``logit_margin``           :math:`-(z_{(1)} - z_{(2)})`, minus the gap between the two largest logits
``gp_mean_margin``         :math:`-(\mu_{(1)} - \mu_{(2)})`, the same on the GPs' posterior means
``gp_standardized_margin`` :math:`-(\mu_a - \mu_b)/\sqrt{c_a + c_b}` with :math:`a, b` the two largest
                           means: the gap in units of the standard deviation of :math:`f_a - f_b`
``gp_argmax_change``       :math:`\log P(\arg\max_k f_k \ne \arg\max_k \mu_k)` for one joint draw of
                           the heads' posteriors (computed exactly, in log space, see below)
``gp_variance``            :math:`c_l(x)`, the posterior variance of the head the network predicts
========================== ===========================================================================

The heads are independent GPs, so a posterior draw at :math:`x` is :math:`f_k \sim N(\mu_k, c_k)`
independently. With :math:`t = \arg\max \mu`, the events "head :math:`j` is the largest" are disjoint:

.. math::

    P(\text{change}) = \sum_{j \ne t} \int \phi(z) \prod_{i \ne j}
        \Phi\!\left(\frac{\mu_j + \sqrt{c_j}\, z - \mu_i}{\sqrt{c_i}}\right) dz.

Each integrand is log-concave in :math:`z`, so it is integrated by Gauss–Hermite quadrature centred
on its mode (found by safeguarded Newton) and scaled by its curvature, entirely in log space. The
probabilities of interest are often far below float64's range (a gap of 20 standard deviations gives
about :math:`10^{-88}`), so the score is the log-probability: the AUROC is the same as that of the
probability, without ties at an underflowed 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..distillation import predict_gp_and_ann
from ..models.gpex_model import GPEXModel
from ..utils import check_tensor
from .error_detection import ErrorDetectionReport, auroc, error_detection_report

__all__ = [
    "SCORE_DESCRIPTIONS",
    "UncertaintyReport",
    "argmax_change_log_probability",
    "error_scores",
    "misclassification_auroc",
    "posterior_variance",
    "variance_auroc",
]

SCORE_DESCRIPTIONS: dict[str, str] = {
    "max_softmax": "1 - max softmax of the network (baseline)",
    "logit_margin": "minus the network's top-2 logit margin (baseline)",
    "gp_mean_margin": "minus the top-2 margin of the GP means",
    "gp_standardized_margin": "minus the GP means' top-2 margin over its posterior standard deviation",
    "gp_argmax_change": "log P(a posterior draw's arg-max differs from the GP mean's)",
    "gp_variance": "GP posterior variance of the network's predicted head",
}


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
    class is present (AUROC undefined). Same as :func:`~gpex_gpytorch.explain.error_detection.auroc`.
    """
    return auroc(scores, errors)


def _check_mean_variance(mean: Tensor, variance: Tensor) -> tuple[Tensor, Tensor]:
    check_tensor("mean", mean, ndim=2, floating=True, finite=True)
    check_tensor("variance", variance, shape=tuple(mean.shape), floating=True, finite=True)
    if mean.shape[1] < 2:
        raise ValueError(f"mean: expected at least 2 heads (columns) to compare, got shape {tuple(mean.shape)}")
    if bool((variance <= 0).any()):
        raise ValueError("variance: expected positive posterior variances")
    return mean.double().cpu(), variance.double().cpu()


def _log_mills_terms(a: Tensor) -> tuple[Tensor, Tensor]:
    """``log Φ(a)``, and the inverse Mills ratio ``λ(a) = φ(a)/Φ(a)`` (stable for very negative ``a``)."""
    log_cdf = torch.special.log_ndtr(a)
    mills = torch.exp(-0.5 * a.square() - 0.5 * math.log(2 * math.pi) - log_cdf)
    return log_cdf, mills


def argmax_change_log_probability(
    mean: Tensor, variance: Tensor, *, num_nodes: int = 96, max_iter: int = 100, chunk_size: int = 512
) -> Tensor:
    r""":math:`\log P(\arg\max_k f_k \ne \arg\max_k \mu_k)` with independent :math:`f_k \sim N(\mu_k, c_k)`.

    :param mean: ``(N, H)`` posterior means.
    :param variance: ``(N, H)`` posterior variances (positive).
    :param num_nodes: Gauss–Hermite nodes per integral.
    :param max_iter: Newton iterations for each integrand's mode.
    :param chunk_size: inputs evaluated at once (memory ``chunk_size × H² × num_nodes`` float64).
    :returns: ``(N,)`` float64 log-probabilities (``-inf`` only if every competitor is impossible).
    """
    mu, var = _check_mean_variance(mean, variance)
    for name, value, least in (("num_nodes", num_nodes, 2), ("max_iter", max_iter, 1), ("chunk_size", chunk_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}: expected an integer >= {least}, got {value!r}")
    nodes_np, weights_np = np.polynomial.hermite_e.hermegauss(num_nodes)
    nodes = torch.from_numpy(nodes_np)
    log_weights = torch.from_numpy(np.log(weights_np)) - 0.5 * math.log(2 * math.pi)  # sum to 1
    parts = [
        _argmax_change_chunk(m, v, nodes, log_weights, max_iter)
        for m, v in zip(mu.split(chunk_size), var.split(chunk_size), strict=True)
    ]
    return torch.cat(parts)


def _argmax_change_chunk(mu: Tensor, var: Tensor, nodes: Tensor, log_weights: Tensor, max_iter: int) -> Tensor:
    n, h = mu.shape
    sd = var.sqrt()
    top = mu.argmax(1)  # shape: (N,)
    # Integrand of "head j is the largest", in z (head j's standardised value), for every (n, j):
    # a_i(z) = (mu_j - mu_i + sd_j z) / sd_i over competitors i != j.
    offset = (mu[:, :, None] - mu[:, None, :]) / sd[:, None, :]  # shape: (N, H_j, H_i)
    slope = sd[:, :, None] / sd[:, None, :]  # shape: (N, H_j, H_i)
    others = ~torch.eye(h, dtype=torch.bool).expand(n, h, h)

    def log_integrand(z: Tensor) -> Tensor:  # z: (N, H_j, K) -> (N, H_j, K)
        a = offset[..., None, :] + slope[..., None, :] * z[..., None]  # shape: (N, H_j, K, H_i)
        log_cdf = torch.special.log_ndtr(a).masked_fill(~others[..., None, :], 0.0)
        return -0.5 * z.square() - 0.5 * math.log(2 * math.pi) + log_cdf.sum(-1)

    # Mode of the log-concave integrand: Newton on h'(z) = -z + sum_i r_i λ(a_i), safeguarded by a
    # bracket (h' is decreasing, h'' <= -1).
    z = torch.zeros(n, h, dtype=torch.float64)
    lo = torch.full_like(z, -math.inf)
    hi = torch.full_like(z, math.inf)
    curvature = -torch.ones_like(z)
    for _ in range(max_iter):
        a = offset + slope * z[..., None]
        _, mills = _log_mills_terms(a)
        mills = mills.masked_fill(~others, 0.0)
        grad = -z + (slope * mills).sum(-1)
        dmills = (-mills * (a + mills)).clamp(-1.0, 0.0).masked_fill(~others, 0.0)
        curvature = -1.0 + (slope.square() * dmills).sum(-1)
        lo = torch.where(grad > 0, torch.maximum(lo, z), lo)
        hi = torch.where(grad <= 0, torch.minimum(hi, z), hi)
        step = z - grad / curvature
        bisect = 0.5 * (lo + hi)
        inside = (step > lo) & (step < hi)
        new = torch.where(inside | ~torch.isfinite(bisect), step, bisect)
        if bool(((new - z).abs() <= 1e-12 * (1 + z.abs())).all()):
            z = new
            break
        z = new
    scale = (-curvature).rsqrt()  # shape: (N, H_j)
    log_phi_nodes = -0.5 * nodes.square() - 0.5 * math.log(2 * math.pi)
    points = z[..., None] + scale[..., None] * nodes  # shape: (N, H_j, K)
    terms = log_weights + log_integrand(points) - log_phi_nodes
    log_p = scale.log() + torch.logsumexp(terms, -1)  # shape: (N, H_j): log P(head j is the largest)
    log_p = log_p.masked_fill(torch.arange(h)[None, :] == top[:, None], -math.inf)
    return torch.logsumexp(log_p, -1)


def error_scores(mean: Tensor, variance: Tensor, ann_outputs: Tensor) -> dict[str, Tensor]:
    """Every score of the module docstring's table, from the GPs' posterior and the network's logits.

    :param mean: ``(N, H)`` GP posterior means.
    :param variance: ``(N, H)`` GP posterior variances.
    :param ann_outputs: ``(N, H)`` the network's logits.
    :returns: name → ``(N,)`` float64 score, higher meaning "more likely an error", in the order of
        :data:`SCORE_DESCRIPTIONS` (the two network baselines first).
    """
    mu, var = _check_mean_variance(mean, variance)
    check_tensor("ann_outputs", ann_outputs, shape=tuple(mean.shape), floating=True, finite=True)
    logits = ann_outputs.double().cpu()
    top2_logits = logits.topk(2, dim=1).values
    top2_mean, order = mu.topk(2, dim=1)
    top2_var = var.gather(1, order)
    predicted = logits.argmax(1)
    return {
        "max_softmax": 1.0 - torch.softmax(logits, 1).max(1).values,
        "logit_margin": -(top2_logits[:, 0] - top2_logits[:, 1]),
        "gp_mean_margin": -(top2_mean[:, 0] - top2_mean[:, 1]),
        "gp_standardized_margin": -(top2_mean[:, 0] - top2_mean[:, 1]) / top2_var.sum(1).sqrt(),
        "gp_argmax_change": argmax_change_log_probability(mu, var),
        "gp_variance": var[torch.arange(var.shape[0]), predicted],
    }


@dataclass(frozen=True)
class UncertaintyReport:
    """How well the GP's posterior (and the network's own baselines) flag the network's misclassifications.

    :ivar auroc: AUROC of the variance of the network's predicted head for misclassification
        (``None`` when the network makes no error, or only errors, on the data).
    :ivar num_errors: misclassified examples.
    :ivar num_samples: examples evaluated.
    :ivar mean_variance_errors: mean variance on the misclassified examples (``None`` if none).
    :ivar mean_variance_correct: mean variance on the correct ones (``None`` if none).
    :ivar variance: ``(N,)`` the predicted head's variance per example.
    :ivar errors: ``(N,)`` whether misclassified.
    :ivar heads: ``(N,)`` the network's predicted head (class) per example.
    :ivar detection: AUROC with bootstrap intervals of every score of :func:`error_scores`, with
        differences to max-softmax (``None`` when the AUROC is undefined).
    :ivar scores: name → ``(N,)`` each score per example.
    """

    auroc: float | None
    num_errors: int
    num_samples: int
    mean_variance_errors: float | None
    mean_variance_correct: float | None
    variance: Tensor
    errors: Tensor
    heads: Tensor
    detection: ErrorDetectionReport | None = None
    scores: dict[str, Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """The scalar fields and the detection report, for JSON."""
        return {
            "auroc": self.auroc,
            "num_errors": self.num_errors,
            "num_samples": self.num_samples,
            "mean_variance_errors": self.mean_variance_errors,
            "mean_variance_correct": self.mean_variance_correct,
            "detection": None if self.detection is None else self.detection.summary(),
        }


def misclassification_auroc(
    model: GPEXModel,
    ann: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 512,
    num_resamples: int = 2000,
    seed: int = 0,
) -> UncertaintyReport:
    """Score each labelled example with :func:`error_scores` and report each score's AUROC for the
    network's misclassifications, with stratified bootstrap 95 % intervals and the paired difference
    to max-softmax (``detection``). ``auroc`` is the GP variance of the head the network predicts.

    :param dataset: a labelled map-style dataset of ``(input, label, ...)``.
    :param num_resamples: bootstrap resamples.
    :param seed: seed of the bootstrap.
    :raises ValueError: if the dataset carries no labels.
    """
    mean, variance, ann_out, labels = predict_gp_and_ann(model, ann, dataset, batch_size)
    if labels is None:
        raise ValueError("dataset: expected (input, label) items; misclassification needs labels")
    heads = ann_out.argmax(1)
    errors = heads != labels.to(heads.device)
    scores = error_scores(mean, variance, ann_out)
    score = variance[torch.arange(variance.shape[0]), heads]  # the model's dtype
    defined = bool(errors.any()) and not bool(errors.all())
    detection = (
        error_detection_report(scores, errors, reference="max_softmax", num_resamples=num_resamples, seed=seed)
        if defined
        else None
    )
    return UncertaintyReport(
        auroc=auroc(score, errors),
        num_errors=int(errors.sum()),
        num_samples=int(errors.numel()),
        mean_variance_errors=float(score[errors].mean()) if bool(errors.any()) else None,
        mean_variance_correct=float(score[~errors].mean()) if bool((~errors).any()) else None,
        variance=score,
        errors=errors,
        heads=heads,
        detection=detection,
        scores=scores,
    )
