"""Similarity maps sum back to the kernel similarity and localise a planted patch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpex_gpytorch.explain import (
    PooledSpatialKernelNetwork,
    nearest_neighbours,
    neighbour_similarity_maps,
    similarity_maps,
)
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel

H, D = 3, 4


def _model(network: nn.Module, inducing: torch.Tensor) -> GPEXModel:
    kernel = CachedDeepKernel(network, inducing.shape[0], H, D)
    kernel.fill(inducing, progress=False)
    return GPEXModel(kernel, torch.randn(inducing.shape[0], H))


def _random_cnn() -> PooledSpatialKernelNetwork:
    backbone = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2, padding=1))
    return PooledSpatialKernelNetwork(backbone, channels=5, num_heads=H, embedding_dim=D)


def test_maps_sum_to_kernel_similarity() -> None:
    torch.manual_seed(0)
    inducing = torch.randn(40, 1, 6, 6)
    model = _model(_random_cnn(), inducing)
    x = torch.randn(5, 1, 6, 6)
    neighbours = nearest_neighbours(model, x, k=7)
    maps = neighbour_similarity_maps(model, x, inducing, neighbours)
    assert maps.input_maps.shape == maps.neighbour_maps.shape == (5, 7, 3, 3)
    torch.testing.assert_close(maps.input_maps.sum((-2, -1)), maps.similarities, atol=1e-10, rtol=0)
    torch.testing.assert_close(maps.neighbour_maps.sum((-2, -1)), maps.similarities, atol=1e-10, rtol=0)
    # ... and that similarity is the kernel's own, k_l(x, x̃) = f_l(x)ᵀ f_l(x̃), to 1e-5.
    with torch.no_grad():
        dense = model.covar_module(x, inducing).to_dense()  # shape: (H, N, M)
    expected = dense[neighbours.heads[:, None], torch.arange(5)[:, None], neighbours.indices]
    assert (maps.input_maps.sum((-2, -1)) - expected.double()).abs().max() < 1e-5
    assert (maps.neighbour_maps.sum((-2, -1)) - neighbours.kernel_values.double()).abs().max() < 1e-5


def _planted(n: int, corners: list[tuple[int, int]], generator: torch.Generator) -> torch.Tensor:
    images = torch.rand(n, 1, 8, 8, generator=generator) * 0.3  # faint background
    for i, (r, c) in enumerate(corners):
        images[i, 0, r : r + 2, c : c + 2] = 1.0
    return images


def test_maps_localise_a_planted_patch() -> None:
    # By construction only patch pixels (> 0.5) excite the features, so each map's mass must lie
    # on the patch of its own image, wherever that patch was planted.
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    detector = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        detector.weight.fill_(1.0)
        detector.bias.fill_(-0.5)
    network = PooledSpatialKernelNetwork(nn.Sequential(detector, nn.ReLU()), 1, H, D)
    with torch.no_grad():
        network.head.bias.zero_()  # a bias would spread a constant over every position
    corners = [(r, c) for r in range(0, 7, 2) for c in range(0, 7, 3)]
    inducing = _planted(len(corners), corners, generator)
    model = _model(network, inducing)
    test_corners = [(1, 5), (6, 0), (3, 3)]
    x = _planted(3, test_corners, generator)
    k = 4
    neighbours = nearest_neighbours(model, x, k=k, heads=1)
    maps = neighbour_similarity_maps(model, x, inducing, neighbours)
    for i, (r, c) in enumerate(test_corners):
        on_patch = torch.zeros(8, 8, dtype=torch.bool)
        on_patch[r : r + 2, c : c + 2] = True
        for j in range(k):
            assert torch.all(maps.input_maps[i, j][~on_patch] == 0)
            torch.testing.assert_close(maps.input_maps[i, j][on_patch].sum(), maps.similarities[i, j])
            rn, cn = corners[int(neighbours.indices[i, j])]
            on_neighbour_patch = torch.zeros(8, 8, dtype=torch.bool)
            on_neighbour_patch[rn : rn + 2, cn : cn + 2] = True
            assert torch.all(maps.neighbour_maps[i, j][~on_neighbour_patch] == 0)
            assert maps.neighbour_maps[i, j][on_neighbour_patch].abs().min() > 0


def test_bad_inputs() -> None:
    torch.manual_seed(0)
    inducing = torch.randn(10, 1, 6, 6)
    model = _model(_random_cnn(), inducing)
    x = torch.randn(2, 1, 6, 6)
    with pytest.raises(ValueError, match="neighbour_inputs"):
        similarity_maps(model, x, inducing[:3], heads=0)
    with pytest.raises(ValueError, match="heads"):
        similarity_maps(model, x, inducing[:6].reshape(2, 3, 1, 6, 6), heads=H)
    flat = _model(nn.Sequential(nn.Flatten(), nn.Linear(36, H * D)), inducing)
    with pytest.raises(TypeError, match="spatial_features"):
        similarity_maps(flat, x, inducing[:6].reshape(2, 3, 1, 6, 6), heads=0)

    class NotPooled(PooledSpatialKernelNetwork):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.spatial_features(x).flatten(2).sum(-1)  # a sum, not the mean

    wrong = _model(NotPooled(nn.Conv2d(1, 5, 3), 5, H, D), inducing)
    with pytest.raises(ValueError, match="not the mean over positions"):
        similarity_maps(wrong, x, inducing[:6].reshape(2, 3, 1, 6, 6), heads=0)
    with pytest.raises(ValueError, match="k: expected"):
        nearest_neighbours(model, x, k=11)


def test_maps_relative_to_a_baseline_sum_to_the_similarity_minus_the_offset() -> None:
    torch.manual_seed(0)
    inducing = torch.randn(30, 1, 6, 6)
    model = _model(_random_cnn(), inducing)
    x = torch.randn(4, 1, 6, 6)
    blank = torch.zeros(1, 6, 6)
    neighbours = nearest_neighbours(model, x, k=3)
    plain = neighbour_similarity_maps(model, x, inducing, neighbours)
    maps = neighbour_similarity_maps(model, x, inducing, neighbours, baseline=blank)
    with torch.no_grad():
        dense_b = model.covar_module(blank[None], inducing).to_dense().double()  # shape: (H, 1, M)
        dense_x = model.covar_module(x, blank[None]).to_dense().double()  # shape: (H, N, 1)
    expected_input = dense_b[neighbours.heads[:, None], 0, neighbours.indices]
    expected_neighbour = dense_x[neighbours.heads, torch.arange(4), 0][:, None].expand(4, 3)
    assert (maps.input_offsets - expected_input).abs().max() < 1e-5
    assert (maps.neighbour_offsets - expected_neighbour).abs().max() < 1e-5
    total = maps.similarities
    torch.testing.assert_close(maps.input_maps.sum((-2, -1)) + maps.input_offsets, total, atol=1e-10, rtol=0)
    torch.testing.assert_close(maps.neighbour_maps.sum((-2, -1)) + maps.neighbour_offsets, total, atol=1e-10, rtol=0)
    torch.testing.assert_close(maps.similarities, plain.similarities)
    assert plain.input_offsets.eq(0).all() and plain.neighbour_offsets.eq(0).all()
    assert not torch.allclose(maps.input_maps, plain.input_maps)  # the baseline's per-position terms are gone
    with pytest.raises(ValueError, match="baseline"):
        neighbour_similarity_maps(model, x, inducing, neighbours, baseline=torch.zeros(6, 6))
