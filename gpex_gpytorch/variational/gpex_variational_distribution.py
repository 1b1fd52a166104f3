"""The variational distribution of the inducing values of GPEX (Eq. 4, :math:`q_2`)."""

from __future__ import annotations

import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.variational import _VariationalDistribution
from linear_operator.operators import DiagLinearOperator
from torch import Tensor

from ..kernels import CachedDeepKernel
from ..utils import check_tensor

__all__ = ["GPEXVariationalDistribution"]


class GPEXVariationalDistribution(_VariationalDistribution):
    r""":math:`q_2(\tilde v_{m,l}) = \mathcal N(\varphi_{m,l}, \sigma_\varphi^2)`, independent over rows and heads.

    The means :math:`\varphi` are the inducing values held by the kernel's cache
    (:attr:`CachedDeepKernel.inducing_values`, the network's outputs on the inducing set), so the
    sufficient statistic :math:`U^\top \varphi` can be kept up to date as rows are refreshed. This
    object is a view onto them: it stores only :math:`\sigma_\varphi^2`.

    :param kernel: the cache whose inducing values are the means.
    :param variational_noise: :math:`\sigma_\varphi^2 \ge 0`. ``0`` (the default) is a point mass:
        the network's outputs are known exactly.
    """

    def __init__(self, kernel: CachedDeepKernel, variational_noise: float = 0.0) -> None:
        if not isinstance(kernel, CachedDeepKernel):
            raise TypeError(f"kernel: expected a CachedDeepKernel, got {type(kernel).__name__}")
        if not (float(variational_noise) >= 0.0 and torch.isfinite(torch.tensor(float(variational_noise)))):
            raise ValueError(f"variational_noise: expected a finite value >= 0, got {variational_noise}")
        super().__init__(kernel.num_inducing, batch_shape=torch.Size([kernel.num_heads]))
        # Not registered as a sub-module: the model owns the kernel (one copy in state_dict).
        object.__setattr__(self, "_kernel", kernel)
        self.register_buffer("variational_noise", torch.tensor(float(variational_noise), dtype=torch.float64))

    @property
    def device(self) -> torch.device:
        return self._kernel.embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self._kernel.inducing_values.dtype

    @property
    def variational_mean(self) -> Tensor:
        """:math:`\\varphi` as ``(H, M)``."""
        return self._kernel.inducing_values.T

    def forward(self) -> MultivariateNormal:
        """:math:`q_2` over all inducing values, batched over heads: event ``M``, batch ``(H,)``.

        Materialises ``(H, M)`` means; for inspection, not needed by training.
        """
        if not self._kernel.has_inducing_values:
            raise RuntimeError("the kernel has no inducing values yet: call set_inducing_values first")
        mean = self.variational_mean
        diag = self.variational_noise.to(mean.dtype).expand_as(mean)
        return MultivariateNormal(mean, DiagLinearOperator(diag))

    def initialize_variational_distribution(self, prior_dist: MultivariateNormal) -> None:
        """Set the means to ``prior_dist.mean`` (shape ``(H, M)``)."""
        mean = check_tensor(
            "prior_dist.mean", prior_dist.mean, shape=(self._kernel.num_heads, self._kernel.num_inducing)
        )
        self._kernel.set_inducing_values(mean.T)
