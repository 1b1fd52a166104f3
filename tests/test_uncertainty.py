"""Error-detection scores: AUROC and its bootstrap against brute force, the GP scores against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from gpex_gpytorch.explain import misclassification_auroc
from gpex_gpytorch.explain.error_detection import auroc, error_detection_report, weighted_auroc
from gpex_gpytorch.explain.uncertainty import (
    argmax_change_log_probability,
    error_scores,
    posterior_variance,
    variance_auroc,
)
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel


def test_variance_auroc_matches_definition() -> None:
    errors = torch.tensor([False, False, True, False, True, False])
    assert variance_auroc(torch.tensor([0.1, 0.2, 0.9, 0.3, 0.8, 0.4]), errors) == 1.0
    assert variance_auroc(torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.6]), errors) == 0.0
    scores = torch.tensor([0.1, 0.2, 0.5, 0.7, 0.65, 0.6])
    pairs = [(e, c) for e in scores[errors] for c in scores[~errors]]
    expected = sum(float(e > c) + 0.5 * float(e == c) for e, c in pairs) / len(pairs)
    assert variance_auroc(scores, errors) == pytest.approx(expected)
    assert variance_auroc(scores, torch.zeros(6, dtype=torch.bool)) is None
    with pytest.raises(ValueError, match="scores"):
        variance_auroc(scores[:3], errors)


def test_weighted_auroc_is_the_auroc_of_the_resampled_data() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40,), generator=generator).double()  # many ties
    errors = torch.rand(40, generator=generator) < 0.3
    weights = torch.randint(0, 4, (5, 40), generator=generator).double()
    weights[:, 0] = 1.0
    weights[:, errors.nonzero()[0]] = 2.0  # both classes present in every row
    got = weighted_auroc(scores, errors, weights)
    for row, w in enumerate(weights.long()):
        repeated = torch.arange(40).repeat_interleave(w)
        assert got[row].item() == pytest.approx(roc_auc_score(errors[repeated].numpy(), scores[repeated].numpy()))
    assert auroc(scores, errors) == pytest.approx(roc_auc_score(errors.numpy(), scores.numpy()))


def test_bootstrap_report_against_a_brute_force_bootstrap() -> None:
    generator = torch.Generator().manual_seed(1)
    errors = torch.rand(60, generator=generator) < 0.25
    good = errors.double() + torch.randn(60, generator=generator)  # informative
    noise = torch.randn(60, generator=generator)  # uninformative
    report = error_detection_report({"good": good, "noise": noise}, errors, num_resamples=120, seed=3, chunk_size=50)
    # Brute force: redraw the same stratified resamples and evaluate sklearn on the materialised data.
    brute_generator = torch.Generator().manual_seed(3)
    err_idx, cor_idx = errors.nonzero().flatten(), (~errors).nonzero().flatten()
    values = {"good": [], "noise": []}
    for start in range(0, 120, 50):
        num = min(50, 120 - start)
        draws_e = err_idx[torch.randint(err_idx.numel(), (num, err_idx.numel()), generator=brute_generator)]
        draws_c = cor_idx[torch.randint(cor_idx.numel(), (num, cor_idx.numel()), generator=brute_generator)]
        for b in range(num):
            idx = torch.cat([draws_e[b], draws_c[b]])
            for name, s in (("good", good), ("noise", noise)):
                values[name].append(roc_auc_score(errors[idx].numpy(), s[idx].numpy()))
    good_boot, noise_boot = np.array(values["good"]), np.array(values["noise"])
    assert report["good"].auroc == pytest.approx(roc_auc_score(errors.numpy(), good.numpy()))
    assert report["good"].ci_low == pytest.approx(np.quantile(good_boot, 0.025))
    assert report["good"].ci_high == pytest.approx(np.quantile(good_boot, 0.975))
    assert report["noise"].difference_ci_low == pytest.approx(np.quantile(noise_boot - good_boot, 0.025))
    assert report["noise"].difference_ci_high == pytest.approx(np.quantile(noise_boot - good_boot, 0.975))
    assert report.num_errors == int(errors.sum()) and report.reference == "good"
    assert report["good"].ci_low > 0.5  # informative score, clearly better than chance
    assert report["noise"].difference_ci_high < 0  # and the noise is clearly below it
    assert "below the reference" in report["noise"].verdict()
    flipped = error_detection_report({"down": -good}, errors, num_resamples=200)
    assert flipped["down"].worse_than_chance and "worse than chance" in flipped["down"].verdict()
    with pytest.raises(ValueError, match="reference"):
        error_detection_report({"good": good}, errors, reference="max_softmax")
    with pytest.raises(ValueError, match="errors: expected both"):
        error_detection_report({"good": good}, torch.zeros(60, dtype=torch.bool))


def _brute_log_change(mu: np.ndarray, var: np.ndarray) -> float:
    """log P(argmax changes) by adaptive quadrature of each "head j is largest" integral (scipy)."""
    top, parts = int(np.argmax(mu)), []
    for j in range(len(mu)):
        if j == top:
            continue

        others = np.arange(len(mu)) != j

        def log_f(z: float, j: int = j, others: np.ndarray = others) -> float:
            a = (mu[j] + math.sqrt(var[j]) * z - mu[others]) / np.sqrt(var[others])
            return float(-0.5 * z * z - 0.5 * math.log(2 * math.pi) + special.log_ndtr(a).sum())

        mode = optimize.minimize_scalar(lambda z: -log_f(z), bounds=(-1e4, 1e4), method="bounded").x
        peak = log_f(mode)
        value, _ = integrate.quad(
            lambda z, peak=peak: math.exp(log_f(z) - peak), mode - 60, mode + 60, points=[mode], limit=500
        )
        parts.append(peak + math.log(value))
    return float(np.logaddexp.reduce(parts))


def test_argmax_change_probability_against_quadrature_closed_form_and_sampling() -> None:
    rng = np.random.RandomState(0)
    for trial in range(6):
        h = (3, 5, 10)[trial % 3]
        mu = rng.randn(h) * (0.5, 4.0)[trial % 2]
        var = np.exp(rng.randn(h) * 0.7) * 0.05  # heads' variances within a few-fold of each other
        got = argmax_change_log_probability(torch.tensor(mu)[None], torch.tensor(var)[None])
        assert got.item() == pytest.approx(_brute_log_change(mu, var), rel=1e-7, abs=1e-9)
    # Two heads: P(change) = Φ(-(μ_t - μ_j) / sqrt(c_t + c_j)) exactly, also 40 standard deviations out.
    mu2 = torch.tensor([[0.0, 2.0], [3.0, 2.5], [10.0, -3.0]], dtype=torch.float64)
    var2 = torch.tensor([[0.3, 0.1], [0.2, 0.05], [0.06, 0.04]], dtype=torch.float64)
    gap = (mu2.max(1).values - mu2.min(1).values) / var2.sum(1).sqrt()
    torch.testing.assert_close(
        argmax_change_log_probability(mu2, var2), torch.special.log_ndtr(-gap), rtol=1e-9, atol=0
    )
    # Monte Carlo, four heads.
    mu4, var4 = torch.tensor([[1.0, 0.8, 0.2, -0.5]]), torch.tensor([[0.3, 0.1, 0.5, 0.2]])
    draws = mu4 + var4.sqrt() * torch.randn(400_000, 4, generator=torch.Generator().manual_seed(0))
    sampled = (draws.argmax(1) != 0).double().mean()
    assert math.exp(argmax_change_log_probability(mu4, var4).item()) == pytest.approx(float(sampled), abs=3e-3)
    with pytest.raises(ValueError, match="variance: expected positive"):
        argmax_change_log_probability(mu4, torch.zeros(1, 4))
    many_mu = torch.randn(9, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    many_var = torch.full((9, 4), 0.2, dtype=torch.float64)
    torch.testing.assert_close(
        argmax_change_log_probability(many_mu, many_var, chunk_size=2),
        argmax_change_log_probability(many_mu, many_var),
    )


def test_error_scores_match_their_definitions() -> None:
    generator = torch.Generator().manual_seed(2)
    mean = torch.randn(7, 4, generator=generator)
    variance = torch.rand(7, 4, generator=generator) + 0.1
    logits = torch.randn(7, 4, generator=generator)
    scores = error_scores(mean, variance, logits)
    for n in range(7):
        z, mu, c = logits[n].double(), mean[n].double(), variance[n].double()
        zs, order = z.sort(descending=True), mu.argsort(descending=True)
        a, b = int(order[0]), int(order[1])
        p = torch.exp(z) / torch.exp(z).sum()
        assert scores["max_softmax"][n].item() == pytest.approx(1 - p.max().item())
        assert scores["logit_margin"][n].item() == pytest.approx(-(zs.values[0] - zs.values[1]).item())
        assert scores["gp_mean_margin"][n].item() == pytest.approx(-(mu[a] - mu[b]).item())
        assert scores["gp_standardized_margin"][n].item() == pytest.approx(
            -((mu[a] - mu[b]) / (c[a] + c[b]).sqrt()).item()
        )
        assert scores["gp_variance"][n].item() == pytest.approx(c[int(z.argmax())].item())
    assert list(scores)[:2] == ["max_softmax", "logit_margin"]


class Fixed(nn.Module):
    """A 'network' whose logits are given per example (the first input column indexes them)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits[x[:, 0].long()]


def test_misclassification_auroc_reports_every_score() -> None:
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
    report = misclassification_auroc(model, Fixed(logits), TensorDataset(x, labels), num_resamples=200)
    variance = posterior_variance(model, x, batch_size=7)
    assert variance.shape == (n, h) and bool((variance >= 0).all())
    predicted = variance[torch.arange(n), logits.argmax(1)]
    torch.testing.assert_close(report.variance, predicted)
    assert report.num_errors == 6 and report.num_samples == n
    errors = torch.arange(n) < 6
    assert report.auroc == pytest.approx(variance_auroc(predicted, errors))
    assert report.detection is not None and report.detection.reference == "max_softmax"
    for score in report.detection.scores:
        assert score.auroc == pytest.approx(roc_auc_score(errors.numpy(), report.scores[score.name].numpy()))
        assert score.ci_low <= score.auroc <= score.ci_high
    assert set(report.summary()) >= {"auroc", "num_errors", "num_samples", "detection"}
    with pytest.raises(ValueError, match="labels"):
        misclassification_auroc(model, Fixed(logits), TensorDataset(x))
    clean = misclassification_auroc(model, Fixed(logits), TensorDataset(x, logits.argmax(1)))
    assert clean.auroc is None and clean.detection is None


def test_report_reads_an_auroc_below_chance_and_shows_the_baselines() -> None:
    from gpex_gpytorch.distillation import FaithfulnessReport
    from gpex_gpytorch.explain import render_report
    from gpex_gpytorch.explain.uncertainty import UncertaintyReport

    generator = torch.Generator().manual_seed(4)
    errors = torch.rand(200, generator=generator) < 0.3
    scores = {
        "max_softmax": errors.double() + 0.5 * torch.randn(200, generator=generator, dtype=torch.float64),
        "gp_variance": -errors.double() + 0.5 * torch.randn(200, generator=generator, dtype=torch.float64),
    }
    detection = error_detection_report(scores, errors, reference="max_softmax", num_resamples=200)
    assert detection["gp_variance"].auroc < 0.5
    report = UncertaintyReport(
        auroc=detection["gp_variance"].auroc,
        num_errors=int(errors.sum()),
        num_samples=200,
        mean_variance_errors=None,
        mean_variance_correct=None,
        variance=scores["gp_variance"],
        errors=errors,
        heads=torch.zeros(200, dtype=torch.long),
        detection=detection,
        scores=scores,
    )
    faith = FaithfulnessReport([0.99], 0.99, 0.99, [], None, None, None, 200)
    text = render_report(title="t", faithfulness=faith, uncertainty=report)
    section = text[text.index("id='uncertainty'") :]
    assert "1 - max softmax of the network (baseline)" in section
    assert f"{detection['gp_variance'].auroc:.3f}" in section and "worse than chance" in section
    assert "Below 0.5" in section and report.num_errors >= 50 and "Only " not in section
    few = UncertaintyReport(**{**report.__dict__, "num_errors": 7})
    assert "Only 7 errors" in render_report(title="t", faithfulness=faith, uncertainty=few)
