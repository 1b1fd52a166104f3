"""The GP-matches-ANN evidence lower bound (GPEX, Eq. 5), a drop-in for ``VariationalELBO``."""

from __future__ import annotations

import math

import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.likelihoods import Likelihood
from gpytorch.mlls._approximate_mll import _ApproximateMarginalLogLikelihood
from gpytorch.models import ApproximateGP
from torch import Tensor

from ..utils import check_finite, check_tensor
from ..utils.validation import broadcasts_to

__all__ = ["ANNMatchingELBO"]


class ANNMatchingELBO(_ApproximateMarginalLogLikelihood):
    r"""Variational objective that makes a GP's posterior match a network's outputs.

    The network's output for input :math:`x` defines :math:`q_1(v \mid x) = \mathcal N(g(x), \sigma_g^2)`.
    Per input and head the data term is the expected log density of that output under the GP's
    predictive distribution :math:`\mathcal N(\mu(x), s^2(x))` (the likelihood's marginal of the
    model's output, so :math:`s^2 = c(x)` plus the likelihood's noise):

    .. math::
        \mathbb E_{q_1}\left[\log \mathcal N(v; \mu, s^2)\right]
        = -\frac12\left[\frac{(\mu - g)^2 + \sigma_g^2}{s^2} + \log(2\pi s^2)\right],

    which is Eq. 5 of the GPEX paper up to the entropy of :math:`q_1`, a constant (it keeps the
    objective finite at :math:`\sigma_g^2 = 0`). Like :class:`gpytorch.mlls.VariationalELBO`,
    the data term is summed over heads, averaged over the batch, and the strategy's KL divergence
    divided by ``num_data / beta`` is subtracted. The call is ``mll(output, ann_output)``.

    Unlike the original GPEX code's effective loss (:math:`\sigma_g^2 = 0` and the variance
    detached, i.e. a :math:`1/c`-weighted squared error), gradients flow through :math:`s^2`
    by default; ``detach_variance=True`` reproduces the original behaviour.

    Works with any approximate GP whose output is a (multitask) multivariate normal, e.g. an SVGP
    with :class:`~gpytorch.variational.VariationalStrategy`, or :class:`~gpex_gpytorch.GPEXModel`.

    :param likelihood: maps the latent GP to the predictive of the network's output; a
        ``GaussianLikelihood`` (single output) or ``MultitaskGaussianLikelihood``. ``None`` uses the
        latent posterior itself (:math:`s^2 = c`).
    :param model: the approximate GP.
    :param num_data: number of training inputs (scales the KL term as in ``VariationalELBO``).
    :param beta: weight of the KL term.
    :param ann_noise: :math:`\sigma_g^2 \ge 0`, the variance of :math:`q_1`.
    :param detach_variance: stop gradients through :math:`s^2` (the original code's choice).
    :param combine_terms: as in ``VariationalELBO``.
    """

    def __init__(
        self,
        likelihood: Likelihood | None,
        model: ApproximateGP,
        num_data: int,
        beta: float = 1.0,
        combine_terms: bool = True,
        *,
        ann_noise: float = 0.0,
        detach_variance: bool = False,
    ) -> None:
        if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
            raise ValueError(f"num_data: expected an integer >= 1, got {num_data!r}")
        if not (float(ann_noise) >= 0.0 and math.isfinite(float(ann_noise))):
            raise ValueError(f"ann_noise: expected a finite value >= 0, got {ann_noise}")
        if not (float(beta) >= 0.0 and math.isfinite(float(beta))):  # beta=inf made the ELBO -inf
            raise ValueError(f"beta: expected a finite value >= 0, got {beta}")
        super().__init__(likelihood, model, num_data, beta=beta, combine_terms=combine_terms)
        self.ann_noise = float(ann_noise)
        self.detach_variance = detach_variance

    def forward(self, approximate_dist_f: MultivariateNormal, target: Tensor, **kwargs: object) -> Tensor:
        """
        :param approximate_dist_f: the model's output.
        :param target: the network's output, of the shape of the output's mean (or broadcastable to it).
        """
        if not isinstance(approximate_dist_f, MultivariateNormal):
            raise TypeError(f"output: expected a gpytorch MultivariateNormal, got {type(approximate_dist_f).__name__}")
        check_tensor("ann_output", target, floating=True)
        mean_shape = approximate_dist_f.mean.shape
        if not broadcasts_to(target.shape, mean_shape):
            raise ValueError(
                f"ann_output: expected a shape broadcastable to the output's mean {tuple(mean_shape)}, "
                f"got {tuple(target.shape)}"
            )
        check_finite("ann_output", target)
        if self.beta == 0:
            # Skip the KL computation entirely (it may be costly for stock strategies).
            log_likelihood = self._log_likelihood_term(approximate_dist_f, target, **kwargs)
            return log_likelihood.div(approximate_dist_f.event_shape[0])
        return super().forward(approximate_dist_f, target, **kwargs)

    def _log_likelihood_term(self, approximate_dist_f: MultivariateNormal, target: Tensor, **kwargs: object) -> Tensor:
        predictive = approximate_dist_f if self.likelihood is None else self.likelihood(approximate_dist_f, **kwargs)
        mean, variance = predictive.mean, predictive.variance
        if self.detach_variance:
            variance = variance.detach()
        terms = -0.5 * (((mean - target).square() + self.ann_noise) / variance + torch.log(2 * math.pi * variance))
        # Sum over the event dimensions (data, and tasks for multitask outputs): batch-shaped result.
        return terms.sum(dim=tuple(range(-len(approximate_dist_f.event_shape), 0)))
