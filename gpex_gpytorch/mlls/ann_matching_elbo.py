"""The GP-matches-ANN evidence lower bound (GPEX, Eq. 5), a drop-in for ``VariationalELBO``."""

from __future__ import annotations

import math

import torch
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from gpytorch.likelihoods import (
    DirichletClassificationLikelihood,
    Likelihood,
    _GaussianLikelihoodBase,
    _MultitaskGaussianLikelihoodBase,
)
from gpytorch.mlls._approximate_mll import _ApproximateMarginalLogLikelihood
from gpytorch.models import ApproximateGP
from torch import Tensor

from ..utils import check_finite, check_tensor
from ..utils.validation import broadcasts_to

__all__ = ["ANNMatchingELBO", "CLASSIFIER_RECIPE", "check_ann_matching_likelihood", "model_num_outputs"]

CLASSIFIER_RECIPE = (
    "To explain a classifier, match its logits: one GP per logit (e.g. "
    "IndependentMultitaskVariationalStrategy(..., num_tasks=L), or num_dim=L GPs in an SV-DKL model) with "
    "MultitaskGaussianLikelihood(num_tasks=L), the network's (N, L) logits as targets, and the GP's mean as the "
    "explained logits at test time; gpex_gpytorch.mlls.ann_matching_swap builds this (docs/usage/elbo.md)."
)


def model_num_outputs(model: object) -> int | None:
    """Outputs per input of an approximate GP, read from its variational strategy.

    ``T`` for multitask strategies (``num_tasks``) and for :class:`~gpex_gpytorch.GPEXModel` (its heads),
    ``1`` for the single-output strategies of GPyTorch, ``None`` when it cannot be told before a call.
    """
    from gpytorch.variational import _VariationalStrategy

    from ..variational import GPEXVariationalStrategy

    strategy = getattr(model, "variational_strategy", None)
    if isinstance(strategy, GPEXVariationalStrategy):
        return strategy.kernel.num_heads
    num_tasks = getattr(strategy, "num_tasks", None)
    if isinstance(num_tasks, int):
        return num_tasks
    if isinstance(strategy, _VariationalStrategy) and not hasattr(strategy, "base_variational_strategy"):
        return 1
    return None


def check_ann_matching_likelihood(likelihood: object, num_outputs: int | None = None) -> None:
    """Raise unless ``likelihood`` is one ``ANNMatchingELBO`` can use with a GP of ``num_outputs`` outputs.

    Accepted: ``None`` (the latent posterior is the predictive), a Gaussian likelihood
    (``GaussianLikelihood``, ``FixedNoiseGaussianLikelihood``) for single-output GPs, a
    ``MultitaskGaussianLikelihood`` whose ``num_tasks`` is the GP's number of outputs.
    """
    if likelihood is None:
        return
    name = type(likelihood).__name__
    if isinstance(likelihood, DirichletClassificationLikelihood) or not isinstance(likelihood, _GaussianLikelihoodBase):
        raise TypeError(
            f"likelihood: ANNMatchingELBO matches a network's real-valued outputs with the GP's Gaussian "
            f"predictive, so it takes a Gaussian likelihood (GaussianLikelihood, MultitaskGaussianLikelihood) or "
            f"None; got {name}. {CLASSIFIER_RECIPE}"
        )
    if num_outputs is None:
        return
    multitask = isinstance(likelihood, _MultitaskGaussianLikelihoodBase)
    if multitask and likelihood.num_tasks != num_outputs:
        raise ValueError(
            f"likelihood: {name}(num_tasks={likelihood.num_tasks}) does not match the model, whose variational "
            f"strategy returns {num_outputs} output(s) per input: use num_tasks={num_outputs}"
        )
    if not multitask and num_outputs > 1:
        raise ValueError(
            f"likelihood: {name} takes single-output GPs, but the model returns {num_outputs} outputs per input: "
            f"use MultitaskGaussianLikelihood(num_tasks={num_outputs})"
        )


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

    With a Gaussian likelihood and the defaults (:math:`\sigma_g^2 = 0`, gradient through :math:`s^2`)
    this equals :class:`gpytorch.mlls.PredictiveLogLikelihood` applied to the network's outputs, value
    and gradients (``docs/usage/elbo.md`` compares the three objectives).

    Works with any approximate GP whose output is a (multitask) multivariate normal, e.g. an SVGP
    with :class:`~gpytorch.variational.VariationalStrategy`, or :class:`~gpex_gpytorch.GPEXModel`.
    The likelihood is checked at construction (and against the output at each call): a non-Gaussian
    likelihood, or a multitask one whose ``num_tasks`` is not the model's output count, raises with
    the remedy; to explain a classifier, match its logits (:func:`~gpex_gpytorch.mlls.ann_matching_swap`).

    :param likelihood: maps the latent GP to the predictive of the network's output: a
        ``GaussianLikelihood`` / ``FixedNoiseGaussianLikelihood`` (single-output GP) or a
        ``MultitaskGaussianLikelihood`` (one task per GP output). ``None`` uses the latent posterior
        itself (:math:`s^2 = c`).
    :param model: the approximate GP.
    :param num_data: number of training inputs (scales the KL term as in ``VariationalELBO``).
    :param beta: weight of the KL term.
    :param ann_noise: :math:`\sigma_g^2 \ge 0`, the variance of :math:`q_1`.
    :param detach_variance: stop gradients through :math:`s^2` (the original code's choice). The default
        (``False``) is the measured choice for stock SVGP regression: with ``True`` the likelihood's noise
        is never learnt and the latent variance carries no information about the GP's error. On the
        SV-DKL recipe ``True`` matched the network better (:func:`~gpex_gpytorch.mlls.ann_matching_swap`
        defaults to it, with ``variational_weight=0.1``); the table is in ``docs/usage/elbo.md``.
    :param variational_weight: :math:`w \in [0, 1]`, a share of ``VariationalELBO``'s data term (the
        likelihood-noise weighting of the error) in the data term:
        :math:`w\,\mathbb E_{q(f)}[\log p(g \mid f)] + (1 - w)\,(\text{Eq. 5 term})`. ``0`` (the
        default) is Eq. 5. It is a plain attribute, like ``beta``: a warm-up anneals it from 1 to 0 over
        the first steps by setting ``mll.variational_weight`` in the training loop (the objective keeps
        no count of its calls). Needs a likelihood when positive. Measured in ``docs/usage/elbo.md``.
    :param uniform_weight: :math:`\rho \in [0, 1]`, changes the gradient only (like ``detach_variance``):
        a share :math:`\rho` of the residual's gradient is weighted by one weight per output over the batch,
        :math:`1/\bar s^2` (:math:`\bar s^2` the batch's mean predictive variance), the rest by each input's
        :math:`1/s^2` as in Eq. 5. The mean then follows the error everywhere, as with ``VariationalELBO``'s
        uniform weight, while :math:`s^2` is still fitted to the residual. ``0`` (the default) is Eq. 5's
        gradient. With ``likelihood=None`` and ``0.25`` it is the measured setting for a stock SVGP
        (``docs/usage/elbo.md``).
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
        variational_weight: float = 0.0,
        uniform_weight: float = 0.0,
    ) -> None:
        if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
            raise ValueError(f"num_data: expected an integer >= 1, got {num_data!r}")
        if not (float(ann_noise) >= 0.0 and math.isfinite(float(ann_noise))):
            raise ValueError(f"ann_noise: expected a finite value >= 0, got {ann_noise}")
        if not isinstance(detach_variance, bool):
            raise TypeError(f"detach_variance: expected a bool, got {type(detach_variance).__name__}")
        if not (float(beta) >= 0.0 and math.isfinite(float(beta))):  # beta=inf made the ELBO -inf
            raise ValueError(f"beta: expected a finite value >= 0, got {beta}")
        self._check_variational_weight(variational_weight, likelihood)
        self._check_share("uniform_weight", uniform_weight)
        check_ann_matching_likelihood(likelihood, model_num_outputs(model))
        super().__init__(likelihood, model, num_data, beta=beta, combine_terms=combine_terms)
        self.ann_noise = float(ann_noise)
        self.detach_variance = detach_variance
        self.variational_weight = float(variational_weight)
        self.uniform_weight = float(uniform_weight)

    @staticmethod
    def _check_share(name: str, weight: object) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"{name}: expected a number in [0, 1], got {weight!r}")

    @classmethod
    def _check_variational_weight(cls, weight: object, likelihood: object) -> None:
        cls._check_share("variational_weight", weight)
        if float(weight) > 0 and likelihood is None:
            raise ValueError(
                "variational_weight: VariationalELBO's data term needs the likelihood's noise; pass a Gaussian "
                "likelihood, or variational_weight=0 with likelihood=None"
            )

    def forward(self, approximate_dist_f: MultivariateNormal, target: Tensor, **kwargs: object) -> Tensor:
        """
        :param approximate_dist_f: the model's output.
        :param target: the network's output: the shape of the output's mean, ``(N,)`` or ``(N, L)`` (the
            model's batch dimensions may be broadcast, the ``N`` inputs and ``L`` outputs may not).
        """
        if not isinstance(approximate_dist_f, MultivariateNormal):
            raise TypeError(f"output: expected a gpytorch MultivariateNormal, got {type(approximate_dist_f).__name__}")
        check_tensor("ann_output", target, floating=True)
        self._check_output_and_target(approximate_dist_f, target)
        check_finite("ann_output", target)
        if self.beta == 0:
            # Skip the KL computation entirely (it may be costly for stock strategies).
            log_likelihood = self._log_likelihood_term(approximate_dist_f, target, **kwargs)
            return log_likelihood.div(approximate_dist_f.event_shape[0])
        return super().forward(approximate_dist_f, target, **kwargs)

    def _check_output_and_target(self, output: MultivariateNormal, target: Tensor) -> None:
        multitask = isinstance(output, MultitaskMultivariateNormal)
        mean_shape = output.mean.shape
        num_outputs = mean_shape[-1] if multitask else 1
        if self.likelihood is not None:
            if isinstance(self.likelihood, _MultitaskGaussianLikelihoodBase) and not multitask:
                raise ValueError(
                    f"likelihood: {type(self.likelihood).__name__} needs a multitask output "
                    f"(MultitaskMultivariateNormal), but the model returned a single-output MultivariateNormal: "
                    f"use GaussianLikelihood, or give the model one GP per network output"
                )
            check_ann_matching_likelihood(self.likelihood, num_outputs if multitask else None)
            if multitask and not isinstance(self.likelihood, _MultitaskGaussianLikelihoodBase):
                raise ValueError(
                    f"likelihood: {type(self.likelihood).__name__} takes single-output GPs, but the model returned "
                    f"a MultitaskMultivariateNormal with {num_outputs} output(s) per input: use "
                    f"MultitaskGaussianLikelihood(num_tasks={num_outputs})"
                )
        # The event dimensions (data, and outputs for a multitask GP) must match exactly; only the
        # model's batch dimensions may broadcast (a network output per GP output, never recycled).
        event_dims = 2 if multitask else 1
        if target.dim() < event_dims:
            raise ValueError(
                f"ann_output: expected the network's outputs of shape {tuple(mean_shape[-event_dims:])} "
                f"(the output's mean is {tuple(mean_shape)}), got {tuple(target.shape)}"
            )
        if multitask and target.shape[-1] != num_outputs:
            raise ValueError(
                f"ann_output: the network has {target.shape[-1]} outputs per input but the GP has {num_outputs}: "
                f"one GP per network output is needed (e.g. num_tasks={target.shape[-1]}); got ann_output of shape "
                f"{tuple(target.shape)} for an output mean of shape {tuple(mean_shape)}"
            )
        if target.shape[-event_dims:] != mean_shape[-event_dims:] or not broadcasts_to(target.shape, mean_shape):
            hint = ""
            if not multitask and target.dim() >= 2 and target.shape[-2] == mean_shape[-1] and target.shape[-1] > 1:
                hint = (
                    f" (a network with {target.shape[-1]} outputs needs a multitask GP with one GP per output "
                    "and MultitaskGaussianLikelihood)"
                )
            raise ValueError(
                f"ann_output: expected a shape whose last {event_dims} dimension(s) are the output mean's "
                f"{tuple(mean_shape[-event_dims:])} (and whose others broadcast to {tuple(mean_shape[:-event_dims])}), "
                f"got {tuple(target.shape)}{hint}"
            )

    def _log_likelihood_term(self, approximate_dist_f: MultivariateNormal, target: Tensor, **kwargs: object) -> Tensor:
        predictive = approximate_dist_f if self.likelihood is None else self.likelihood(approximate_dist_f, **kwargs)
        mean, variance = predictive.mean, predictive.variance
        if self.detach_variance:
            variance = variance.detach()
        terms = -0.5 * (((mean - target).square() + self.ann_noise) / variance + torch.log(2 * math.pi * variance))
        if self.uniform_weight != 0.0:
            self._check_share("uniform_weight", self.uniform_weight)  # set as an attribute: checked at use
            # Zero in value; its gradient moves a share rho of the residual's weight from each input's 1/s^2
            # to the batch's 1/mean(s^2) (per output, over the data dimension), both weights held constant.
            held = variance.detach()
            held = held.mean(dim=-len(approximate_dist_f.event_shape), keepdim=True).reciprocal() - held.reciprocal()
            shift = (mean - target).square() * held
            terms = terms - 0.5 * self.uniform_weight * (shift - shift.detach())
        # Sum over the event dimensions (data, and tasks for multitask outputs): batch-shaped result.
        eq5 = terms.sum(dim=tuple(range(-len(approximate_dist_f.event_shape), 0)))
        weight = self.variational_weight
        if weight == 0.0:
            return eq5
        self._check_variational_weight(weight, self.likelihood)  # set as an attribute: checked at use
        # As in VariationalELBO: the likelihood's expected log density, summed over the data (its
        # multitask form has already summed the tasks).
        variational = self.likelihood.expected_log_prob(target, approximate_dist_f, **kwargs).sum(-1)
        return weight * variational + (1.0 - weight) * eq5
