"""Baselines of the dataset-debugging benchmark, checked on small cases with known answers."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gpex_gpytorch.explain.debugging_baselines import (
    Checkpoint,
    captum_available,
    captum_tracin,
    fit_representer_points,
    influence_scores,
    knn_scores,
    loss_scores,
    random_review_scores,
    tracin_last_layer,
)
from gpex_gpytorch.explain.debugging_baselines import tracin as tracin_module
from gpex_gpytorch.explain.debugging_baselines.influence_functions import last_layer_hvp, lissa_inverse_hvp


def _toy(n: int = 30, d: int = 4, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g), g


def _mean_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(torch.cat([x, torch.ones_like(x[:, :1])], 1) @ theta.T, y)


def test_representer_values_reproduce_fine_tuned_logits() -> None:
    x, y, g = _toy()
    rep = fit_representer_points(x, y, torch.randn(3, 4, generator=g, dtype=torch.float64), lam=0.05)
    test = torch.randn(7, 4, dtype=torch.float64, generator=g)
    assert rep.gradient_norm < 1e-8
    torch.testing.assert_close(rep.contributions(test).sum(1), rep.logits(test), atol=1e-7, rtol=1e-7)
    classes = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    torch.testing.assert_close(rep.scores(test, classes).sum(1), rep.logits(test)[torch.arange(7), classes])
    assert rep.self_scores(y).shape == (30,) and bool((rep.self_scores(y) >= 0).all())


def test_lissa_matches_exact_hessian_inverse() -> None:
    x, y, g = _toy(n=20, d=3, c=3)
    theta = torch.randn(3, 4, generator=g, dtype=torch.float64)
    xa = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    hessian = torch.autograd.functional.hessian(lambda t: _mean_loss(t.view(3, 4), x, y), theta.flatten())
    hvp = last_layer_hvp(xa, torch.softmax(xa @ theta.T, 1))
    v = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(hvp(v).reshape(2, -1), v.reshape(2, -1) @ hessian)  # closed form = autograd
    damping = 0.1
    exact = torch.linalg.solve(hessian + damping * torch.eye(12, dtype=torch.float64), v.reshape(2, -1).T).T
    scale = 1.1 * float(torch.linalg.eigvalsh(hessian).max() + damping)
    approx = lissa_inverse_hvp(hvp, v, damping=damping, scale=scale, steps=3000)
    torch.testing.assert_close(approx.reshape(2, -1), exact, atol=1e-8, rtol=1e-6)


def test_influence_scores_equal_exact_formula() -> None:
    x, y, g = _toy(n=25, d=3, c=2)
    weight, bias = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, generator=g, dtype=torch.float64)
    x_test, y_test = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    result = influence_scores(x, y, weight, bias, x_test, y_test, damping=0.1, steps=4000)
    theta = torch.cat([weight, bias[:, None]], 1).flatten()
    hessian = torch.autograd.functional.hessian(lambda t: _mean_loss(t.view(2, 4), x, y), theta)
    inverse = torch.linalg.inv(hessian + 0.1 * torch.eye(8, dtype=torch.float64))

    def grad(xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return torch.autograd.functional.jacobian(lambda t: _mean_loss(t.view(2, 4), xi[None], yi[None]), theta)

    expected = torch.tensor(
        [[-float(grad(x_test[t], y_test[t]) @ inverse @ grad(x[i], y[i])) for i in range(25)] for t in range(4)]
    )
    torch.testing.assert_close(result.scores, expected.double(), atol=1e-7, rtol=1e-5)
    assert "LiSSA" in result.backend


def test_tracin_equals_per_example_gradient_dot_products() -> None:
    x, y, g = _toy(n=10, d=3, c=3)
    x_test, y_test = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.tensor([2, 0])
    checkpoints, expected = [], torch.zeros(2, 10, dtype=torch.float64)
    for lr in (0.5, 0.1):
        w, b = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
        checkpoints.append(Checkpoint(x, x_test, w, b, lr))
        theta = torch.cat([w, b[:, None]], 1).flatten()

        def grad(xi: torch.Tensor, yi: torch.Tensor, theta: torch.Tensor = theta) -> torch.Tensor:
            return torch.autograd.functional.jacobian(lambda p: _mean_loss(p.view(3, 4), xi[None], yi[None]), theta)

        for t in range(2):
            for i in range(10):
                expected[t, i] += lr * float(grad(x_test[t], y_test[t]) @ grad(x[i], y[i]))
    torch.testing.assert_close(tracin_last_layer(checkpoints, y, y_test), expected)


def test_knn_loss_random_known_values() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    sims = knn_scores(train, torch.tensor([[3.0, 3.0]]))
    torch.testing.assert_close(sims, torch.tensor([[2**-0.5, 2**-0.5, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(knn_scores(train, torch.tensor([[1.0, 0.0]]), metric="euclidean")[0, 0].item(), 0.0)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    torch.testing.assert_close(loss_scores(logits, labels), F.cross_entropy(logits, labels, reduction="none").double())
    assert torch.equal(random_review_scores(5, seed=3), random_review_scores(5, seed=3))
    assert not torch.equal(random_review_scores(5, seed=3), random_review_scores(5, seed=4))


def test_captum_availability_follows_the_import_system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracin_module.importlib.util, "find_spec", lambda name: None)
    assert captum_available() is False
    monkeypatch.setattr(tracin_module.importlib.util, "find_spec", lambda name: object() if name == "captum" else None)
    assert captum_available() is True


def test_missing_captum_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracin_module, "captum_available", lambda: False)
    with pytest.raises(ImportError, match="captum is not installed"):
        captum_tracin(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), [], [], torch.zeros(1, 2), torch.zeros(1))


def _benchmark(monkeypatch: pytest.MonkeyPatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "label_debugging.py"
    spec = importlib.util.spec_from_file_location("label_debugging_under_test", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    return bench


def _tiny_config(bench, seeds: tuple[int, ...] = (0,)):
    setting = "digits 3 vs 8"
    return bench.Config(
        settings=(setting,),
        noise_levels={setting: (0.45,)},
        seeds={setting: seeds},
        epochs={setting: 2},
        hidden=8,
        gpex_steps=3,
        lissa_steps=5,
        lissa_damping=0.01,
        representer_lambda=1e-3,
        checkpoints=1,
        retrain_fractions={setting: (0.3,)},
    )


def test_benchmark_runs_every_method_and_skips_missing_optional_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _benchmark(monkeypatch)
    monkeypatch.setattr(bench, "captum_available", lambda: False)
    monkeypatch.setattr(bench, "MIN_MISCLASSIFIED", 1)
    run = bench.one_run("digits 3 vs 8", 0.45, 0, _tiny_config(bench))
    assert "captum" in run["skipped"]["TracIn (captum TracInCPFast)"]
    assert set(run["methods"]) == set(bench.METHODS) - {"TracIn (captum TracInCPFast)"}
    assert run["num_flipped"] == round(0.45 * run["num_train"]) and "flagged" not in run
    assert run["retrain_counts"] == [round(0.3 * run["num_train"])]
    fitted = run["fit_flipped"] * run["num_flipped"]  # a count of flipped labels, as a fraction
    assert fitted == pytest.approx(round(fitted), abs=1e-9) and 0 <= round(fitted) <= run["num_flipped"]
    assert run["final_refresh"] is not None  # the GP's cache was refreshed before ranking


def test_fitted_fraction_counts_the_reproduced_labels_of_the_given_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _benchmark(monkeypatch)
    network = torch.nn.Identity()  # predicts the arg-max of its input: classes 0, 1, 2, 3
    labels = torch.tensor([0, 1, 0, 0])
    rows = torch.tensor([True, True, True, False])
    assert bench.fitted_fraction(network, torch.eye(4), labels, rows) == pytest.approx(2 / 3)
    assert bench.fitted_fraction(network, torch.eye(4), labels, ~rows) == 0.0
    assert math.isnan(bench.fitted_fraction(network, torch.eye(4), labels, torch.zeros(4, dtype=torch.bool)))


def test_random_scores_is_a_deprecated_alias_of_random_review_scores() -> None:
    from gpex_gpytorch.explain.debugging_baselines import random_scores

    with pytest.warns(DeprecationWarning, match="random_scores is deprecated; use .*random_review_scores"):
        old = random_scores(7, seed=2)
    assert torch.equal(old, random_review_scores(7, seed=2))


def test_benchmark_flags_cells_with_too_few_misclassified(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _benchmark(monkeypatch)
    monkeypatch.setattr(bench, "captum_available", lambda: False)
    cfg = _tiny_config(bench)
    monkeypatch.setattr(bench, "MIN_MISCLASSIFIED", 10_000)  # more than the test set: every run is flagged
    run = bench.one_run("digits 3 vs 8", 0.45, 0, cfg)
    assert run["misclassified"] < 10_000 and "per-test methods not run" in run["flagged"]
    assert set(run["methods"]) == {"GPEX self-score (ours)", "loss ranking", "random"}  # no fallback to all test
    summary = bench.summarise([run], cfg)
    entry = summary["digits 3 vs 8, 45% flipped"]
    assert entry["flagged"] and entry["misclassified"] == [run["misclassified"]]
    assert set(entry["methods"]) == {"GPEX self-score (ours)", "loss ranking", "random"}
    assert "flagged (misclassified per seed" in bench.markdown_table(summary, {})


def test_detection_auc_known_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _benchmark(monkeypatch)
    flipped = torch.tensor([True, False, False, True])
    # Flips shown first: found = 0, .5, 1, 1, 1 at shown = 0, .25, .5, .75, 1 -> trapezoid area 0.75 = 1 - p/2.
    assert bench.detection_curve(torch.tensor([0, 3, 1, 2]), flipped)[1] == pytest.approx(0.75)
    # Flips shown last: found = 0, 0, 0, .5, 1 -> area 0.25.
    assert bench.detection_curve(torch.tensor([1, 2, 0, 3]), flipped)[1] == pytest.approx(0.25)


def test_paired_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _benchmark(monkeypatch)
    # Differences 0.1, 0.2, 0.3: mean 0.2, standard error 0.1/sqrt(3) = 0.058 -> a win.
    assert bench.verdict([0.6, 0.7, 0.8], [0.5, 0.5, 0.5]) == "wins (+0.200)"
    assert bench.verdict([0.5, 0.5, 0.5], [0.6, 0.7, 0.8]) == "loses (-0.200)"
    # Differences +0.1, -0.1, +0.05: mean 0.017 within twice its standard error -> a tie.
    assert bench.verdict([0.6, 0.4, 0.55], [0.5, 0.5, 0.5]).startswith("ties")
    assert bench.verdict([0.6], [0.5]) == "n/a (1 seed)"


def test_bad_input_is_named() -> None:
    x, y, _ = _toy()
    with pytest.raises(ValueError, match="labels"):
        fit_representer_points(x, y[:-1])
    with pytest.raises(ValueError, match="features"):
        fit_representer_points(x[:0], y[:0])
    with pytest.raises(ValueError, match="lam"):
        fit_representer_points(x, y, lam=0.0)
    with pytest.raises(ValueError, match="test_labels"):
        influence_scores(x, y, torch.zeros(3, 4), None, x[:2], y[:3])
    with pytest.raises(ValueError, match="steps"):
        lissa_inverse_hvp(lambda v: v, torch.ones(1, 2), steps=0)
    with pytest.raises(ValueError, match="checkpoints"):
        tracin_last_layer([], y, y)
    with pytest.raises(ValueError, match="metric"):
        knn_scores(x, x, metric="manhattan")
    with pytest.raises(ValueError, match="train_labels"):
        loss_scores(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_train"):
        random_review_scores(0)
