"""The HTML report, the neighbour grids, and ``gpex explain`` end to end on a tiny demo run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from gpex_gpytorch.cli import main
from gpex_gpytorch.commands.demo import DEMO_SETTINGS
from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.distillation import Distiller, FaithfulnessReport
from gpex_gpytorch.explain import render_report
from gpex_gpytorch.explain.figures import figure_png, neighbour_grid, save_neighbour_grid
from gpex_gpytorch.models import DigitsCNN

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _faithfulness() -> FaithfulnessReport:
    return FaithfulnessReport(
        pearson_per_head=[0.99, None, 0.95],
        pearson_mean=0.97,
        pearson_min=0.95,
        constant_heads=[1],
        ann_accuracy=None,
        gp_accuracy=None,
        agreement=None,
        num_samples=10,
    )


def test_grid_png_with_and_without_maps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tests, neighbours = torch.rand(2, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
    plain = figure_png(neighbour_grid(tests, neighbours, similarities=torch.rand(2, 3), test_labels=[1, 2]))
    assert plain.startswith(PNG_MAGIC)
    path = save_neighbour_grid(
        tmp_path / "grid.png",
        tests,
        neighbours,
        similarities=torch.rand(2, 3),
        neighbour_labels=torch.zeros(2, 3, dtype=torch.long),
        test_maps=torch.randn(2, 3, 4, 4),
        neighbour_maps=torch.randn(2, 3, 4, 4),
    )
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_report_is_self_contained_with_faithfulness_first() -> None:
    png = figure_png(neighbour_grid(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 3, 8, 8)))
    text = render_report(title="T <&>", faithfulness=_faithfulness(), figures=[("a grid", png)])
    assert "T &lt;&amp;&gt;" in text
    assert text.index("id='faithfulness'") < text.index("id='figures'")
    assert "data:image/png;base64," in text
    assert not re.search(r"(src|href)=['\"](http|//|file:)", text)
    assert text.count("<tr><td>") == 3 and "constant (excluded)" in text


def _tiny_demo_folder(folder: Path, steps: int = 2) -> None:
    """What `gpex demo --out folder` writes, for an untrained CNN and a 2-step distillation (fast)."""
    folder.mkdir()
    torch.manual_seed(0)
    ann = DigitsCNN(num_classes=10, width=1024).eval()
    torch.save(ann.state_dict(), folder / "ann.pt")
    train, _ = load_digits(seed=0)
    settings = {**DEMO_SETTINGS, "steps": steps}
    Distiller(
        ann, seed=0, progress=False, checkpoint_every=steps, checkpoint_path=folder / "checkpoint.pt", **settings
    ).fit(train)
    (folder / "metrics.json").write_text(json.dumps({"seed": 0, "steps": steps}))


def test_gpex_explain_end_to_end(tmp_path: Path) -> None:
    demo, out = tmp_path / "demo", tmp_path / "explain"
    _tiny_demo_folder(demo)
    assert main(["explain", "--checkpoint", str(demo), "--out", str(out), "--num-test", "2", "--k", "3"]) == 0
    summary = json.loads((out / "explain.json").read_text())
    assert len(summary["neighbours"]) == 2 and len(summary["neighbours"][0]["neighbours"]) == 3
    assert "auroc" in summary["uncertainty"]
    assert (out / "neighbours.png").read_bytes().startswith(PNG_MAGIC)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 1 and "digit 9" in html
    assert main(["explain", "--checkpoint", str(demo), "--out", str(out), "--k", "100000"]) == 2
    assert main(["explain", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
