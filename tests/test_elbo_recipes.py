"""The swap recipes of docs/usage/elbo.md, small and fast, with faithfulness thresholds.

The full settings (make_friedman1 with 500 inducing points; SV-DKL on all digits at 30/60/150 epochs)
are benchmarks/elbo_swap.py; these are their reduced versions with the same model code.
"""

from __future__ import annotations

import gpytorch
import pytest
import torch
from torch import nn

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.mlls import ANNMatchingELBO, ann_matching_swap


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# ------------------------------------------------------------------ SV-DKL classification swap
class _GPLayer(gpytorch.models.ApproximateGP):
    """GPyTorch's SV-DKL GP layer: one GP on a 1-D grid per feature."""

    def __init__(self, num_dim: int, grid_size: int = 32) -> None:
        batch_shape = torch.Size([num_dim])
        distribution = gpytorch.variational.CholeskyVariationalDistribution(grid_size, batch_shape=batch_shape)
        strategy = gpytorch.variational.IndependentMultitaskVariationalStrategy(
            gpytorch.variational.GridInterpolationVariationalStrategy(
                self, grid_size=grid_size, grid_bounds=[(-10.0, 10.0)], variational_distribution=distribution
            ),
            num_tasks=num_dim,
        )
        super().__init__(strategy)
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
        self.mean_module = gpytorch.means.ConstantMean()

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class _DKL(gpytorch.Module):
    def __init__(self, num_dim: int) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential(  # batch norm, as in the notebook's DenseNet
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(128, num_dim),
            nn.BatchNorm1d(num_dim),
        )
        self.scale_to_bounds = gpytorch.utils.grid.ScaleToBounds(-10.0, 10.0)
        self.gp_layer = _GPLayer(num_dim)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultitaskMultivariateNormal:
        features = self.scale_to_bounds(self.feature_extractor(x))
        return self.gp_layer(features.transpose(-1, -2).unsqueeze(-1))


@pytest.fixture(scope="module")
def digits_and_logits() -> dict[str, torch.Tensor]:
    """Digits and the logits of a small seeded CNN: the classifier to explain."""
    train, test = load_digits(seed=0)
    (x_train, y_train), (x_test, _) = train.tensors, test.tensors
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))
    optimizer = torch.optim.Adam(cnn.parameters(), lr=3e-3)
    for _ in range(100):
        loss = nn.functional.cross_entropy(cnn(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits_train, logits_test = cnn(x_train), cnn(x_test)
    centre, scale = logits_train.mean(0), logits_train.std(0)  # standardised logits (see docs/usage/elbo.md)
    return {
        "x_train": x_train,
        "x_test": x_test,
        "net_train": (logits_train - centre) / scale,
        "net_test": (logits_test - centre) / scale,
    }


@pytest.mark.slow
def test_the_sv_dkl_classification_swap_matches_the_cnns_logits(digits_and_logits: dict[str, torch.Tensor]) -> None:
    data = digits_and_logits
    torch.manual_seed(0)
    model = _DKL(num_dim=10)  # the swap, 1/4: one GP per logit
    mll, likelihood = ann_matching_swap(model.gp_layer, len(data["x_train"]), num_outputs=10)  # 2/4
    optimizer = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        model.train()
        for batch in torch.randperm(len(data["x_train"]), generator=generator).split(128):
            loss = -mll(model(data["x_train"][batch]), data["net_train"][batch])  # 3/4: targets are the logits
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(data["x_test"]).mean  # 4/4: the GP's mean is the explained logit
    pearson = [_pearson(logits[:, j], data["net_test"][:, j]) for j in range(10)]
    # Measured with this seed: mean 0.87, min 0.81 after 8 epochs (about 6 s); seeds 1 and 2: means 0.79 and
    # 0.85, minima 0.75 and 0.36 (variational_weight=0: 0.86 / 0.80 / 0.85, minima 0.79 / 0.55 / 0.69; with
    # detach_variance=False, the ELBO's own default: 0.76 and 0.46 at seed 0). The full recipe (SGD schedule,
    # 30 to 150 epochs, 10 seeds, benchmarks/elbo_swap.py) gives 0.79 to 0.97, see docs/usage/elbo.md.
    assert sum(pearson) / 10 > 0.8 and min(pearson) > 0.7, pearson


def test_the_classification_swap_names_each_mismatch() -> None:
    softmax = gpytorch.likelihoods.SoftmaxLikelihood(num_features=16, num_classes=10)
    with pytest.raises(ValueError, match=r"^model: .*returns 16 output\(s\).*mixing weights.*num_outputs=10"):
        ann_matching_swap(_GPLayer(16), 100, num_outputs=10, likelihood=softmax)
    with pytest.raises(ValueError, match=r"^num_outputs: .*num_classes=10.*num_outputs=16"):
        ann_matching_swap(_GPLayer(16), 100, num_outputs=16, likelihood=softmax)
    with pytest.raises(ValueError, match="num_outputs"):
        ann_matching_swap(_GPLayer(16), 100, num_outputs=0)
    mll, likelihood = ann_matching_swap(_GPLayer(4), 100, num_outputs=4)
    assert isinstance(likelihood, gpytorch.likelihoods.MultitaskGaussianLikelihood) and likelihood.num_tasks == 4
    assert isinstance(mll, ANNMatchingELBO) and mll.likelihood is likelihood
    assert mll.detach_variance and mll.variational_weight == 0.1  # the swap's defaults (docs/usage/elbo.md)
    assert ann_matching_swap(_GPLayer(4), 100, num_outputs=4, variational_weight=1.0)[0].variational_weight == 1.0


# ------------------------------------------------------------------ SVGP regression swap
class _SVGP(gpytorch.models.ApproximateGP):
    """GPyTorch's SVGP regression notebook model."""

    def __init__(self, inducing_points: torch.Tensor) -> None:
        distribution = gpytorch.variational.CholeskyVariationalDistribution(inducing_points.size(0))
        strategy = gpytorch.variational.VariationalStrategy(
            self, inducing_points, distribution, learn_inducing_locations=True
        )
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["default", "latent_uniform25"])
def test_the_svgp_regression_swap_matches_the_network_and_its_variance_tracks_the_error(setting: str) -> None:
    """``default``: the one-line swap, the notebook's likelihood kept; ``latent_uniform25``: the measured setting
    for a stock SVGP (docs/usage/elbo.md), Eq. 5 on the latent GP with a quarter of the residual's gradient
    weighted uniformly."""
    from scipy.stats import spearmanr
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=1000, noise=1.0, random_state=0)
    x = torch.as_tensor(x, dtype=torch.float32) * 2 - 1
    y = torch.as_tensor(y, dtype=torch.float32)
    y = (y - y.mean()) / y.std()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        loss = (net(x[:800]).squeeze(-1) - y[:800]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        g = net(x).squeeze(-1)
    torch.manual_seed(0)
    model = _SVGP(x[:100].clone())
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    # was: VariationalELBO(likelihood, model, num_data=800)
    if setting == "default":
        mll = ANNMatchingELBO(likelihood, model, num_data=800)
    else:
        mll = ANNMatchingELBO(None, model, num_data=800, uniform_weight=0.25)
    optimizer = torch.optim.Adam([*model.parameters(), *likelihood.parameters()], lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(120):
        for batch in torch.randperm(800, generator=generator).split(200):
            loss = -mll(model(x[batch]), g[batch])  # the network's outputs as targets
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        output = model(x[800:])
    pearson = _pearson(output.mean, g[800:])
    spearman = spearmanr(output.variance.numpy(), (output.mean - g[800:]).square().numpy()).statistic
    # Measured with this seed: default Pearson 0.974, Spearman 0.37, the likelihood's noise learnt from 0.693 to
    # 0.010; latent_uniform25 0.980 and 0.34 (no likelihood in the objective); VariationalELBO on the same
    # outputs: 0.979 and 0.12. The full notebook (6 seeds, 30 to 150 epochs) is in docs/usage/elbo.md.
    if setting == "default":
        assert pearson > 0.96 and spearman > 0.3, (pearson, spearman)
        assert float(likelihood.noise) < 0.05
    else:
        assert pearson > 0.975 and spearman > 0.3, (pearson, spearman)
