"""The ``gpex pathways`` sub-command on a tiny budget: files, JSON layout, argument errors."""

from __future__ import annotations

import json

import pytest

from gpex_gpytorch.cli import build_parser, main


@pytest.mark.slow
def test_pathways_command_writes_json_and_figures(tmp_path):
    out = tmp_path / "pw"
    argv = ["pathways", "--out", str(out), "--width", "16", "--cnn-epochs", "1", "--epochs", "1"]
    argv += ["--sparsity-weights", "10,3", "--permutations", "3", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    for name in ("pathways.json", "class_masks.png", "layer_sparsity.png", "baselines.png"):
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "pathways.json").read_text())
    main_point = result["main"]
    methods = {"generator", "random", "top_k_activation", "gradient_x_activation", "class_mean_gradient_x_activation"}
    assert set(main_point["faithfulness"]) == methods
    assert set(main_point["paper_metrics"]) == methods
    for name in methods:  # every method keeps the generator's channel counts: the same sparsity
        assert main_point["paper_metrics"][name]["sparsity"] == pytest.approx(
            main_point["paper_metrics"]["generator"]["sparsity"]
        )
    sweep = result["density_sweep"]["class_mean_gradient_x_activation"]
    assert [p["fraction"] for p in sweep] == sorted(p["fraction"] for p in sweep)
    assert all(a["density"] < b["density"] for a, b in zip(sweep, sweep[1:], strict=False))
    assert set(result["adaptive_fraction"]) == {
        f"{n}@{r}" for n in ("class_mean_gradient_x_activation", "gradient_x_activation") for r in (0.0, 0.9)
    }
    assert set(main_point["layer_sparsity"]) == methods
    # baselines keep exactly the generator's number of channels per layer
    for name in methods - {"generator"}:
        assert main_point["layer_sparsity"][name] == pytest.approx(main_point["layer_sparsity"]["generator"])
    assert set(main_point["class_iou"]["generator"]) == {"intra", "inter", "per_class"}
    assert {"agreement", "agreement_other_class"} <= set(main_point["transfer"]["generator"])
    assert set(main_point["embedding_correlation"]["generator"]) == {"penultimate", "pixels"}
    assert len(result["operating_points"]) == 2
    assert result["mask_layers"] == {"features.0": 32, "features.2": 64, "features.5": 64, "penultimate.1": 16}


def test_pathways_command_rejects_bad_arguments(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["pathways", "--out", str(tmp_path), "--sparsity-weights", "a,b"])
    with pytest.raises(ValueError, match="--sparsity-weights: expected comma-separated numbers"):
        args._run(args)
    with pytest.raises(SystemExit):  # refused at parsing (argparse prints the reason)
        parser.parse_args(["pathways", "--out", str(tmp_path), "--epochs", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["pathways", "--out", str(tmp_path), "--gp-steps", "-1"])
