"""`gpex distill` / `gpex explain` on a user's own module:factory and data files, in a temp folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gpex_gpytorch
from gpex_gpytorch.cli import main
from gpex_gpytorch.distillation import faithfulness, load_explainer
from gpex_gpytorch.utils.network_output import SelectOutput

USER_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return {"logits": self.body(x)}


def build():
    return Net()
"""


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("user_models", None)
    import user_models  # type: ignore[import-not-found]

    torch.manual_seed(0)
    torch.save(user_models.build().state_dict(), tmp_path / "ann.pt")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 5))  # float64, as numpy makes it
    np.savez(tmp_path / "data.npz", inputs=x, labels=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0))
    return tmp_path


def test_distill_then_explain_a_user_model_from_an_npz(user_folder: Path, capsys) -> None:
    out = user_folder / "explained"
    argv = ["distill", "--model", "user_models:build", "--weights", "ann.pt", "--data", "data.npz", "--output",
            "logits", "--steps", "60", "--embedding-dim", "6", "--batch-size", "32", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "Pearson mean" in capsys.readouterr().out
    summary = json.loads((out / "faithfulness.json").read_text())
    assert summary["split"] == "test" and len(summary["test_indices"]) == 30
    # The saved explainer reproduces the reported numbers on the held-out rows, from the file alone.
    saved = load_explainer(out / "explainer.pt")
    import user_models  # type: ignore[import-not-found]

    ann = user_models.build()
    ann.load_state_dict(torch.load(user_folder / "ann.pt", weights_only=True))
    data = np.load(user_folder / "data.npz")
    test = torch.tensor(data["inputs"][summary["test_indices"]], dtype=torch.float32)
    labels = torch.tensor(data["labels"][summary["test_indices"]])
    report = faithfulness(saved.model, SelectOutput(ann, "logits"), torch.utils.data.TensorDataset(test, labels))
    assert report.pearson_per_head == pytest.approx(summary["pearson_per_head"], abs=1e-9)
    assert report.agreement == pytest.approx(summary["agreement"])
    assert saved.inducing_inputs.shape == (120, 5) and saved.inducing_labels.dtype == torch.int64
    assert saved.metadata["settings"]["steps"] == 60
    for name in ("faithfulness.png", "explanation.png", "explanation.json"):
        assert (out / name).stat().st_size > 0

    # `gpex explain` on the saved file: the JSON holds the model's posterior for those rows.
    again = user_folder / "again"
    assert main(["explain", "--explainer", str(out / "explainer.pt"), "--data", "data.npz", "--indices", "0", "7",
                 "--k", "3", "--out", str(again), "--quiet"]) == 0  # fmt: skip
    explained = json.loads((again / "explanation.json").read_text())["queries"]
    mean, variance = saved.predict(torch.tensor(data["inputs"][[0, 7]], dtype=torch.float32))
    assert [q["mean_all_heads"] for q in explained] == mean.tolist()  # JSON floats round-trip exactly
    assert [q["variance_all_heads"] for q in explained] == variance.tolist()
    assert all(len(q["neighbours"]) == 3 for q in explained)
    assert (again / "explanation.png").stat().st_size > 0


def test_csv_data_and_clear_errors(user_folder: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(40, 5))
    lines = ["a,b,labels,c,d,e"] + [f"{r[0]},{r[1]},{int(r[0] > 0)},{r[2]},{r[3]},{r[4]}" for r in rows]
    (user_folder / "data.csv").write_text("\n".join(lines) + "\n")
    out = user_folder / "csv_out"
    assert main(["distill", "--model", "user_models:build", "--data", "data.csv", "--output", "logits", "--steps", "3",
                 "--embedding-dim", "2", "--test-fraction", "0", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    saved = load_explainer(out / "explainer.pt")
    assert saved.feature_names == ["a", "b", "c", "d", "e"]
    torch.testing.assert_close(saved.inducing_inputs[:, 2], torch.tensor(rows[:, 2], dtype=torch.float32))
    capsys.readouterr()
    bad = [
        (["--model", "user_models"], "--model: expected module:factory"),
        (["--model", "user_models:nothing"], "has no attribute 'nothing'"),
        (["--model", "user_models:build", "--inputs-key", "x"], "no array 'x' (--inputs-key)"),
        (["--model", "user_models:build", "--weights", "missing.pt"], "--weights: no file at missing.pt"),
        (["--model", "user_models:build", "--steps", "0"], "--steps: expected an integer >= 1, got 0"),
        (["--model", "user_models:build", "--threads", "0"], "--threads: expected an integer >= 1, got 0"),
    ]  # fmt: skip
    for extra, message in bad:
        try:
            code = main(["distill", "--data", "data.npz", "--out", "x", *extra])
        except SystemExit as exited:  # refused by argparse itself (e.g. --threads 0), before any work
            code = exited.code
        assert code == 2
        assert message in capsys.readouterr().err or pytest.fail(message)
    assert not (user_folder / "x").exists()


def test_version_and_python_dash_m(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"gpex_gpytorch {gpex_gpytorch.__version__}"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "gpex_gpytorch", "--version"], cwd=root, capture_output=True,
                            text=True, timeout=120, check=True)  # fmt: skip
    assert result.stdout.strip() == f"gpex_gpytorch {gpex_gpytorch.__version__}"
