"""The HTML report, the neighbour grids, and ``gpex explain`` end to end on a tiny demo run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
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


def _grid_content(fig: object, n: int, k: int, rows_per: int) -> tuple[list[list[str]], list[list[list[np.ndarray]]]]:
    """Titles and drawn arrays of every panel, as a (row, column) grid."""
    axes = fig.axes  # type: ignore[attr-defined]
    titles = [[axes[r * (k + 1) + c].get_title() for c in range(k + 1)] for r in range(n * rows_per)]
    arrays = [
        [[np.asarray(image.get_array()) for image in axes[r * (k + 1) + c].images] for c in range(k + 1)]
        for r in range(n * rows_per)
    ]
    return titles, arrays


def test_neighbour_grid_draws_the_given_similarities_labels_images_and_maps() -> None:
    torch.manual_seed(0)
    n, k = 2, 3
    tests, neighbours = torch.rand(n, 1, 8, 8), torch.rand(n, k, 1, 8, 8)
    labels = torch.tensor([[1, 7, 7], [0, 3, 9]])
    drawn = {}
    for name, scale in (("a", 1.0), ("b", -2.0)):
        similarities = scale * torch.tensor([[0.9, 0.5, 0.25], [0.8, 0.4, 0.125]])
        test_maps, neighbour_maps = scale * torch.randn(n, k, 4, 4), scale * torch.randn(n, k, 4, 4)
        fig = neighbour_grid(
            tests,
            neighbours,
            similarities=similarities,
            test_labels=[4, 5],
            neighbour_labels=labels,
            heads=torch.tensor([2, 6]),
            test_maps=test_maps,
            neighbour_maps=neighbour_maps,
        )
        titles, arrays = _grid_content(fig, n, k, rows_per=2)
        for i in range(n):
            top, bottom = 2 * i, 2 * i + 1
            assert titles[top][0] == f"test y={4 + i}\nhead {[2, 6][i]}"
            np.testing.assert_array_equal(arrays[top][0][0], tests[i, 0].numpy())
            for j in range(k):
                assert titles[top][j + 1] == f"y={int(labels[i, j])} s={float(similarities[i, j]):.3g}"
                image, overlay = arrays[top][j + 1]
                np.testing.assert_array_equal(image, neighbours[i, j, 0].numpy())
                np.testing.assert_array_equal(overlay, neighbour_maps[i, j].double().numpy())
                test_image, test_overlay = arrays[bottom][j + 1]
                np.testing.assert_array_equal(test_image, tests[i, 0].numpy())
                np.testing.assert_array_equal(test_overlay, test_maps[i, j].double().numpy())
        drawn[name] = (titles, arrays)
    # different similarities and maps give different figures (the images alone are the same)
    assert drawn["a"][0] != drawn["b"][0]
    assert not np.array_equal(drawn["a"][1][0][1][1], drawn["b"][1][0][1][1])
    plain_titles, plain_arrays = _grid_content(neighbour_grid(tests, neighbours), n, k, rows_per=1)
    assert plain_titles[0] == ["test", "", "", ""] and all(len(a) == 1 for row in plain_arrays for a in row)


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
