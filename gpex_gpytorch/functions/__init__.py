"""Autograd functions behind the operators' exact algebra (one per module, as in ``linear_operator.functions``).

* :mod:`~gpex_gpytorch.functions.gram_delta`: ``GramDelta``, the change of ``G = UᵀU`` and ``b = Uᵀv``
  when rows of ``U`` are replaced, in one batched product forward and backward.
* :mod:`~gpex_gpytorch.functions.capacitance_solve`: ``CapacitanceSolve``, ``(G + s I)⁻¹ b`` from a given
  Cholesky factor, with a backward that needs one more solve (not the Cholesky backward).
* :mod:`~gpex_gpytorch.functions.posterior_mean`: ``PosteriorMean``, ``μ = u w`` with its feature
  gradient written once, in the features' dtype.
* :mod:`~gpex_gpytorch.functions.inv_quad_logdet`: ``InvQuadLogdet``, the inverse quadratic form and
  log-determinant of ``R Rᵀ + s I`` with a hand-written backward.
* :mod:`~gpex_gpytorch.functions.sqrt_pd`: ``SqrtPD``, the symmetric square root of a positive
  definite matrix whose backward tolerates repeated eigenvalues.

Internal: they are no part of the package's public API.
"""
