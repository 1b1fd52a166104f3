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
