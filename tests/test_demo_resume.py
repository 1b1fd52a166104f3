"""`gpex demo` checkpoints as it goes, resumes an interrupted run, and leaves a saved explainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpex_gpytorch.cli import main
from gpex_gpytorch.commands.demo import load_demo
from gpex_gpytorch.distillation import load_checkpoint, load_explainer


@pytest.mark.slow
def test_demo_resumes_from_its_checkpoint_and_saves_an_explainer(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    common = ["demo", "--out", str(out), "--epochs", "1", "--quiet", "--threads", "1"]
    assert main([*common, "--steps", "3"]) == 0
    cnn = (out / "ann.pt").read_bytes()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    # A longer run with --resume continues from step 3 with the same CNN (not retrained).
    assert main([*common, "--steps", "5", "--resume"]) == 0
    assert (out / "ann.pt").read_bytes() == cnn
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["step"] == 5 and [h["step"] for h in checkpoint["history"]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 5
    # The saved explainer predicts as the model rebuilt from the checkpoint does.
    saved = load_explainer(out / "explainer.pt")
    _, model, train, test = load_demo(out)
    x = test.tensors[0][:16]
    assert torch.equal(saved.predict(x)[0], model.predict(x)[0])
    assert torch.equal(saved.inducing_labels, train.tensors[1]) and saved.head_names[3] == "digit 3"
