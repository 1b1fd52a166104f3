"""Activation capture, the ablation operator and completeness on a small CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gpex_gpytorch.explain.principal_components import (
    Ablation,
    ActivationRecorder,
    LayerRewriter,
    ablated,
    ablation_curves,
    collect_layer_activations,
    fit_layer_pca,
    variance_completeness,
)
from gpex_gpytorch.explain.principal_components.completeness import ablate, ablation_curve, evaluate


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.penultimate = nn.Sequential(nn.Flatten(), nn.Linear(6 * 8 * 8, 16), nn.ReLU())
        self.classifier = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.penultimate(self.features(x)))


@pytest.fixture(scope="module")
def setup() -> tuple[TinyCNN, TensorDataset]:
    torch.manual_seed(0)
    model = TinyCNN()
    x = torch.rand(240, 1, 8, 8)
    with torch.no_grad():  # labels the model gets mostly right, so accuracy moves under ablation
        y = model(x).argmax(1)
    flip = torch.arange(240) % 7 == 0
    y[flip] = (y[flip] + 1) % 3
    return model, TensorDataset(x, y)


CASES = [
    ("penultimate", "post", "positions"),
    ("penultimate", "pre", "positions"),
    ("features", "pre", "positions"),
    ("features", "post", "pooled"),
    ("features.2", "post", "flatten"),
]


def test_capture_reads_the_right_tensors(setup: tuple[TinyCNN, TensorDataset]) -> None:
    model, data = setup
    x = data.tensors[0][:5]
    with torch.no_grad():
        conv = model.features[2](model.features[1](model.features[0](x)))  # before the in-place ReLU
        hidden = model.penultimate[1](model.features(x).flatten(1))
    with ActivationRecorder(model, "penultimate", stage="pre") as recorder:
        torch.testing.assert_close(recorder.run(x), hidden)
    with ActivationRecorder(model, "penultimate") as recorder:
        torch.testing.assert_close(recorder.run(x), hidden.relu())
    with ActivationRecorder(model, "features", stage="pre") as recorder:  # in-place ReLU after the hook
        rows = recorder.run(x)
    torch.testing.assert_close(rows, conv.permute(0, 2, 3, 1).reshape(-1, 6))
    assert bool((rows < 0).any())
    with ActivationRecorder(model, "features", spatial="pooled") as recorder:
        torch.testing.assert_close(recorder.run(x), conv.relu().mean((2, 3)))
    with ActivationRecorder(model, "features", spatial="flatten") as recorder:
        torch.testing.assert_close(recorder.run(x), conv.relu().flatten(1))
    layer = fit_layer_pca(model, "features", data, spatial="positions")
    assert layer.rows_per_input == 64 and layer.pca.num_samples == 240 * 64 and layer.output_shape == (6, 8, 8)


@pytest.mark.parametrize(("layer", "stage", "spatial"), CASES)
def test_ablating_everything_is_the_mean_and_nothing_is_the_identity(
    setup: tuple[TinyCNN, TensorDataset], layer: str, stage: str, spatial: str
) -> None:
    model, data = setup
    x = data.tensors[0]
    fitted = fit_layer_pca(model, layer, data, stage=stage, spatial=spatial, batch_size=64)
    mean = fitted.pca.mean
    with torch.no_grad():
        baseline = model(x)
        with ablated(model, fitted, lambda rows: mean.to(rows.dtype).expand_as(rows)):
            replaced = model(x)
        for basis in ("pc", "neuron"):
            everything = Ablation.of(fitted, fitted.pca.num_features, basis=basis)
            with ablated(model, fitted, everything):
                torch.testing.assert_close(model(x), replaced, atol=1e-5, rtol=1e-5)
            with ablated(model, fitted, Ablation.of(fitted, 0, basis=basis)):
                assert torch.equal(model(x), baseline)
    base_accuracy = evaluate(model, data)
    curve = ablation_curve(model, fitted, data, basis="pc", ks=[0])
    assert curve.scores == [base_accuracy]
    assert not model.features[-1]._forward_pre_hooks and not model.penultimate._forward_hooks


def test_ablation_operator_algebra() -> None:
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=g, dtype=torch.float64))
    rows, mean = torch.randn(20, 7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    out = ablate(rows, mean, q[:, :3].T)
    # nothing left along the ablated directions (relative to the mean), the rest untouched
    torch.testing.assert_close((out - mean) @ q[:, :3], torch.zeros(20, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close((out - mean) @ q[:, 3:], (rows - mean) @ q[:, 3:], atol=1e-12, rtol=0)
    torch.testing.assert_close(ablate(out, mean, q[:, :3].T), out, atol=1e-12, rtol=0)  # a projection
    neurons = Ablation(mean=mean, neurons=torch.tensor([1, 4]))(rows)
    torch.testing.assert_close(neurons, ablate(rows, mean, torch.eye(7, dtype=torch.float64)[[1, 4]]))


def test_completeness_curves(setup: tuple[TinyCNN, TensorDataset]) -> None:
    model, data = setup
    fitted = fit_layer_pca(model, "penultimate", data, stage="pre")
    summary = variance_completeness(fitted)
    assert summary.pc.shape == (16,) and summary.neuron.shape == (16,)
    # PCs are the best k-dimensional subspaces: never below the best k neurons
    assert bool((summary.pc >= summary.neuron - 1e-9).all())
    assert summary.k_pc[0.8] <= summary.k_neuron[0.8]
    curves = ablation_curves(model, fitted, data, ks=[0, 4, 16])
    assert set(curves) == {"pc_descending", "pc_ascending", "neuron_descending", "neuron_ascending"}
    base = evaluate(model, data)
    for curve in curves.values():
        assert curve.scores[0] == base and curve.ks == [0, 4, 16]
    # everything ablated: every input gets the same output, the same class
    assert curves["pc_descending"].scores[-1] == curves["neuron_ascending"].scores[-1]
    record = curves["pc_descending"].to_dict()
    assert record["k"] == [0, 4, 16]


def test_bad_arguments_and_hook_cleanup(setup: tuple[TinyCNN, TensorDataset]) -> None:
    model, data = setup
    with pytest.raises(ValueError, match=r"layer: .*'penultimate'"):
        fit_layer_pca(model, "penultimat", data)
    with pytest.raises(ValueError, match=r"layer: .*'features.2'"):
        fit_layer_pca(model, "features.20", data)
    with pytest.raises(ValueError, match="stage"):
        fit_layer_pca(model, "classifier", data, stage="pre")
    with pytest.raises(ValueError, match="stage"):
        fit_layer_pca(model, "classifier", data, stage="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spatial"):
        fit_layer_pca(model, "features", data, spatial="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dataset"):
        fit_layer_pca(model, "features", TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)))
    with pytest.raises(ValueError, match="dataset"):
        fit_layer_pca(model, "features", [])
    with pytest.raises(ValueError, match="num_components"):
        fit_layer_pca(model, "penultimate", data, num_components=17)
    fitted = fit_layer_pca(model, "penultimate", data)
    with pytest.raises(ValueError, match="k"):
        Ablation.of(fitted, 17)
    with pytest.raises(ValueError, match="k"):
        Ablation.of(fitted, -1, basis="neuron")
    with pytest.raises(ValueError, match="ks"):
        ablation_curve(model, fitted, data, ks=[0, 99])
    with pytest.raises(ValueError, match="dataset"):
        evaluate(model, data.tensors[0])  # no labels

    # hooks are removed and the mode restored when the forward pass fails mid-way
    model.train()
    bad = [(torch.rand(4, 1, 8, 8), torch.zeros(4)), (torch.rand(4, 1, 5, 5), torch.zeros(4))]
    with pytest.raises(RuntimeError):
        fit_layer_pca(model, "penultimate", bad, stage="pre")
    with pytest.raises(RuntimeError):
        collect_layer_activations(model, "classifier", bad)
    with pytest.raises(ZeroDivisionError):
        with LayerRewriter(model, "penultimate", lambda r: r):
            raise ZeroDivisionError
    with pytest.raises(RuntimeError):
        with ablated(model, fitted, Ablation.of(fitted, 3)):
            model(torch.rand(2, 1, 5, 5))
    assert model.training
    model.eval()
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
