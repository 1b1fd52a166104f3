"""The posterior mean decomposes exactly over the inducing instances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpex_gpytorch.explain import posterior_contributions
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel


def _model(m: int = 200, h: int = 3, d: int = 4, noise: float | torch.Tensor = 0.3) -> GPEXModel:
    torch.manual_seed(1)
    kernel = CachedDeepKernel(nn.Linear(5, h * d), m, h, d)
    kernel.fill(torch.randn(m, 5), progress=False)
    return GPEXModel(kernel, torch.randn(m, h), noise=noise)


@pytest.mark.parametrize("noise", [0.3, torch.tensor([0.1, 1.0, 5.0])])
@pytest.mark.parametrize(("chunk_size", "query_batch_size"), [(13, 3), (4096, 1024)])
def test_contributions_equal_a_dense_solve_and_sum_to_the_mean(
    noise: float | torch.Tensor, chunk_size: int, query_batch_size: int
) -> None:
    model = _model(noise=noise)
    kernel = model.covar_module
    x = torch.randn(7, 5)
    result = posterior_contributions(model, x, k=4, chunk_size=chunk_size, query_batch_size=query_batch_size)
    mean, _ = model.predict(x)
    torch.testing.assert_close(result.total, result.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.mean, mean.gather(1, mean.argmax(1, keepdim=True)).squeeze(1))
    with torch.no_grad():
        f = kernel.embed(x).double()
    noises = torch.as_tensor(noise, dtype=torch.float64).expand(3)
    for i in range(7):
        h = int(result.heads[i])
        u = kernel.embeddings[h].double()
        # α = (U Uᵀ + σ² I_M)⁻¹ v by a dense M × M solve: the definition, not the push-through form.
        alpha = torch.linalg.solve(
            u @ u.T + noises[h] * torch.eye(200, dtype=torch.float64), kernel.inducing_values[:, h].double()
        )
        terms = (u @ f[h, i]) * alpha
        assert float(terms.sum()) == pytest.approx(float(mean[i, h]), rel=1e-5, abs=1e-6)
        top, top_idx = terms.topk(4)
        low, low_idx = terms.topk(4, largest=False)
        assert torch.equal(result.positive_indices[i], top_idx)
        assert torch.equal(result.negative_indices[i], low_idx)
        torch.testing.assert_close(result.positive[i].double(), top, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(result.negative[i].double(), low, rtol=1e-5, atol=1e-7)


def test_bad_input_is_named() -> None:
    model = _model(m=10)
    x = torch.randn(2, 5)
    for kwargs, message in [
        ({"k": 11}, "k"),
        ({"k": 0}, "k"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"query_batch_size": -2}, "query_batch_size"),
        ({"heads": 3}, "heads"),
    ]:
        with pytest.raises(ValueError, match=message):
            posterior_contributions(model, x, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="heads"):
        posterior_contributions(model, x, heads=torch.tensor([0.5, 1.0]))
