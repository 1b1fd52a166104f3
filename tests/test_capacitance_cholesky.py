"""capacitance_cholesky: the one factorisation of ``G + noise·I`` and its one failure policy.

The operator (``LowRankPlusDiagonal``) and the posterior (``GPEXVariationalStrategy``) both factorise
through it, so on the same ``G`` they jitter, warn and refuse alike; the jitter honours
``linear_operator.settings.cholesky_jitter`` / ``cholesky_max_tries`` as ``psd_safe_cholesky`` does.
References are dense float64 Cholesky factors of ``G + (noise + jitter)·I``.
"""

from __future__ import annotations

import re
import warnings

import linear_operator
import pytest
import torch
from linear_operator.utils.warnings import NumericalWarning
from torch import nn

from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models import GPEXModel
from gpex_gpytorch.operators import LowRankPlusDiagonal
from gpex_gpytorch.utils import NonFiniteError
from gpex_gpytorch.utils.cholesky import capacitance_cholesky

F64 = torch.float64


def _indefinite_gram(smallest: float, scale: float = 1.0, dim: int = 3, seed: int = 0) -> torch.Tensor:
    """``scale · Q diag(3, 1, …, smallest) Qᵀ`` in float64: symmetric, one eigenvalue ``scale·smallest``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    evals = torch.cat([torch.tensor([3.0], dtype=F64), torch.ones(dim - 2, dtype=F64), torch.tensor([smallest])])
    gram = scale * (q * evals) @ q.mT
    return 0.5 * (gram + gram.mT)


def _reference(gram: torch.Tensor, shift: float) -> torch.Tensor:
    eye = torch.eye(gram.size(-1), dtype=F64)
    return torch.linalg.cholesky(gram.to(F64) + shift * eye)


def _jitter_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, NumericalWarning)]


# ---------------------------------------------------------------------------- the settings are honoured


@pytest.mark.parametrize(
    ("rounding", "expected_jitter"),
    [(torch.float64, 1e-3), (torch.float32, 1e-2)],  # double_value for float64 G, float_value for float32
)
def test_the_jitter_is_linear_operators_cholesky_jitter_setting(rounding: torch.dtype, expected_jitter: float) -> None:
    gram, noise = _indefinite_gram(-1e-5).to(rounding), 1e-9
    assert bool(torch.linalg.cholesky_ex(gram.to(F64) + noise * torch.eye(3, dtype=F64)).info > 0)  # premise
    with (
        linear_operator.settings.cholesky_jitter(float_value=1e-2, double_value=1e-3),
        pytest.warns(NumericalWarning, match=rf"added a jitter of {expected_jitter:.1e}") as record,
    ):
        chol = capacitance_cholesky(gram, torch.tensor([noise], dtype=rounding), rounding=rounding)
    assert chol.dtype == F64  # the factor dtype: float64 also for a float32 G
    torch.testing.assert_close(chol, _reference(gram, noise + expected_jitter), rtol=1e-12, atol=1e-14)
    assert "not numerically positive definite" in str(record[0].message)


def test_the_ladder_multiplies_by_ten_up_to_cholesky_max_tries() -> None:
    gram, noise = _indefinite_gram(-5e-3), 1e-9  # 1e-3 is not enough, 1e-2 is
    with linear_operator.settings.cholesky_jitter(double_value=1e-3):
        with pytest.warns(NumericalWarning, match=r"added a jitter of 1\.0e-02"):
            chol = capacitance_cholesky(gram, torch.tensor([noise], dtype=F64))
        torch.testing.assert_close(chol, _reference(gram, noise + 1e-2), rtol=1e-12, atol=1e-14)
        with (
            linear_operator.settings.cholesky_max_tries(1),
            pytest.raises(ValueError, match=r"^noise: .*jitter of 1\.0e-03 \(1 tries.*recompute_statistics\(\)"),
        ):
            capacitance_cholesky(gram, torch.tensor([noise], dtype=F64))


def test_the_rounding_error_scale_wins_over_a_smaller_setting() -> None:
    # diag(G) ~ 3e8: eps·D·max diag ≈ 2e-7 exceeds the default double jitter (1e-8).
    gram, noise = _indefinite_gram(-1e-16, scale=1e8), 1e-12
    scale = float(gram.diagonal().abs().max())
    expected = torch.finfo(F64).eps * 3 * scale
    assert expected > linear_operator.settings.cholesky_jitter.value(F64)
    with pytest.warns(NumericalWarning, match=rf"added a jitter of {expected:.1e}"):
        chol = capacitance_cholesky(gram, torch.tensor([noise], dtype=F64))
    torch.testing.assert_close(chol, _reference(gram, noise + expected), rtol=1e-12, atol=0.0)


def test_only_the_failing_batch_entries_are_jittered() -> None:
    good, bad = _indefinite_gram(0.5), _indefinite_gram(-5e-6, seed=1)
    noise = torch.tensor([[1e-9], [1e-9]], dtype=F64)
    with pytest.warns(NumericalWarning, match=r"added a jitter of 1\.0e-05"):
        with (
            linear_operator.settings.cholesky_jitter(double_value=1e-8),
            linear_operator.settings.cholesky_max_tries(4),
        ):
            chol = capacitance_cholesky(torch.stack([good, bad]), noise)
    torch.testing.assert_close(chol[0], _reference(good, 1e-9), rtol=0.0, atol=0.0)
    # 1e-8 … 1e-6 fail on the -5e-6 eigenvalue, 1e-5 passes
    torch.testing.assert_close(chol[1], _reference(bad, 1e-9 + 1e-5), rtol=1e-9, atol=0.0)


def test_a_positive_definite_matrix_is_factorised_silently_and_differentiably() -> None:
    gram = _indefinite_gram(0.1).requires_grad_(True)
    noise = torch.tensor([0.3], dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chol = capacitance_cholesky(gram, noise)
    torch.testing.assert_close(chol, _reference(gram.detach(), 0.3), rtol=1e-14, atol=1e-14)
    torch.autograd.gradcheck(lambda g, s: capacitance_cholesky(0.5 * (g + g.mT), s), (gram, noise))


def test_a_non_finite_gram_raises_non_finite_error_naming_the_source() -> None:
    gram = _indefinite_gram(0.1)
    gram[0, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^root: expected finite values, got NaN or inf \(ctx: G is not finite"):
        capacitance_cholesky(gram, torch.tensor([1.0], dtype=F64), source="root", context="ctx")


def test_a_non_positive_noise_is_named() -> None:
    with pytest.raises(ValueError, match=r"^noise: expected finite values > 0, got \[-1\.0\]"):
        capacitance_cholesky(torch.eye(2, dtype=F64), torch.tensor([-1.0], dtype=F64))


# ---------------------------------------------------------------------------- the strategy uses it


def _model(inducing: torch.Tensor, noise: float) -> GPEXModel:
    """A float64 GPEX model whose inducing embeddings are ``inducing`` (M, H, D) (identity kernel network)."""
    num_inducing, heads, dim = inducing.shape
    kernel = CachedDeepKernel(nn.Flatten(), num_inducing, heads, dim, embedding_dtype=F64, statistics_dtype=F64)
    kernel.fill(inducing, progress=False)
    values = torch.linspace(-1.0, 1.0, num_inducing * heads, dtype=F64).reshape(num_inducing, heads)
    return GPEXModel(kernel, values, noise=noise)


def test_the_posterior_jitters_a_drifted_gram_by_the_setting() -> None:
    torch.manual_seed(0)
    model = _model(torch.randn(6, 1, 3, dtype=F64), noise=1e-6)
    kernel, strategy = model.covar_module, model.variational_strategy
    gram = _indefinite_gram(-1e-4)  # a cached running sum that drifted to an indefinite G
    kernel.gram.copy_(gram.unsqueeze(0))
    noise = float(model.noise)
    with (
        linear_operator.settings.cholesky_jitter(double_value=1e-3),
        pytest.warns(NumericalWarning, match=r"^GPEXVariationalStrategy: .*added a jitter of 1\.0e-03"),
    ):
        weights = strategy.posterior_weights()
    cap = gram + (noise + 1e-3) * torch.eye(3, dtype=F64)
    expected = torch.linalg.solve(cap, kernel.cross[0])
    torch.testing.assert_close(weights[0], expected, rtol=1e-10, atol=1e-12)


def test_the_posterior_names_a_non_finite_gram() -> None:
    model = _model(torch.randn(6, 1, 3, dtype=F64), noise=0.1)
    model.covar_module.gram[0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^kernel\.gram: expected finite values, got NaN or inf"):
        model.variational_strategy.kl_divergence()


# ---------------------------------------------------------------------------- operator and strategy agree


def _same_gram_on_both_paths() -> tuple[LowRankPlusDiagonal, GPEXModel]:
    # Two equal columns: G = [[18, 18], [18, 18]] exactly, singular; with noise 1e-20 (below G's
    # rounding) LAPACK's pivot comes out negative, so G + noise·I is numerically indefinite.
    inducing = torch.full((2, 1, 2), 3.0, dtype=F64)
    model = _model(inducing, noise=1e-20)
    kernel = model.covar_module
    op = LowRankPlusDiagonal(kernel.embeddings, model.noise.reshape(1, 1))
    assert torch.equal(kernel.gram, op.root.mT @ op.root)  # premise: the very same G and noise
    cap = kernel.gram + model.noise * torch.eye(2, dtype=F64)
    assert bool(torch.linalg.cholesky_ex(cap).info.any())  # premise: not numerically positive definite
    return op, model


def _body(message: str, context: str) -> str:
    """``message`` without the caller's name (the only part that may differ between the two paths)."""
    assert context in message, (context, message)
    return message.replace(context, "<caller>", 1)


def test_operator_and_strategy_warn_alike_on_the_same_indefinite_gram() -> None:
    op, model = _same_gram_on_both_paths()
    rhs = torch.ones(1, 2, 1, dtype=F64)
    with warnings.catch_warnings(record=True) as from_operator:
        warnings.simplefilter("always")
        quad, logdet = op.inv_quad_logdet(rhs, logdet=True)
    with warnings.catch_warnings(record=True) as from_strategy:
        warnings.simplefilter("always")
        kl = model.variational_strategy.kl_divergence()
    ours, theirs = _jitter_warnings(from_operator), _jitter_warnings(from_strategy)
    assert len(ours) == 1 and len(theirs) == 1, (ours, theirs)
    assert _body(ours[0], "LowRankPlusDiagonal") == _body(theirs[0], "GPEXVariationalStrategy")
    assert re.search(r"added a jitter of 1\.0e-08", ours[0])
    # and both computed with that jitter: logdet of G + (noise + 1e-8) I, eigenvalues 36 + s and s
    shift = float(model.noise) + 1e-8
    expected_logdet = torch.log(torch.tensor(36.0 + shift, dtype=F64)) + torch.log(torch.tensor(shift, dtype=F64))
    torch.testing.assert_close(logdet[0], expected_logdet, rtol=1e-7, atol=0.0)
    assert torch.isfinite(quad).all() and torch.isfinite(kl)


def test_operator_and_strategy_refuse_alike_when_no_jitter_is_allowed() -> None:
    op, model = _same_gram_on_both_paths()
    messages = []
    with linear_operator.settings.cholesky_max_tries(0), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the precision warning that precedes the refusal
        for call, context in (
            (lambda: op.inv_quad_logdet(torch.ones(1, 2, 1, dtype=F64), logdet=True), "LowRankPlusDiagonal"),
            (lambda: op.solve(torch.ones(1, 2, 1, dtype=F64)), "LowRankPlusDiagonal"),
            (model.variational_strategy.kl_divergence, "GPEXVariationalStrategy"),
            (model.variational_strategy.posterior_weights, "GPEXVariationalStrategy"),
        ):
            with pytest.raises(ValueError, match=r"^noise: .*not positive definite") as error:
                call()
            messages.append(_body(str(error.value), context))
    assert len(set(messages)) == 1, messages
    assert "kernel.recompute_statistics()" in messages[0] and "Raise the noise" in messages[0]
