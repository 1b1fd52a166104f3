"""The deletion test of similarity maps equals a brute-force loop, and finds a planted patch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gpex_gpytorch.explain import PooledSpatialKernelNetwork, nearest_neighbours, neighbour_similarity_maps
from gpex_gpytorch.explain.map_deletion import (
    deletion_curves,
    gradient_input_scores,
    ink_first,
    map_pixel_scores,
    random_ink_scores,
)
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel

H, D = 3, 4


def _model(network: nn.Module, inducing: torch.Tensor) -> GPEXModel:
    kernel = CachedDeepKernel(network, inducing.shape[0], H, D)
    kernel.fill(inducing, progress=False)
    return GPEXModel(kernel, torch.randn(inducing.shape[0], H))


def _tiny() -> tuple[GPEXModel, nn.Module]:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 6, 1), nn.ReLU())
    network = PooledSpatialKernelNetwork(backbone, channels=6, num_heads=H, embedding_dim=D)
    with torch.no_grad():  # positive head weights: similarities of the test pairs are positive
        network.head.weight.abs_()
    return _model(network, torch.rand(6, 2, 4, 5)), network


def test_deletion_curves_equal_a_brute_force_loop() -> None:
    model, network = _tiny()
    generator = torch.Generator().manual_seed(1)
    x, refs = torch.rand(3, 2, 4, 5, generator=generator), torch.rand(3, 2, 4, 5, generator=generator)
    scores = torch.randint(0, 4, (3, 4, 5), generator=generator).double()  # ties broken by pixel index
    heads = torch.tensor([2, 0, 1])
    background = torch.tensor([0.25, -1.0])[:, None, None]  # per channel
    fractions = (0.0, 0.1, 0.25, 0.6, 1.0)
    curves = deletion_curves(model, x, refs, heads, scores, fractions=fractions, background=background, batch_size=4)
    with torch.no_grad():
        for i in range(3):
            order = sorted(range(20), key=lambda p, i=i: (-float(scores[i].flatten()[p]), p))
            f_ref = network(refs[i : i + 1]).reshape(H, D)[heads[i]].double()
            for j, q in enumerate(fractions):
                copy = x[i].clone()
                for p in order[: math.floor(q * 20 + 0.5)]:
                    copy[:, p // 5, p % 5] = background[:, 0, 0]
                f = network(copy[None]).reshape(H, D)[heads[i]].double()
                assert curves.similarities[i, j].item() == pytest.approx(float(f @ f_ref), rel=1e-5)
            rel = [curves.similarities[i, j].item() / curves.similarities[i, 0].item() for j in range(5)]
            area = sum((fractions[j + 1] - fractions[j]) * (rel[j] + rel[j + 1]) / 2 for j in range(4))
            assert curves.area[i].item() == pytest.approx(area, rel=1e-9)
    assert curves.counts.tolist() == [0, 2, 5, 12, 20]
    with pytest.raises(ValueError, match="fractions"):
        deletion_curves(model, x, refs, heads, scores, fractions=(0.0, 0.5, 0.3))
    with pytest.raises(ValueError, match="pixel_scores"):
        deletion_curves(model, x, refs, heads, scores[:, :2])
    with pytest.raises(TypeError, match="heads"):
        deletion_curves(model, x, refs, heads.float(), scores)
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.zero_()
    with pytest.raises(ValueError, match="non-positive similarity"):  # k = 0: no drop to measure
        deletion_curves(model, x, refs, heads, scores)


def test_gradient_input_and_random_ink_scores() -> None:
    model, network = _tiny()
    generator = torch.Generator().manual_seed(2)
    x, refs = torch.rand(3, 2, 4, 5, generator=generator), torch.rand(3, 2, 4, 5, generator=generator)
    heads = torch.tensor([1, 1, 0])
    got = gradient_input_scores(model, x, refs, heads, background=0.5)
    torch.testing.assert_close(gradient_input_scores(model, x, refs, heads, background=0.5, batch_size=2), got)
    for i in range(3):  # one pair at a time, through the network itself
        xi = x[i : i + 1].clone().requires_grad_(True)
        with torch.no_grad():
            f_ref = network(refs[i : i + 1]).reshape(H, D)[heads[i]]
        (network(xi).reshape(H, D)[heads[i]] @ f_ref).backward()
        torch.testing.assert_close(got[i], (xi.grad[0] * (x[i] - 0.5)).sum(0))
    images = torch.zeros(2, 1, 4, 4)
    images[0, 0, 1:3, 1:3] = 1.0
    images[1, 0, 0, :] = 0.5
    a = random_ink_scores(images, torch.Generator().manual_seed(0))
    b = random_ink_scores(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    ink = images[:, 0] != 0
    for i in range(2):  # every ink pixel is deleted before any background pixel
        assert a[i][ink[i]].min() > a[i][~ink[i]].max()
    ranking = torch.randn(2, 4, 4, generator=generator)
    first = ink_first(ranking, images)
    for i in range(2):  # ink ahead of background; within each group, the ranking's own order
        assert first[i][ink[i]].min() > first[i][~ink[i]].max()
        for group in (ink[i], ~ink[i]):
            assert torch.equal(first[i][group].argsort(), ranking[i][group].argsort())
    maps = torch.arange(8.0).reshape(2, 2, 2)
    up = map_pixel_scores(maps, (4, 4))
    assert up.shape == (2, 4, 4) and up[1, 2:, :2].eq(6.0).all() and up[0, :2, 2:].eq(1.0).all()
    with pytest.raises(ValueError, match="maps"):
        map_pixel_scores(maps, (5, 4))


def test_map_deletion_finds_a_planted_patch_first() -> None:
    # Only the bright 2x2 patch excites the detector, so deleting the map's top 4 pixels (the patch)
    # removes the whole similarity, while 4 random pixels leave most of it.
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    detector = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        detector.weight.fill_(1.0)
        detector.bias.fill_(-0.5)
    network = PooledSpatialKernelNetwork(nn.Sequential(detector, nn.ReLU()), 1, H, D)
    with torch.no_grad():
        network.head.bias.zero_()
    images = torch.rand(6, 1, 8, 8, generator=generator) * 0.3
    for i, (r, c) in enumerate([(0, 0), (2, 5), (5, 1), (6, 6), (3, 3), (1, 4)]):
        images[i, 0, r : r + 2, c : c + 2] = 1.0
    model = _model(network, images)
    x = images[:3]
    neighbours = nearest_neighbours(model, x, k=1, heads=0)
    maps = neighbour_similarity_maps(model, x, images, neighbours)
    refs = images[neighbours.indices[:, 0]]
    fractions = (0.0, 4 / 64, 0.25)
    by_map = deletion_curves(model, x, refs, 0, map_pixel_scores(maps.input_maps[:, 0], (8, 8)), fractions=fractions)
    random = deletion_curves(
        model, x, refs, 0, random_ink_scores(x, torch.Generator().manual_seed(0)), fractions=fractions
    )
    assert torch.all(by_map.relative[:, 1:] == 0)
    assert torch.all(random.relative[:, 1] > 0.5)
    torch.testing.assert_close(by_map.similarities[:, 0], maps.similarities[:, 0], rtol=1e-5, atol=0)
