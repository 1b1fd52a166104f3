"""Device checks (marked ``gpu``): on CUDA, every core piece equals its CPU float64 result.

Skipped where no CUDA device is present (CI); ``benchmarks/gpu_check.py`` runs them on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpex_gpytorch import CachedDeepKernel, GPEXModel, LowRankPlusDiagonal
from gpex_gpytorch.explain import nearest_neighbours, posterior_contributions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model(device: str) -> GPEXModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3 * 8))
    kernel = CachedDeepKernel(net, 500, 3, 8, device=device)
    inducing = torch.randn(500, 6)
    kernel.to(device).fill(inducing.to(device), progress=False)
    return GPEXModel(kernel, torch.randn(500, 3).to(device), noise=0.3).to(device)


def test_operator_solve_and_logdet_on_cuda_equal_cpu_float64() -> None:
    torch.manual_seed(0)
    root = torch.randn(2, 3000, 16, dtype=torch.float64)
    rhs = torch.randn(2, 3000, 2, dtype=torch.float64)
    cpu = LowRankPlusDiagonal(root, torch.tensor(0.5, dtype=torch.float64))
    gpu = LowRankPlusDiagonal(root.cuda().float(), torch.tensor(0.5).cuda())
    torch.testing.assert_close(gpu.solve(rhs.cuda().float()).cpu().double(), cpu.solve(rhs), rtol=1e-3, atol=1e-4)
    _, logdet_gpu = gpu.inv_quad_logdet(logdet=True)
    _, logdet_cpu = cpu.inv_quad_logdet(logdet=True)
    torch.testing.assert_close(logdet_gpu.cpu().double(), logdet_cpu, rtol=1e-5, atol=1e-3)


def test_posterior_and_explanations_on_cuda_equal_cpu() -> None:
    cpu, gpu = _model("cpu"), _model("cuda")
    x = torch.randn(40, 6)
    mean_c, var_c = cpu.predict(x)
    mean_g, var_g = gpu.predict(x.cuda())
    torch.testing.assert_close(mean_g.cpu(), mean_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var_g.cpu(), var_c, rtol=1e-4, atol=1e-6)
    near_c = nearest_neighbours(cpu, x, k=5, hub_warning=None)
    near_g = nearest_neighbours(gpu, x.cuda(), k=5, hub_warning=None)
    assert torch.equal(near_g.indices.cpu(), near_c.indices)
    parts = posterior_contributions(gpu, x.cuda(), k=3)
    torch.testing.assert_close(parts.total, parts.mean, rtol=1e-4, atol=1e-5)
