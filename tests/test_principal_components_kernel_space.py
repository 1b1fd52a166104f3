"""Kernel-space PCA of GP heads, and the image grids along basis directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpex_gpytorch.explain.principal_components import (
    LayerActivations,
    LayerPCA,
    StreamingPCA,
    gpex_kernel_space_pca,
    kernel_space_grids,
    kernel_space_pca,
    pc_vs_neuron_grids,
)
from gpex_gpytorch.explain.principal_components.interpretability import nearest_along_direction
from gpex_gpytorch.explain.principal_components.kernel_space import posterior_mean_weights

D, N, M = 6, 200, 50


def planted_heads(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two heads. Embeddings f(x) = x @ A_l (x: inputs), with exact planted PCs; w_l aligned with one PC."""
    g = torch.Generator().manual_seed(seed)
    variances = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    inputs = torch.randn(N, D, generator=g, dtype=torch.float64)
    inputs = inputs - inputs.mean(0)
    inputs, _ = torch.linalg.qr(inputs)  # orthonormal zero-mean columns: exact sample covariance below
    maps, bases = [], []
    for _ in range(2):
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        maps.append(torch.diag(variances.mul(N - 1).sqrt()) @ q.T)
        bases.append(q)
    offset = torch.randn(2, D, generator=g, dtype=torch.float64)
    u = torch.randn(2, M, D, generator=g, dtype=torch.float64)
    noise = torch.tensor([0.5, 2.0], dtype=torch.float64)
    # target weights: head 0 along planted PC 2 (index 1), head 1 along PC 4 (index 3)
    targets = torch.stack([3.0 * bases[0][:, 1], -2.0 * bases[1][:, 3]])
    # v in the column space of U with (UᵀU + σ²I)⁻¹ Uᵀ v = target
    values = []
    for l in range(2):
        gram = u[l].T @ u[l]
        a = torch.linalg.solve(gram, (gram + noise[l] * torch.eye(D, dtype=torch.float64)) @ targets[l])
        values.append(u[l] @ a)
    return {
        "inputs": inputs,
        "maps": torch.stack(maps),
        "offset": offset,
        "bases": torch.stack(bases),
        "variances": variances,
        "u": u,
        "v": torch.stack(values, 1),
        "noise": noise,
        "targets": targets,
    }


def make_embed(p: dict[str, torch.Tensor]):
    return lambda x: torch.einsum("nd,hde->hne", x, p["maps"]) + p["offset"].unsqueeze(1)


def test_posterior_weights_match_the_m_space_formula() -> None:
    p = planted_heads()
    w = posterior_mean_weights(p["u"], p["v"], p["noise"])
    torch.testing.assert_close(w, p["targets"], atol=1e-8, rtol=1e-8)
    for l in range(2):
        u, v = p["u"][l], p["v"][:, l]
        m_space = u.T @ torch.linalg.solve(u @ u.T + p["noise"][l] * torch.eye(M, dtype=torch.float64), v)
        torch.testing.assert_close(w[l], m_space, atol=1e-8, rtol=1e-8)


def test_planted_kernel_space_and_posterior_mean_shares(tmp_path) -> None:
    p = planted_heads()
    embed = make_embed(p)
    result = kernel_space_pca(embed, p["inputs"], p["u"], p["v"], p["noise"], batch_size=64)
    for l, carrier in ((0, 1), (1, 3)):
        head = result.heads[l]
        torch.testing.assert_close(head.pca.eigenvalues, p["variances"], atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(
            (head.pca.components @ p["bases"][l]).abs(), torch.eye(D, dtype=torch.float64), atol=1e-7, rtol=0
        )
        expected = torch.zeros(D, dtype=torch.float64)
        expected[carrier] = 1.0
        torch.testing.assert_close(head.mean_variance_share, expected, atol=1e-8, rtol=0)
        torch.testing.assert_close(head.weight_share, expected, atol=1e-8, rtol=0)
        # the decomposition reproduces the posterior mean's mean and variance over the dataset
        mean = embed(p["inputs"])[l] @ p["targets"][l]
        assert head.mean_offset == pytest.approx(float(mean.mean()), abs=1e-8)
        assert head.mean_variance == pytest.approx(float(mean.var()), rel=1e-8)
        assert head.k_for(0.99) == carrier + 1 and head.k_for(0.8, "embedding") == 3
    summary = result.to_dict()
    assert summary["heads"][1]["k"]["0.8"] == {"embedding": 3, "posterior_mean": 4}
    assert result.embeddings is not None and result.embeddings.shape == (2, N, D)

    images = torch.rand(N, 1, 8, 8)
    record = kernel_space_grids(result, images, tmp_path / "kernel.png", num_pcs=3, num_points=5)
    assert (tmp_path / "kernel.png").read_bytes()[:4] == b"\x89PNG"
    assert record["heads"]["0"]["pcs"][0] == 1  # the PC carrying the mean comes first


class FakeKernel(nn.Module):
    def __init__(self, p: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.maps = nn.Parameter(p["maps"].clone())
        self.register_buffer("offset", p["offset"].clone())
        self.register_buffer("embeddings", p["u"].clone())
        self.register_buffer("inducing_values", p["v"].clone())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,hde->hne", x, self.maps) + self.offset.unsqueeze(1)


class FakeStrategy(nn.Module):
    def __init__(self, noise: torch.Tensor) -> None:
        super().__init__()
        self.noise = noise


class FakeGPEX(nn.Module):
    def __init__(self, p: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.covar_module = FakeKernel(p)
        self.variational_strategy = FakeStrategy(p["noise"])


def test_gpex_wrapper_reads_the_model_and_validates() -> None:
    p = planted_heads()
    model = FakeGPEX(p).train()
    result = gpex_kernel_space_pca(model, p["inputs"], keep_embeddings=False)
    assert model.training and result.embeddings is None
    torch.testing.assert_close(result.heads[0].weights, p["targets"][0], atol=1e-8, rtol=1e-8)
    with pytest.raises(TypeError, match="model"):
        gpex_kernel_space_pca(nn.Linear(2, 2), p["inputs"])
    with pytest.raises(ValueError, match="dataset"):
        kernel_space_pca(make_embed(p), p["inputs"][:0], p["u"], p["v"], 1.0)
    with pytest.raises(ValueError, match="noise"):
        kernel_space_pca(make_embed(p), p["inputs"], p["u"], p["v"], 0.0)
    with pytest.raises(ValueError, match="inducing_values"):
        kernel_space_pca(make_embed(p), p["inputs"], p["u"], p["v"].T, 1.0)
    with pytest.raises(ValueError, match="embed"):
        kernel_space_pca(lambda x: x, p["inputs"], p["u"], p["v"], 1.0)


def test_real_gpex_model_posterior_mean_is_reproduced() -> None:
    from gpex_gpytorch import kernels
    from gpex_gpytorch.models import gpex_model as models

    torch.manual_seed(0)
    h, d, m = 3, 4, 40
    network = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, h * d))
    kernel = kernels.CachedDeepKernel(network, num_inducing=m, num_heads=h, embedding_dim=d)
    inducing = torch.randn(m, 5)
    kernel.fill(inducing)
    model = models.GPEXModel(kernel, torch.randn(m, h), noise=0.7)
    x = torch.randn(120, 5)
    result = gpex_kernel_space_pca(model, x)
    mean, _ = model.predict(x)
    embeddings = result.embeddings
    assert embeddings is not None
    for head in result.heads:
        mu = embeddings[head.head].double() @ head.weights
        torch.testing.assert_close(mu.float(), mean[:, head.head].float(), atol=1e-4, rtol=1e-4)
        assert head.mean_offset == pytest.approx(float(mean[:, head.head].mean()), abs=1e-4)
        assert head.mean_variance == pytest.approx(float(mean[:, head.head].double().var()), rel=1e-3)


def test_grids_walk_along_the_direction(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(-3, 3, 61)
    rows = torch.stack([t, 0.05 * torch.randn(61, generator=g), 0.05 * torch.randn(61, generator=g)], 1)
    mean = rows.mean(0)
    picked = nearest_along_direction(rows, mean, torch.tensor([1.0, 0.0, 0.0]), num_points=7, quantile=0.0)
    assert picked.tolist() == [0, 10, 20, 30, 40, 50, 60]
    # rows grouped by input (conv positions): indices are inputs, distinct along a grid row
    grouped = nearest_along_direction(rows, mean, torch.tensor([1.0, 0.0, 0.0]), num_points=7, rows_per_input=61)
    assert grouped.tolist()[0] == 0

    accumulator = StreamingPCA().update(rows)
    layer = LayerPCA("x", "post", "positions", accumulator.result(), 1, (3,))
    images = torch.rand(61, 1, 8, 8)
    record = pc_vs_neuron_grids(
        LayerActivations(rows, 1, None, (3,)), layer, images, tmp_path / "grid.png", num_directions=2, num_points=5
    )
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert record["pc"]["index"] == [0, 1] and record["neuron"]["index"][0] == 0
    assert len(record["pc"]["inputs"]) == 2 and len(record["pc"]["inputs"][0]) == 5
    with pytest.raises(ValueError, match="num_points"):
        nearest_along_direction(rows, mean, torch.tensor([1.0, 0.0, 0.0]), num_points=0)
