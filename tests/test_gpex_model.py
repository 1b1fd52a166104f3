"""GPEXModel / GPEXVariationalStrategy against dense float64 references and GPyTorch's ExactGP."""

from __future__ import annotations

import copy
import warnings

import gpytorch
import pytest
import torch
from torch import nn

from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.mlls import ANNMatchingELBO
from gpex_gpytorch.models.gpex_model import GPEXModel

IN = 5


def _setup(h: int, m: int, d: int, noise: float = 0.3, seed: int = 0, **model_kwargs: object):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(IN, 32), nn.Tanh(), nn.Linear(32, h * d)).double()
    kernel = CachedDeepKernel(net, m, h, d, embedding_dtype=torch.float64)
    inducing = torch.randn(m, IN, dtype=torch.float64)
    kernel.fill(inducing, progress=False)
    values = torch.randn(m, h, dtype=torch.float64)
    model = GPEXModel(kernel, values, noise=noise, **model_kwargs)
    return model, net, inducing, values


def _dense_posterior(u_train: torch.Tensor, values: torch.Tensor, u_test: torch.Tensor, noise: float):
    """Brute force Eq. 2 and Eq. 3 with the M×M solve. u_*: (H, *, D); values (M, H)."""
    m = u_train.shape[1]
    k = u_train @ u_train.mT + noise * torch.eye(m, dtype=torch.float64)
    k_xz = u_test @ u_train.mT
    mean = (k_xz @ torch.linalg.solve(k, values.T.unsqueeze(-1))).squeeze(-1)
    cov = u_test @ u_test.mT - k_xz @ torch.linalg.solve(k, k_xz.mT)
    return mean.T, cov


def _embed(net: nn.Module, x: torch.Tensor, h: int) -> torch.Tensor:
    return net(x).reshape(x.shape[0], h, -1).transpose(0, 1)


@pytest.mark.parametrize("h, m, d", [(1, 200, 4), (3, 200, 4), (3, 3, 6), (2, 1, 3)])
@pytest.mark.parametrize("n", [1, 9])
def test_posterior_equals_the_dense_m_by_m_solve(h: int, m: int, d: int, n: int) -> None:
    model, net, inducing, values = _setup(h, m, d)
    x = torch.randn(n, IN, dtype=torch.float64)
    output = model(x)
    with torch.no_grad():
        mean, cov = _dense_posterior(_embed(net, inducing, h), values, _embed(net, x, h), 0.3)
    assert output.mean.shape == output.variance.shape == (n, h)
    torch.testing.assert_close(output.mean, mean, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(output.variance, cov.diagonal(dim1=-2, dim2=-1).T, rtol=1e-5, atol=1e-8)
    # The full covariance per head (heads independent) too.
    per_head = output.lazy_covariance_matrix.to_dense().reshape(n, h, n, h).permute(1, 3, 0, 2)
    torch.testing.assert_close(per_head.diagonal(dim1=0, dim2=1).permute(2, 0, 1), cov, rtol=1e-5, atol=1e-8)


def test_posterior_equals_gpytorch_exact_gp_with_a_linear_kernel() -> None:
    h, m, d, noise = 2, 60, 5, 0.2
    model, net, inducing, values = _setup(h, m, d, noise=noise)
    x = torch.randn(8, IN, dtype=torch.float64)
    ours = model(x)
    with torch.no_grad():
        u_train, u_test = _embed(net, inducing, h), _embed(net, x, h)
    for head in range(h):

        class Exact(gpytorch.models.ExactGP):
            def __init__(self, likelihood: gpytorch.likelihoods.GaussianLikelihood, head: int) -> None:
                super().__init__(u_train[head], values[:, head], likelihood)
                self.mean_module = gpytorch.means.ZeroMean()
                self.covar_module = gpytorch.kernels.LinearKernel()

            def forward(self, z: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
                return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

        likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
        likelihood.noise = noise
        exact = Exact(likelihood, head).double()
        exact.covar_module.variance = 1.0
        exact.eval()
        with torch.no_grad(), gpytorch.settings.fast_computations(False, False, False):
            reference = exact(u_test[head])
        torch.testing.assert_close(ours.mean[:, head], reference.mean, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.variance[:, head], reference.variance, rtol=1e-5, atol=1e-7)


def test_fresh_rows_change_the_posterior_and_its_gradient_exactly_like_the_dense_model() -> None:
    h, m, d = 2, 30, 4
    model, net, inducing, values = _setup(h, m, d)
    with torch.no_grad():  # the network moves on: the cache is stale
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.tensor([2, 11, 29])
    x = torch.randn(5, IN, dtype=torch.float64)
    output = model(x, fresh_indices=idx, fresh_inputs=inducing[idx])
    loss = output.mean.square().sum() + output.variance.sum()
    ours = torch.autograd.grad(loss, list(net.parameters()))

    u_train = model.covar_module.embeddings.clone()
    u_train[:, idx] = _embed(net, inducing[idx], h)  # with gradient
    mean, cov = _dense_posterior(u_train, values, _embed(net, x, h), 0.3)
    torch.testing.assert_close(output.mean, mean, rtol=1e-6, atol=1e-9)
    reference = torch.autograd.grad(mean.square().sum() + cov.diagonal(dim1=-2, dim2=-1).sum(), list(net.parameters()))
    for got, expected in zip(ours, reference, strict=False):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("h, batch", [(1, 16), (4, 16), (4, 1)])
def test_a_training_iteration_gives_every_parameter_a_gradient(h: int, batch: int) -> None:
    """GPyTorch's VariationalTestCase pattern, for the GPEX strategy."""
    model, net, inducing, _ = _setup(h, 50, 3, learn_noise=True)
    likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=h).double()
    mll = ANNMatchingELBO(likelihood, model, num_data=50)
    x = torch.randn(batch, IN, dtype=torch.float64)
    idx = torch.arange(8)
    model.train()
    output = model(x, fresh_indices=idx, fresh_inputs=inducing[idx])
    loss = -mll(output, torch.randn(batch, h, dtype=torch.float64))
    loss.backward()
    for name, param in [*model.named_parameters(), *likelihood.named_parameters()]:
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    model.eval()
    with torch.no_grad():
        for n in (1, 3, 40):
            out = model(torch.randn(n, IN, dtype=torch.float64))
            assert out.mean.shape == (n, h) and out.variance.shape == (n, h)
            assert bool((out.variance > 0).all())


def test_eval_cache_is_reused_and_invalidated_by_a_refresh() -> None:
    model, net, inducing, values = _setup(2, 20, 3)
    x = torch.randn(4, IN, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        first = model(x).mean
        cached = model.variational_strategy._eval_cache
        assert cached is not None
        torch.testing.assert_close(model(x).mean, first)
        assert model.variational_strategy._eval_cache is cached
        for p in net.parameters():
            p.add_(0.1)
        model.covar_module.refresh(torch.arange(20), inducing)
        after = model(x).mean
        mean, _ = _dense_posterior(_embed(net, inducing, 2), values, _embed(net, x, 2), 0.3)
    torch.testing.assert_close(after, mean, rtol=1e-5, atol=1e-7)
    model.train()
    assert model.variational_strategy._eval_cache is None


def test_kl_divergence_equals_the_dense_kl() -> None:
    h, m, d, s = 2, 25, 3, 0.05
    model, net, inducing, values = _setup(h, m, d, variational_noise=s)
    with torch.no_grad():
        u = _embed(net, inducing, h)
    k = u @ u.mT + 0.3 * torch.eye(m, dtype=torch.float64)
    q = torch.distributions.MultivariateNormal(values.T, s * torch.eye(m, dtype=torch.float64))
    p = torch.distributions.MultivariateNormal(torch.zeros(h, m, dtype=torch.float64), k)
    expected = torch.distributions.kl_divergence(q, p).sum()
    torch.testing.assert_close(model.variational_strategy.kl_divergence().double(), expected, rtol=1e-5, atol=1e-6)
    # σ_φ² = 0: the point mass; the value is −log p(φ).
    point, *_ = _setup(h, m, d)
    torch.testing.assert_close(
        point.variational_strategy.kl_divergence().double(), -p.log_prob(values.T).sum(), rtol=1e-5, atol=1e-6
    )


def test_variational_noise_adds_the_spread_of_the_inducing_values() -> None:
    h, m, d, s = 2, 25, 3, 0.1
    model, net, inducing, values = _setup(h, m, d, variational_noise=s)
    x = torch.randn(6, IN, dtype=torch.float64)
    with torch.no_grad():
        u, ux = _embed(net, inducing, h), _embed(net, x, h)
        _, cov = _dense_posterior(u, values, ux, 0.3)
        k = u @ u.mT + 0.3 * torch.eye(m, dtype=torch.float64)
        w = torch.linalg.solve(k, u @ ux.mT)  # K⁻¹ K_Ũx, (H, M, N)
        expected = cov + s * w.mT @ w
        output = model(x)
    got = output.lazy_covariance_matrix.to_dense().reshape(6, h, 6, h).permute(1, 3, 0, 2).diagonal(dim1=0, dim2=1)
    torch.testing.assert_close(got.permute(2, 0, 1), expected, rtol=1e-5, atol=1e-8)


def test_posterior_weights_give_the_mean() -> None:
    model, net, _, _ = _setup(3, 40, 4)
    x = torch.randn(7, IN, dtype=torch.float64)
    w = model.variational_strategy.posterior_weights()
    with torch.no_grad():
        torch.testing.assert_close((_embed(net, x, 3) @ w.unsqueeze(-1)).squeeze(-1).T, model(x).mean)


def test_learnable_noise_state_dict_round_trip() -> None:
    model, *_ = _setup(2, 10, 3, noise=torch.tensor([0.5, 2.0]), learn_noise=True)
    torch.testing.assert_close(model.noise, torch.tensor([0.5, 2.0], dtype=torch.float64))
    other, *_ = _setup(2, 10, 3, noise=torch.ones(2), seed=1, learn_noise=True)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.noise, model.noise)
    x = torch.randn(3, IN, dtype=torch.float64)
    torch.testing.assert_close(other(x).mean, model(x).mean)


def test_bad_input_is_named_before_any_state_changes() -> None:
    model, net, inducing, values = _setup(2, 10, 3)
    kernel = model.covar_module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, IN, dtype=torch.float64)
    with pytest.raises(ValueError, match="inducing_values"):
        GPEXModel(kernel, torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="inducing_values"):
        GPEXModel(kernel, torch.zeros(10, 3))
    with pytest.raises(TypeError, match="inducing_values"):
        GPEXModel(kernel, torch.zeros(10, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="noise"):
        GPEXModel(kernel, values, noise=0.0)
    with pytest.raises(ValueError, match="noise"):
        GPEXModel(kernel, values, noise=torch.ones(3))
    with pytest.raises(ValueError, match="fresh_inputs"):
        model(x, fresh_indices=torch.tensor([0]))
    with pytest.raises(ValueError, match="fresh_indices"):
        model(x, fresh_inputs=inducing[:1])
    with pytest.raises(ValueError, match="fresh_indices"):
        model(x, fresh_indices=torch.tensor([10]), fresh_inputs=inducing[:1])
    with pytest.raises(ValueError, match="fresh_inputs"):
        model(x, fresh_indices=torch.tensor([1, 2]), fresh_inputs=inducing[:1])
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(0, IN, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        model(x.to("meta"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_prior_distribution_is_a_low_rank_plus_diagonal_mvn_consistent_with_the_kl() -> None:
    from gpex_gpytorch import LowRankPlusDiagonal

    model, net, inducing, values = _setup(2, 300, 3)
    prior = model.variational_strategy.prior_distribution
    assert isinstance(prior.lazy_covariance_matrix, LowRankPlusDiagonal)
    log_prob = prior.log_prob(values.T).sum()
    torch.testing.assert_close(
        -log_prob.double(), model.variational_strategy.kl_divergence().double(), rtol=1e-5, atol=1e-4
    )


def test_predict_returns_exact_variances_below_gpytorchs_floor_without_a_warning() -> None:
    # Features of size ~1e-4 make c(x) ~ 1e-8, below min_variance (1e-6 in float32), which
    # MultivariateNormal.variance would replace by 1e-6 with a "negative variance" warning.
    torch.manual_seed(0)
    h, m, d, noise = 2, 30, 3, 1.0
    net = nn.Sequential(nn.Linear(IN, h * d))
    with torch.no_grad():
        net[0].weight.mul_(1e-4)
        net[0].bias.zero_()
    kernel = CachedDeepKernel(net, m, h, d)
    inducing = torch.randn(m, IN)
    kernel.fill(inducing, progress=False)
    model = GPEXModel(kernel, torch.randn(m, h), noise=noise)
    x = torch.randn(7, IN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumericalWarning about "negative variance values"
        _, variance = model.predict(x)
    with torch.no_grad():
        reference = copy.deepcopy(net).double()
        u_train, u_test = _embed(reference, inducing.double(), h), _embed(reference, x.double(), h)
        _, cov = _dense_posterior(u_train, torch.zeros(m, h, dtype=torch.float64), u_test, noise)
    exact = cov.diagonal(dim1=-2, dim2=-1).T
    assert float(exact.max()) < 1e-7  # far below the floor
    torch.testing.assert_close(variance.double(), exact, rtol=1e-4, atol=0)


def test_predict_takes_integer_token_ids_for_a_network_that_embeds_them() -> None:
    # The dtype policy rejects floating data of another precision, not token ids.
    torch.manual_seed(0)
    h, m, d, vocabulary = 2, 12, 3, 20
    net = nn.Embedding(vocabulary, h * d)
    kernel = CachedDeepKernel(net, m, h, d)
    tokens = torch.randperm(vocabulary)[:m]
    kernel.fill(tokens, progress=False)
    values = torch.randn(m, h)
    model = GPEXModel(kernel, values, noise=0.5)
    queries = torch.tensor([3, 7, 7])
    mean, variance = model.predict(queries)
    with torch.no_grad():
        u_train = _embed(copy.deepcopy(net).double(), tokens, h)
        u_test = _embed(copy.deepcopy(net).double(), queries, h)
        expected_mean, cov = _dense_posterior(u_train, values.double(), u_test, 0.5)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(variance.double(), cov.diagonal(dim1=-2, dim2=-1).T, rtol=1e-4, atol=1e-6)
