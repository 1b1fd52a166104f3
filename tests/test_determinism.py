"""Determinism on CPU: two Distiller runs with the same seed are bit-identical (docs/numerics.md).

``test_distillation.py`` checks that a resumed run matches an uninterrupted one (predicted means
and losses) and ``test_crash_safety.py`` does so across processes; here two independent runs are
compared on everything they produce (every tensor of the state dict, the history, predicted means
and variances), whatever the global RNG did in between, and a different seed must differ.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gpex_gpytorch import Distiller


@pytest.fixture(scope="module")
def setting() -> tuple[nn.Module, TensorDataset, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(160, 10, generator=generator)
    ann = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        for p in ann.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return ann, TensorDataset(x), torch.randn(25, 10, generator=generator)


def _fit(ann: nn.Module, data: TensorDataset, seed: int) -> Distiller:
    return Distiller(
        ann,
        embedding_dim=4,
        steps=12,
        batch_size=16,
        inducing_batch_size=16,
        refresh_batch_size=24,
        eval_every=6,
        eval_size=32,
        seed=seed,
        progress=False,
    ).fit(data)


def _outputs(distiller: Distiller, x: torch.Tensor) -> dict[str, object]:
    mean, variance = distiller.model_.predict(x)
    # every record but the wall-clock seconds
    timing = ("seconds", "step_seconds")
    history = [{k: v for k, v in record.items() if k not in timing} for record in distiller.history_]
    return {"state": distiller.model_.state_dict(), "history": history, "mean": mean, "variance": variance}


def test_two_seeded_cpu_runs_are_bit_identical(setting) -> None:
    ann, data, x = setting
    first = _outputs(_fit(ann, data, seed=7), x)
    torch.manual_seed(1234)  # the global RNG is somewhere else for the second run: it must not matter
    torch.rand(100)
    second = _outputs(_fit(ann, data, seed=7), x)

    assert first["state"].keys() == second["state"].keys()
    for name, tensor in first["state"].items():
        other = second["state"][name]
        assert tensor.dtype == other.dtype and torch.equal(tensor, other), name
    assert first["history"] == second["history"]  # losses, Pearson and staleness, float for float
    assert torch.equal(first["mean"], second["mean"])
    assert torch.equal(first["variance"], second["variance"])

    other_seed = _outputs(_fit(ann, data, seed=8), x)
    assert not torch.equal(first["mean"], other_seed["mean"])
    gram = "variational_strategy.kernel.gram"
    assert not torch.equal(first["state"][gram], other_seed["state"][gram])
