"""The GPEX variational strategy: the exact GP posterior given a cached, low-rank inducing set."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from gpytorch.constraints import Positive
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from gpytorch.module import Module
from linear_operator.operators import BlockInterleavedLinearOperator, LowRankRootLinearOperator
from torch import Tensor

from ..functions.capacitance_solve import CapacitanceSolve
from ..functions.posterior_mean import PosteriorMean
from ..kernels import CachedDeepKernel, InducingStatistics
from ..operators import LowRankPlusDiagonal
from ..utils import check_positive, check_precision, check_tensor
from ..utils.cholesky import capacitance_cholesky, factor_dtype
from .gpex_variational_distribution import GPEXVariationalDistribution

__all__ = ["GPEXVariationalStrategy"]


class _Factors(NamedTuple):
    """Everything the posterior needs from ``A = G + σ²I``, in the factor dtype (float64 unless stated)."""

    chol: Tensor  # shape: (H, D, D), lower Cholesky factor of A (capacitance_cholesky)
    weights: Tensor  # shape: (H, D), A⁻¹ b
    noise: Tensor  # shape: (H, 1), σ²


class GPEXVariationalStrategy(Module):
    r"""Posterior of one GP per head, each a Bayesian linear regression in the kernel space.

    For head :math:`l` with inducing embeddings :math:`U` (``M×D``), inducing values :math:`v`,
    noise :math:`\sigma^2`, :math:`G = U^\top U`, :math:`b = U^\top v` and :math:`A = G + \sigma^2 I_D`,
    the push-through identity gives, at :math:`u = f_l(x)`:

    .. math::
        \mu(x) = u^\top A^{-1} b, \qquad c(x, x') = \sigma^2\, u^\top A^{-1} u'

    which equal Eq. 2 and Eq. 3 of the GPEX paper (the :math:`M\times M` solve never happens).
    Only :math:`G` and :math:`b` are needed, and the kernel keeps them cached, so a call costs
    :math:`O(H (N + b) D^2 + H D^3)` for ``N`` test points and ``b`` fresh rows, whatever ``M``.

    With a variational noise :math:`\sigma_\varphi^2 > 0` the covariance gains
    :math:`\sigma_\varphi^2\, u^\top A^{-1} G A^{-1} u'` (the spread of the inducing values).

    In eval mode without fresh rows and without gradient, the Cholesky factor and
    :math:`A^{-1} b` are cached until the kernel's statistics or the noise change.

    :math:`A` is factorised (in float64 unless the statistics are in a wider dtype) by
    :func:`~gpex_gpytorch.utils.cholesky.capacitance_cholesky`, the factorisation
    :class:`~gpex_gpytorch.LowRankPlusDiagonal` uses too, with its one failure policy: a non-finite
    :math:`G` raises :class:`~gpex_gpytorch.utils.NonFiniteError`; an :math:`A` that is not
    numerically positive definite (the noise below :math:`G`'s rounding error, or a cached
    :math:`G` that has drifted) gets a jitter (``linear_operator.settings.cholesky_jitter``, at most
    ``cholesky_max_tries`` tries) and a :class:`~linear_operator.utils.warnings.NumericalWarning`,
    and a :class:`ValueError` naming ``noise`` when no jitter helps.

    Accuracy: against a dense float64 evaluation of Eq. 2 and 3, the variance's relative error and
    the mean's error relative to :math:`\sqrt{u^\top A^{-1} u}\,\|v\|` are within
    :func:`~gpex_gpytorch.utils.relative_error_bound` of ``G`` in the statistics dtype (plus the
    rounding of the output dtype); when that bound exceeds 1 % a
    :class:`~gpex_gpytorch.utils.NumericalPrecisionWarning` says so (``docs/numerics.md``).

    :param kernel: the cached deep kernel (registered here; the model exposes it as ``covar_module``).
    :param variational_distribution: :math:`q_2` of the inducing values.
    :param noise: :math:`\sigma^2 > 0`, a float or a tensor of shape ``()`` or ``(H,)``.
    :param learn_noise: make :math:`\sigma^2` a trainable parameter.
    """

    def __init__(
        self,
        kernel: CachedDeepKernel,
        variational_distribution: GPEXVariationalDistribution,
        noise: float | Tensor = 1.0,
        learn_noise: bool = False,
    ) -> None:
        if not isinstance(kernel, CachedDeepKernel):
            raise TypeError(f"kernel: expected a CachedDeepKernel, got {type(kernel).__name__}")
        if not isinstance(variational_distribution, GPEXVariationalDistribution):
            raise TypeError(
                "variational_distribution: expected a GPEXVariationalDistribution, "
                f"got {type(variational_distribution).__name__}"
            )
        noise_tensor = torch.as_tensor(noise, dtype=torch.float64).detach().clone()
        if noise_tensor.dim() > 1 or (noise_tensor.dim() == 1 and noise_tensor.shape[0] != kernel.num_heads):
            raise ValueError(
                f"noise: expected a float or a tensor of shape () or ({kernel.num_heads},), "
                f"got shape {tuple(noise_tensor.shape)}"
            )
        check_positive("noise", noise_tensor)
        super().__init__()
        self.kernel = kernel
        self._variational_distribution = variational_distribution
        self.register_parameter(
            "raw_noise", torch.nn.Parameter(torch.zeros_like(noise_tensor), requires_grad=learn_noise)
        )
        self.register_constraint("raw_noise", Positive())
        self.noise = noise_tensor
        self._eval_cache: tuple[tuple, _Factors] | None = None

    # ------------------------------------------------------------------ noise
    @property
    def noise(self) -> Tensor:
        """:math:`\\sigma^2`, shape ``()`` or ``(H,)``."""
        return self.raw_noise_constraint.transform(self.raw_noise)

    @noise.setter
    def noise(self, value: float | Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.raw_noise.dtype, device=self.raw_noise.device)
        check_positive("noise", value)
        with torch.no_grad():
            self.raw_noise.copy_(self.raw_noise_constraint.inverse_transform(value.expand_as(self.raw_noise)))

    def _head_noise(self) -> Tensor:
        return self.noise.to(self.kernel.statistics_dtype).expand(self.kernel.num_heads).unsqueeze(-1)

    # ------------------------------------------------------------------ GPyTorch strategy surface
    @property
    def variational_distribution(self) -> MultivariateNormal:
        return self._variational_distribution()

    @property
    def variational_params_initialized(self) -> Tensor:
        """A 0-dim tensor buffer, true once the inducing values are set (as in GPyTorch's strategies).

        It is the kernel's ``values_set`` buffer itself (one copy in ``state_dict``, so it cannot
        disagree with the kernel): ``.item()`` reads it, as GPyTorch's strategies do.
        """
        return self.kernel.values_set

    @property
    def prior_distribution(self) -> MultivariateNormal:
        r"""The prior of the inducing values: :math:`\mathcal N(0, U_l U_l^\top + \sigma^2 I)` per head.

        A :class:`~gpex_gpytorch.LowRankPlusDiagonal` covariance of batch ``(H,)``: exact
        ``log_prob``, ``rsample`` and ``variance`` at any ``M``.
        """
        # Reduced-precision storage (bfloat16/float16) is computed with in float32.
        root = self.kernel.embeddings.to(torch.promote_types(self.kernel.embeddings.dtype, torch.float32))
        noise = self._head_noise().to(root.dtype)
        return MultivariateNormal(root.new_zeros(root.shape[:-1]), LowRankPlusDiagonal(root, noise))

    def train(self, mode: bool = True) -> GPEXVariationalStrategy:
        self._eval_cache = None
        return super().train(mode)

    def _check_statistics(self, stats: InducingStatistics) -> InducingStatistics:
        if stats.cross is None:
            raise RuntimeError(
                "the kernel has no inducing values: call kernel.set_inducing_values(values) "
                "(GPEXModel does this from inducing_values)"
            )
        return stats

    def _factors(self, stats: InducingStatistics, *, weights: bool = True) -> _Factors:
        # σ² in the factor dtype directly (float64 also for float32 statistics: no float32 rounding of σ²)
        noise = self.noise.to(factor_dtype(stats.gram.dtype)).expand(self.kernel.num_heads)
        noise = noise.unsqueeze(-1)  # shape: (H, 1)
        # O(H D²): warns when G's rounding (statistics_dtype, M rows) can cost more than 1 % relative accuracy
        check_precision(
            stats.gram,
            noise,
            stats.gram.dtype,
            self.kernel.num_inducing,
            context="GPEXVariationalStrategy (posterior mean and variance)",
            remedy=(
                "Raise the noise σ² (GPEXModel(noise=...))."
                if stats.gram.dtype == torch.float64
                else "Keep the kernel's statistics in float64 (CachedDeepKernel(statistics_dtype=torch.float64), "
                "the default) or raise the noise σ²."
            ),
        )
        chol = capacitance_cholesky(
            stats.gram, noise, rounding=stats.gram.dtype, source="kernel.gram", context="GPEXVariationalStrategy"
        )
        if not weights:  # the KL needs L⁻¹b only, not A⁻¹b
            return _Factors(chol, chol.new_empty(0), noise)
        # A⁻¹b with a direct backward (one more solve) rather than back through the Cholesky factorisation:
        # with a detached variance the mean is all that needs a gradient.
        weights_ = CapacitanceSolve.apply(chol.detach(), stats.gram, stats.cross.to(chol.dtype), noise)
        return _Factors(chol, weights_, noise)

    def _cached_factors(self) -> _Factors:
        k = self.kernel
        key = (k.gram.data_ptr(), k.gram._version, k.cross._version, self.raw_noise._version, k.gram.device)
        if self._eval_cache is not None and self._eval_cache[0] == key:
            return self._eval_cache[1]
        factors = self._factors(self._check_statistics(k.statistics()))
        self._eval_cache = (key, factors)
        return factors

    def posterior_weights(self) -> Tensor:
        r""":math:`w_l = (G_l + \sigma^2 I)^{-1} U_l^\top v_l`, shape ``(H, D)``: :math:`\mu_l(x) = f_l(x)^\top w_l`."""
        with torch.no_grad():
            return self._factors(self._check_statistics(self.kernel.statistics())).weights

    def forward(
        self,
        x: Tensor,
        fresh_indices: Tensor | None = None,
        fresh_inputs: Tensor | None = None,
        **kwargs: object,
    ) -> MultitaskMultivariateNormal:
        device = self.kernel.embeddings.device
        check_tensor("x", x, device=device)
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"x: expected a non-empty batch of inputs, got shape {tuple(x.shape)}")
        if fresh_inputs is not None:
            check_tensor("fresh_inputs", fresh_inputs, device=device)
        use_cache = not self.training and fresh_indices is None and fresh_inputs is None and not torch.is_grad_enabled()
        if use_cache:
            factors = self._cached_factors()
            stats = None
        else:
            stats = self._check_statistics(self.kernel.statistics(fresh_indices, fresh_inputs))
            factors = self._factors(stats)
        features = self.kernel.embed(x)  # shape: (H, N, D)
        out_dtype = features.dtype
        # Head-major: uᵀ is then column-major, as the triangular solve wants it (no strided copy).
        u = features.to(factors.chol.dtype, memory_format=torch.contiguous_format)
        mean = PosteriorMean.apply(features, u.detach(), factors.weights)  # shape: (H, N)
        # σ L⁻¹uᵀ as (L/σ)⁻¹uᵀ: the scaling on the D×D factor, not on the (H, N, D) result.
        scaled_chol = factors.chol / factors.noise.sqrt().unsqueeze(-1)
        root = torch.linalg.solve_triangular(scaled_chol, u.mT, upper=False).mT  # shape: (H, N, D)
        phi_noise = self._variational_distribution.variational_noise
        if bool(phi_noise > 0):
            # σ_φ² uᵀA⁻¹GA⁻¹u': a second root, from G's eigendecomposition (G is only PSD).
            gram = stats.gram if stats is not None else self.kernel.gram
            evals, evecs = torch.linalg.eigh(gram.to(factors.chol.dtype))
            a_inv_u = torch.cholesky_solve(u.mT, factors.chol)  # shape: (H, D, N)
            extra = a_inv_u.mT @ (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2))  # shape: (H, N, D)
            root = torch.cat([root, phi_noise.to(extra.dtype).sqrt() * extra], dim=-1)
        # What MultitaskMultivariateNormal.from_batch_mvn(MultivariateNormal(mean, covar), task_dim=-1) returns,
        # without the intermediate batch MVN (its shape checks cost a third of this call at N = 256).
        covar = BlockInterleavedLinearOperator(LowRankRootLinearOperator(root.to(out_dtype)), block_dim=-3)
        return MultitaskMultivariateNormal(mean.to(out_dtype).mT, covar)  # shape: (N, H)

    def __call__(self, x: Tensor, prior: bool = False, **kwargs: object) -> MultitaskMultivariateNormal:
        if self.training:
            self._eval_cache = None
        if prior:
            return self._prior_at(x)
        return super().__call__(x, **kwargs)

    def _prior_at(self, x: Tensor) -> MultitaskMultivariateNormal:
        covar = self.kernel(x)
        mean = torch.zeros(covar.shape[:-1], dtype=covar.dtype, device=covar.device)
        return MultitaskMultivariateNormal.from_batch_mvn(MultivariateNormal(mean, covar), task_dim=-1)

    def kl_divergence(self) -> Tensor:
        r""":math:`\mathrm{KL}(q_2(\tilde v) \,\|\, p(\tilde v))`, summed over heads, in :math:`O(H D^3)`.

        :math:`p(\tilde v_l) = \mathcal N(0, K_l)`, :math:`K_l = U_l U_l^\top + \sigma^2 I_M`, evaluated at
        the cached embeddings (it carries no gradient to the kernel network; it does to a learnable
        noise). Everything reduces to :math:`D\times D` quantities:
        :math:`\log|K| = (M-D)\log\sigma^2 + \log|A|`,
        :math:`\mathrm{tr}\,K^{-1} = (M-D)/\sigma^2 + \mathrm{tr}\,A^{-1}`,
        :math:`v^\top K^{-1} v = (v^\top v - b^\top A^{-1} b)/\sigma^2`.
        With :math:`\sigma_\varphi^2 = 0` (a point mass) the divergent entropy of :math:`q_2` is
        dropped and the value is :math:`-\log p(\varphi)`.
        """
        if not (self.raw_noise.requires_grad or self._variational_distribution.variational_noise.requires_grad):
            # Nothing it depends on is trained (the statistics are buffers): no graph to build.
            with torch.no_grad():
                return self._kl_divergence()
        return self._kl_divergence()

    def _kl_divergence(self) -> Tensor:
        stats = self._check_statistics(self.kernel.statistics())
        # Its own factorisation: forward's is of G with the fresh rows (another matrix), and the cached
        # G changes on every refresh, so a version-keyed cache would miss at every training step. It
        # costs O(H D³), ≈ 0.5 ms of a 25 ms step (benchmarks/step_overhead.py, M = 1e5, H = 10, D = 64).
        factors = self._factors(stats, weights=False)
        m, d = self.kernel.num_inducing, self.kernel.embedding_dim
        noise = factors.noise.squeeze(-1)  # shape: (H,)
        logdet_a = 2 * factors.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        cross = stats.cross.to(factors.chol.dtype).unsqueeze(-1)  # shape: (H, D, 1)
        half_solve = torch.linalg.solve_triangular(factors.chol, cross, upper=False)
        quad = (self.kernel.values_sq.to(noise.dtype) - half_solve.square().sum((-2, -1))) / noise
        logdet_k = (m - d) * noise.log() + logdet_a
        neg_log_prior = 0.5 * (quad + logdet_k + m * math.log(2 * math.pi))
        s = self._variational_distribution.variational_noise.to(noise.dtype)
        if bool(s > 0):
            trace_a_inv = torch.cholesky_inverse(factors.chol).diagonal(dim1=-2, dim2=-1).sum(-1)
            trace_k_inv = (m - d) / noise + trace_a_inv
            entropy = 0.5 * m * (1 + math.log(2 * math.pi) + s.log())
            neg_log_prior = neg_log_prior + 0.5 * s * trace_k_inv - entropy
        return neg_log_prior.sum().to(torch.get_default_dtype())
