"""The README's GPyTorch usage example runs as written (on small synthetic data)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs_and_learns() -> None:
    block = re.search(r"## Usage with GPyTorch\s+```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README lost its usage example"
    code = block.group(1).replace("range(2000)", "range(60)")
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 3))
    namespace = {
        "ann": ann,
        "H": 3,
        "D": 8,
        "x_ind": torch.randn(300, 64),
        "x_train": torch.randn(300, 64),
        "x_test": torch.randn(50, 64),
    }
    exec(compile(code, str(README), "exec"), namespace)
    mean, variance = namespace["mean"], namespace["variance"]
    assert mean.shape == variance.shape == (50, 3)
    assert bool((variance > 0).all())
    with torch.no_grad():
        target = ann(namespace["x_test"])
    pearson = torch.corrcoef(torch.stack([mean[:, 0], target[:, 0]]))[0, 1]
    assert pearson > 0.5, float(pearson)


def test_readme_own_model_quick_start_runs(tmp_path, monkeypatch) -> None:
    """The tabular quick-start, as written (fewer steps): faithful, saved, reloaded identically, explained."""
    block = re.search(r"## Explain your own model\n.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README lost its own-model quick-start"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 35
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace("steps=500", "steps=150"), str(README), "exec"), namespace)
    report, explanation = namespace["report"], namespace["explanation"]
    assert report.pearson_mean > 0.99, report  # measured 0.9991 at 150 steps
    assert report.agreement > 0.93, report
    x_test = namespace["x_test"]
    reloaded = namespace["explainer"].predict(x_test)
    original = namespace["distiller"].model_.predict(x_test)
    assert torch.equal(reloaded[0], original[0]) and torch.equal(reloaded[1], original[1])
    assert torch.equal(explanation.neighbour_labels, namespace["y_train"][explanation.neighbour_indices])
    assert explanation.feature_names[0] == "mean radius" and explanation.head_names == ["malignant", "benign"]
    assert (tmp_path / "explanation.png").stat().st_size > 0
