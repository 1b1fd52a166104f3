"""Nearest-neighbour explanations equal brute force."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpex_gpytorch.explain import nearest_neighbours
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel


def _model(m: int = 300, h: int = 4, d: int = 5) -> GPEXModel:
    torch.manual_seed(0)
    kernel = CachedDeepKernel(nn.Linear(6, h * d), m, h, d)
    kernel.fill(torch.randn(m, 6), progress=False)
    return GPEXModel(kernel, torch.randn(m, h))


@pytest.mark.parametrize("chunk_size", [7, 64, 10_000])
@pytest.mark.parametrize("heads", ["predicted", 2, "tensor"])
def test_equals_brute_force(chunk_size: int, heads: object) -> None:
    model = _model()
    x = torch.randn(9, 6)
    if heads == "tensor":
        heads = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3])
    result = nearest_neighbours(model, x, k=10, heads=heads, chunk_size=chunk_size)  # type: ignore[arg-type]
    mean, variance = model.predict(x)
    if isinstance(heads, torch.Tensor):
        chosen = heads
    else:
        chosen = mean.argmax(1) if heads == "predicted" else torch.full((9,), 2)
    with torch.no_grad():
        queries = model.covar_module.embed(x)
    for i in range(9):
        h = int(chosen[i])
        sims = model.covar_module.embeddings[h] @ queries[h, i]
        expected_sim, expected_idx = sims.topk(10)
        assert torch.equal(result.indices[i], expected_idx)
        torch.testing.assert_close(result.similarities[i], expected_sim)
        assert int(result.heads[i]) == h
        torch.testing.assert_close(result.mean[i], mean[i, h])
        torch.testing.assert_close(result.variance[i], variance[i, h])


def test_bad_input_is_named() -> None:
    model = _model(m=20)
    x = torch.randn(3, 6)
    with pytest.raises(ValueError, match="k"):
        nearest_neighbours(model, x, k=21)
    with pytest.raises(ValueError, match="k"):
        nearest_neighbours(model, x, k=0)
    with pytest.raises(ValueError, match="heads"):
        nearest_neighbours(model, x, heads=4)
    with pytest.raises(ValueError, match="heads"):
        nearest_neighbours(model, x, heads="largest")
    with pytest.raises(ValueError, match="inputs"):
        nearest_neighbours(model, torch.zeros(0, 6))
