"""The GPEX approximate GP: one GP per output head of the network it explains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gpytorch
import torch
from gpytorch.distributions import MultitaskMultivariateNormal
from gpytorch.models import ApproximateGP
from torch import Tensor, nn

from ..kernels import CachedDeepKernel
from ..utils import check_input_data, module_dtype
from ..utils.modules import eval_mode
from ..variational import GPEXVariationalDistribution, GPEXVariationalStrategy

__all__ = ["GPEXModel"]


class GPEXModel(ApproximateGP):
    r"""An approximate GP whose heads explain the ``H`` outputs of a network.

    Head :math:`l` has kernel :math:`f_l(x)^\top f_l(x')` (the :class:`CachedDeepKernel`), inducing
    inputs :math:`\tilde x` (whose embeddings the kernel caches) and inducing values
    :math:`\tilde v_l` (the network's outputs on them).

    Example::

        kernel = CachedDeepKernel(kernel_net, num_inducing=M, num_heads=H, embedding_dim=D)
        kernel.fill(inducing_inputs)                       # U = f(x̃), the initial sweep
        model = GPEXModel(kernel, ann(inducing_inputs))    # V = g(x̃)
        output = model(x, fresh_indices=idx, fresh_inputs=inducing_inputs[idx])
        output.mean                                        # (N, H), Eq. 2
        output.variance                                    # (N, H), Eq. 3

    :param kernel: the cached deep kernel.
    :param inducing_values: ``(M, H)``, the network's outputs on the inducing inputs; ``None`` to set
        them later with ``load_state_dict`` (a model rebuilt from a checkpoint: no pass over the
        inducing set).
    :param noise: :math:`\sigma^2` of the posterior (float, or tensor of shape ``()`` / ``(H,)``).
    :param learn_noise: train :math:`\sigma^2` along with the kernel network.
    :param variational_noise: :math:`\sigma_\varphi^2` of :math:`q_2` (0: the outputs are exact).
    """

    def __init__(
        self,
        kernel: CachedDeepKernel,
        inducing_values: Tensor | None,
        noise: float | Tensor = 1.0,
        *,
        learn_noise: bool = False,
        variational_noise: float = 0.0,
    ) -> None:
        distribution = GPEXVariationalDistribution(kernel, variational_noise=variational_noise)
        strategy = GPEXVariationalStrategy(kernel, distribution, noise=noise, learn_noise=learn_noise)
        if inducing_values is not None:
            kernel.set_inducing_values(inducing_values)  # validated before any state is written
        super().__init__(strategy)

    def row_entries(self) -> dict[str, int]:
        """The keys of :meth:`state_dict` that hold one entry per inducing row, with the dimension of the rows.

        ``embeddings`` ``(H, M, D)`` and ``inducing_values`` ``(M, H)`` of the kernel: the entries a
        sharded checkpoint splits by rows.
        """
        kernel = self.covar_module
        prefix = next(f"{name}." for name, module in self.named_modules() if module is kernel)
        return {prefix + "embeddings": 1, prefix + "inducing_values": 0}

    @property
    def covar_module(self) -> CachedDeepKernel:
        """The kernel (owned by the variational strategy)."""
        return self.variational_strategy.kernel

    @property
    def noise(self) -> Tensor:
        """:math:`\\sigma^2` of the posterior, shape ``()`` or ``(H,)`` (the variational strategy's)."""
        return self.variational_strategy.noise

    @property
    def num_heads(self) -> int:
        """``H``, the number of GP heads."""
        return self.covar_module.num_heads

    def forward(self, x: Tensor) -> MultitaskMultivariateNormal:
        """The prior at ``x``: zero mean, covariance ``f_l(x) f_l(x)ᵀ`` per head."""
        return self.variational_strategy(x, prior=True)

    def __call__(  # type: ignore[override]
        self,
        inputs: Tensor,
        prior: bool = False,
        fresh_indices: Tensor | None = None,
        fresh_inputs: Tensor | None = None,
        **kwargs: object,
    ) -> MultitaskMultivariateNormal:
        """Posterior at ``inputs`` (``(N, H)`` mean and variance).

        :param fresh_indices: rows of the inducing cache to recompute *with gradient* for this call.
        :param fresh_inputs: the inducing inputs of those rows.
        """
        return self.variational_strategy(
            inputs, prior=prior, fresh_indices=fresh_indices, fresh_inputs=fresh_inputs, **kwargs
        )

    @torch.no_grad()
    def predict(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        r"""Posterior mean and variance, each ``(N, H)``, without gradient (eval-mode cache used).

        The variance is the exact diagonal :math:`c(x) = \sigma^2 u^\top A^{-1} u` (a sum of
        squares, never negative), not floored at ``gpytorch.settings.min_variance``: with small
        features or noise it can be far below ``1e-6`` and is returned as computed.

        :param inputs: a non-empty batch, finite, of the kernel network's dtype and the cache's
            device (checked with :func:`~gpex_gpytorch.utils.check_input_data`).
        """
        kernel = self.covar_module
        dtype = module_dtype(kernel.feature_extractor)
        check_input_data("inputs", inputs, dtype=dtype, device=kernel.embeddings.device, integer_ok=True)
        with eval_mode(self):
            try:
                output = self(inputs)
            except RuntimeError as error:
                if inputs.is_floating_point():
                    raise
                # Integer inputs are allowed for networks that take token ids; this one does not.
                raise TypeError(
                    f"inputs: the kernel network failed on inputs of dtype {inputs.dtype}; expected dtype {dtype} "
                    f"(the model's), convert with .to({dtype}) ({error})"
                ) from error
            # The root-based diagonal is exact and non-negative; gpytorch's floor would replace
            # small variances by min_variance (and warn of "negative variances").
            with gpytorch.settings.min_variance(0.0, 0.0, 0.0):
                variance = output.variance
            return output.mean, variance

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, **extras: Any) -> Path:
        """Write this fitted model to one file; see :func:`~gpex_gpytorch.distillation.save_explainer`
        (``extras``: ``inducing_inputs``, ``inducing_labels``, ``head_names``, ``feature_names``, ``metadata``)."""
        from ..distillation.saved_explainer import save_explainer  # the distillation layer owns the format

        return save_explainer(path, self, **extras)

    @classmethod
    def load(
        cls, path: str | Path, kernel_network: nn.Module | None = None, *, map_location: str | torch.device = "cpu"
    ) -> GPEXModel:
        """The model saved at ``path`` (see :func:`~gpex_gpytorch.distillation.load_explainer`), in eval mode.

        :param kernel_network: an instance of the saved kernel network's architecture; not needed
            when it is the distiller's default.
        """
        from ..distillation.saved_explainer import load_explainer

        return load_explainer(path, kernel_network, map_location=map_location).model
