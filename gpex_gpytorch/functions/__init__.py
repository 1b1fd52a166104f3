"""Autograd functions behind the operators' exact algebra (one per module, as in ``linear_operator.functions``).

* :mod:`~gpex_gpytorch.functions.inv_quad_logdet`: ``InvQuadLogdet``, the inverse quadratic form and
  log-determinant of ``R Rᵀ + s I`` with a hand-written backward.
* :mod:`~gpex_gpytorch.functions.sqrt_pd`: ``SqrtPD``, the symmetric square root of a positive
  definite matrix whose backward tolerates repeated eigenvalues.

Internal: they are no part of the package's public API.
"""
