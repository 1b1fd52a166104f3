"""Property tests: the GPEX posterior (Eq. 2 and 3) against the dense float64 M×M computation.

Random shapes (heads, M below and above D, rank-deficient embeddings), feature magnitudes 1e-6 …
1e6 with the noise relative to them, per-head noise, optional variational noise, embeddings in
float32 or float64 and statistics (``G = UᵀU``, ``b = Uᵀv``) in float32 or float64.

The tolerance is the stated one (``docs/numerics.md``): ``relative_error_bound`` of ``G`` in the
statistics dtype, plus that of the float64 reference itself, plus the rounding of the output
dtype; it bounds the variance's relative error and the mean's error relative to
``√(uᵀA⁻¹u)·‖v‖`` (the Cauchy–Schwarz bound of ``|uᵀA⁻¹Uᵀv|``). Where it exceeds
``DEFAULT_RTOL`` the model must say so with a :class:`NumericalPrecisionWarning` (recommending
float64), and may then add a jitter (``NumericalWarning``) or refuse with a ``ValueError`` naming
``noise`` when ``G + σ²I`` is not even numerically positive definite.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import gpytorch
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from linear_operator.utils.warnings import NumericalWarning
from torch import nn

from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models import GPEXModel
from gpex_gpytorch.utils import NumericalPrecisionWarning, check_precision, condition_bound, relative_error_bound
from gpex_gpytorch.utils.numerics import DEFAULT_RTOL

DTYPES = (torch.float32, torch.float64)
# log10 of the noise relative to the squared feature magnitude: float32 statistics reach far
# past the warning threshold (and G + σ²I that float32 cannot factorise), float64 ones κ ≈ 1e9.
LOG_NOISE = {torch.float32: (-6.0, 2.0), torch.float64: (-7.0, 2.0)}


@dataclass
class Problem:
    inducing: torch.Tensor  # shape: (M, H, D), in the embedding dtype (the identity kernel network's input)
    test: torch.Tensor  # shape: (N, H, D)
    values: torch.Tensor  # shape: (M, H)
    noise: torch.Tensor  # shape: (H,), float64
    variational_noise: float
    statistics_dtype: torch.dtype

    def model(self) -> GPEXModel:
        num_inducing, num_heads, dim = self.inducing.shape
        kernel = CachedDeepKernel(
            nn.Flatten(),  # identity on (N, H, D): the features are the inputs, so the test controls them
            num_inducing,
            num_heads,
            dim,
            embedding_dtype=self.inducing.dtype,
            statistics_dtype=self.statistics_dtype,
        )
        kernel.fill(self.inducing, progress=False)
        return GPEXModel(kernel, self.values, noise=self.noise, variational_noise=self.variational_noise)


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    emb_dtype, stats_dtype = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(DTYPES))
    heads, num_inducing, dim, num_test = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 8)), 3
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = 10 ** draw(st.floats(-6.0, 6.0))
    if draw(st.booleans()):
        inducing = torch.randn(num_inducing, heads, dim, generator=gen, dtype=torch.float64)
    else:  # rank deficient: every head's U has rank < min(M, D) (possibly 0)
        rank = draw(st.integers(0, min(num_inducing, dim)))
        left = torch.randn(heads, num_inducing, rank, generator=gen, dtype=torch.float64)
        inducing = (left @ torch.randn(heads, rank, dim, generator=gen, dtype=torch.float64)).transpose(0, 1)
    test = torch.randn(num_test, heads, dim, generator=gen, dtype=torch.float64)
    value_scale = 10 ** draw(st.floats(-3.0, 3.0))
    values = value_scale * torch.randn(num_inducing, heads, generator=gen)
    noise = scale**2 * 10 ** draw(st.floats(*LOG_NOISE[stats_dtype])) * (0.5 + torch.rand(heads, generator=gen))
    variational_noise = draw(st.sampled_from([0.0, 0.1 * value_scale**2]))
    return Problem(
        (scale * inducing).to(emb_dtype),
        (scale * test).to(emb_dtype),
        values,
        noise.to(torch.float64),
        variational_noise,
        stats_dtype,
    )


def _dense_posterior(model: GPEXModel, test: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 2 and 3 with the M×M matrix ``K = U Uᵀ + σ² I`` in float64, from the values the model stores.

    :returns: ``mean``, ``variance`` (Eq. 3), ``spread = ‖K⁻¹ U u‖² = uᵀA⁻¹GA⁻¹u`` (the variance of the
        mean under ``q_2``, weighted by ``σ_φ²``) and ``a_inv_quad = uᵀA⁻¹u = variance / σ²``.  # shape: (H, N)
    """
    kernel = model.covar_module
    u_ind = kernel.embeddings.to(torch.float64)  # shape: (H, M, D)
    v = kernel.inducing_values.to(torch.float64).T.unsqueeze(-1)  # shape: (H, M, 1)
    u = test.to(torch.float64).transpose(0, 1)  # shape: (H, N, D)
    noise = model.noise.to(torch.float64).expand(kernel.num_heads)
    eye = torch.eye(kernel.num_inducing, dtype=torch.float64)
    k_mm = u_ind @ u_ind.mT + noise.view(-1, 1, 1) * eye
    k_mx = u_ind @ u.mT  # shape: (H, M, N)
    k_inv_x = torch.linalg.solve(k_mm, k_mx)
    variance = (u * u).sum(-1) - (k_mx * k_inv_x).sum(-2)
    return {
        "mean": (k_mx.mT @ torch.linalg.solve(k_mm, v)).squeeze(-1),
        "variance": variance,
        "spread": k_inv_x.square().sum(-2),
        "a_inv_quad": variance / noise.unsqueeze(-1),
    }


def _bounds(model: GPEXModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(stated bound in the statistics dtype, that of the float64 reference), per head."""
    kernel = model.covar_module
    u_ind = kernel.embeddings.to(torch.float64)
    gram, noise = u_ind.mT @ u_ind, model.noise.to(torch.float64).expand(kernel.num_heads).unsqueeze(-1)
    ours = relative_error_bound(gram, noise, kernel.statistics_dtype, kernel.num_inducing)
    return ours, relative_error_bound(gram, noise, torch.float64, kernel.num_inducing)


@settings(max_examples=80, deadline=None)
@given(problem=problems())
def test_posterior_matches_dense_float64_or_warns(problem: Problem) -> None:
    model = problem.model()
    bound, reference_bound = _bounds(model)
    must_warn = bool((bound > DEFAULT_RTOL).any())
    # gpytorch clamps variances below 1e-6 (float32) / 1e-10 (float64); features of 1e-6 give far smaller ones
    with warnings.catch_warnings(record=True) as caught, gpytorch.settings.min_variance(0.0, 0.0, 0.0):
        warnings.simplefilter("always")
        try:
            mean, variance = model.predict(problem.test)
        except ValueError as error:  # only allowed once the warning has said that float32 is not enough
            assert must_warn and str(error).startswith("noise: ") and "not positive definite" in str(error), error
            mean = variance = None
    precision = [w for w in caught if issubclass(w.category, NumericalPrecisionWarning)]
    assert bool(precision) == must_warn, (bound, [str(w.message) for w in precision])
    # capacitance_cholesky's jitter, like the refusal, only where the precision warning came first
    jittered = [w for w in caught if "not numerically positive definite" in str(w.message)]
    assert not jittered or must_warn, [str(w.message) for w in jittered]
    if jittered:
        assert issubclass(jittered[0].category, NumericalWarning)
        event("jittered")
    if must_warn:
        assert "float64" in str(precision[0].message)
    event("warned" if must_warn else "no warning")
    event("refused (not positive definite)" if mean is None else "computed")
    if mean is None or bool((bound >= 1).any()):
        return  # no correct digit is promised
    ref = _dense_posterior(model, problem.test)
    out_eps = torch.finfo(problem.test.dtype).eps
    rel = (bound + reference_bound).unsqueeze(-1)  # shape: (H, 1)
    rounding = (problem.test.size(-1) + 2) * out_eps  # the D-term sum and cast in the output dtype
    # σ_φ² uᵀA⁻¹GA⁻¹u applies A⁻¹ twice (2 × the bound) and carries G's own rounding, ≤ bound·σ²·‖A⁻¹u‖²
    phi = problem.variational_noise
    var_ref = ref["variance"] + phi * ref["spread"]
    var_tol = rel * (ref["variance"] + phi * (3 * ref["spread"] + ref["a_inv_quad"])) + rounding * var_ref
    var_err = (variance.T.to(torch.float64) - var_ref).abs()
    assert bool((var_err <= var_tol).all()), (var_err / var_ref, var_tol / var_ref)
    values_norm = torch.linalg.vector_norm(model.covar_module.inducing_values.to(torch.float64), dim=0)
    mean_scale = ref["a_inv_quad"].sqrt() * values_norm.unsqueeze(-1)  # shape: (H, N)
    mean_err = (mean.T.to(torch.float64) - ref["mean"]).abs() / mean_scale
    assert bool((mean_err <= rel + rounding).all()), (mean_err, rel + rounding)


@pytest.mark.parametrize("statistics_dtype", DTYPES)
def test_the_warning_recommends_float64_and_names_the_fix(statistics_dtype: torch.dtype) -> None:
    """M = 2000 unit features, noise 1e-3: κ ≈ 3e7; float32 statistics cannot, float64 ones can."""
    gen = torch.Generator().manual_seed(0)
    inducing = torch.randn(2000, 2, 16, generator=gen)
    values = torch.randn(2000, 2, generator=gen)
    problem = Problem(inducing, inducing[:4], values, torch.tensor(1e-3), 0.0, statistics_dtype)
    model = problem.model()
    if statistics_dtype == torch.float32:
        with pytest.warns(NumericalPrecisionWarning, match=r"statistics_dtype=torch\.float64") as record:
            model.predict(problem.test)
        assert record[0].filename == __file__  # points at the caller's line, not the package's
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", NumericalPrecisionWarning)
            model.predict(problem.test)


# ---------------------------------------------------------------------- the check itself
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 30),
    dim=st.integers(1, 8),
    log_noise=st.floats(-8.0, 4.0),
    seed=st.integers(0, 2**16),
)
def test_condition_bound_is_an_upper_bound_within_sqrt_rank(rows: int, dim: int, log_noise: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    root = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    gram, noise = root.mT @ root, 10**log_noise
    kappa = float(1 + torch.linalg.eigvalsh(gram)[-1] / noise)  # the exact 2-norm condition number
    bound = float(condition_bound(gram, noise))
    assert kappa * (1 - 1e-12) <= bound <= 1 + (kappa - 1) * min(rows, dim) ** 0.5 * (1 + 1e-12)


def test_check_precision_refuses_bad_input_and_skips_non_finite_grams() -> None:
    gram = torch.eye(3).expand(2, 3, 3)
    with pytest.raises(ValueError, match="noise"):
        check_precision(gram, torch.ones(3, 1), torch.float32, 10)  # 3 noises for 2 matrices
    with pytest.raises(ValueError, match="num_rows"):
        check_precision(gram, 1.0, torch.float32, 0)
    with pytest.raises(ValueError, match="rtol"):
        check_precision(gram, 1.0, torch.float32, 10, rtol=0.0)
    with pytest.raises(TypeError, match="dtype"):
        check_precision(gram, 1.0, torch.int64, 10)
    with pytest.raises(ValueError, match="gram"):
        check_precision(torch.ones(3, 4), 1.0, torch.float32, 10)
    with pytest.raises(ValueError, match="noise"):  # only looked at on the slow path, where it matters
        check_precision(gram, torch.tensor([[1.0], [-1.0]]), torch.float32, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalPrecisionWarning)
        assert not check_precision(torch.full((3, 3), float("nan")), 1.0, torch.float32, 10)
        assert not check_precision(gram, 1.0, torch.float32, 10)
    with pytest.warns(NumericalPrecisionWarning, match="float32 cannot guarantee"):
        assert check_precision(1e6 * gram, 1.0, torch.float32, 10)
