"""``gpex pca`` end to end on the digits CNN (small settings), and the ablation identities on it."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.utils.data import TensorDataset

from gpex_gpytorch.datasets import digits
from gpex_gpytorch.explain.principal_components import Ablation, ablated, fit_layer_pca
from gpex_gpytorch.explain.principal_components.completeness import evaluate
from gpex_gpytorch.models import digits_cnn


def test_gpex_pca_writes_json_and_figures(tmp_path) -> None:
    from gpex_gpytorch.cli import main

    out = tmp_path / "pca"
    argv = ["pca", "--out", str(out), "--seed", "1", "--epochs", "2", "--width", "48"]
    argv += ["--ablation-points", "4", "--grid-directions", "3", "--grid-points", "4", "--no-progress"]
    argv += ["--max-examples", "300"]
    assert main(argv) == 0
    summary = json.loads((out / "pca.json").read_text())
    train_labels = digits.load_digits(seed=1)[0].tensors[1][:300]  # the command's --seed 1 --max-examples 300
    assert set(summary["layers"]) == {"penultimate_post", "penultimate_pre", "conv"}
    accuracy = summary["test_accuracy"]
    for key, layer in summary["layers"].items():
        f = layer["num_features"]
        assert len(layer["variance"]["pc_cumulative"]) == f
        assert layer["variance"]["pc_cumulative"][-1] == pytest.approx(1.0, abs=1e-6)
        for share in ("0.8", "0.99"):
            k = layer["k"][share]
            assert 1 <= k["pc"] <= k["neuron"] <= f
        for curve in layer["ablation"].values():
            assert curve["k"][0] == 0 and curve["k"][-1] == f
            assert curve["score"][0] == pytest.approx(accuracy, abs=1e-6)  # nothing ablated: unchanged
        # everything ablated, whichever basis and order: the same constant layer output
        finals = {curve["score"][-1] for curve in layer["ablation"].values()}
        assert max(finals) - min(finals) < 1e-9, key
        assert set(layer["figures"]) == {"completeness", "grid_quantile", "grid_top", "grid_nearest"}
        for name in layer["figures"].values():
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
        for basis in ("pc", "neuron", "random"):
            summary_basis = layer["interpretability"][basis]
            assert len(summary_basis["directions"]) == min(32, f)
            purity = summary_basis["extremes"]["purity_top"]
            assert summary_basis["mean_extremes"]["purity_top"] == pytest.approx(sum(purity) / len(purity))
            # a share of the 50 top images, and at least 5 of them share a label (10 classes)
            assert all(v * 50 == pytest.approx(round(v * 50)) and 5 <= round(v * 50) <= 50 for v in purity)
            # quantile rows are ordered by score: monotonicity 1 unless scores tie (dead ReLU units)
            assert layer["grids"]["quantile"][basis]["rows"][0]["coverage"] > 0.5
            # each grid row's purity recomputed from the training labels of the inputs it shows
            for sampling in ("quantile", "top", "nearest"):
                grid = layer["grids"][sampling][basis]
                for inputs, row in zip(grid["inputs"], grid["rows"], strict=True):
                    counts = Counter(train_labels[inputs].tolist())
                    assert row["purity"] == pytest.approx(max(counts.values()) / len(inputs))
    assert summary["layers"]["penultimate_post"]["num_features"] == 48


def test_full_ablation_on_the_digits_cnn_is_the_mean() -> None:
    train, test = digits.load_digits(seed=0)
    train = TensorDataset(*(t[:400] for t in train.tensors))
    torch.manual_seed(0)
    model = digits_cnn.DigitsCNN(num_classes=10, width=64).eval()
    images = test.tensors[0]
    for layer, stage in (("penultimate", "post"), ("penultimate", "pre")):
        fitted = fit_layer_pca(model, layer, train, stage=stage)
        with torch.no_grad():
            mean = fitted.pca.mean
            with ablated(model, fitted, lambda rows, mean=mean: mean.to(rows.dtype).expand_as(rows)):
                replaced = model(images)
            with ablated(model, fitted, Ablation.of(fitted, fitted.pca.num_components)):
                torch.testing.assert_close(model(images), replaced, atol=1e-5, rtol=1e-5)
        base = evaluate(model, test)
        with ablated(model, fitted, Ablation.of(fitted, 0)):
            assert evaluate(model, test) == base
