"""Grids along PCs, neurons and random directions, sampled the same way, and their per-row numbers."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

from gpex_gpytorch.explain.principal_components import (
    LayerActivations,
    LayerPCA,
    StreamingPCA,
    interpretability_summary,
    pc_vs_neuron_grids,
)
from gpex_gpytorch.explain.principal_components.interpretability import (
    direction_grid,
    direction_scores,
    label_entropy,
    label_purity,
    nearest_along_direction,
    quantile_along_direction,
    row_interpretability,
    spearman,
)


def layer_of(rows: torch.Tensor, rows_per_input: int = 1, labels: torch.Tensor | None = None):
    pca = StreamingPCA().update(rows).result()
    layer = LayerPCA("x", "post", "positions", pca, rows_per_input, (rows.shape[1],))
    return LayerActivations(rows, rows_per_input, labels, (rows.shape[1],)), layer


def two_class_layer() -> tuple[LayerActivations, LayerPCA]:
    """Feature 0 separates the classes (variance 25); feature 1 is tiny and alternates classes along its axis."""
    i = torch.arange(20, dtype=torch.float64)
    labels = (i >= 10).long()
    a0 = torch.where(labels == 1, 5.0, -5.0) + 0.001 * i
    a1 = ((i % 10) * 2 + (i // 10)) * 0.01  # ascending order alternates class 0, 1, 0, 1, ...
    a2 = 0.001 * torch.cos(i)
    return layer_of(torch.stack([a0, a1, a2], 1), labels=labels)


def test_quantile_sampling_picks_inputs_by_rank() -> None:
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])
    assert quantile_along_direction(scores, num_points=5, quantile=0.0).tolist() == [1, 3, 4, 2, 0]
    # ranks round([0, 0.5, 1] * 4) = [0, 2, 4]
    assert quantile_along_direction(scores, num_points=3, quantile=0.0).tolist() == [1, 4, 0]
    # quantile 0.2 on 11 scores: ranks round(linspace(0.2, 0.8, 4) * 10) = [2, 4, 6, 8]
    assert quantile_along_direction(torch.arange(11.0).flip(0), num_points=4, quantile=0.2).tolist() == [8, 6, 4, 2]
    with pytest.raises(ValueError, match="num_points"):
        quantile_along_direction(scores, num_points=6)
    with pytest.raises(ValueError, match="quantile"):
        quantile_along_direction(scores, quantile=0.5)


def test_scores_average_the_rows_of_an_input_and_random_directions_are_unit() -> None:
    rows = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # 2 inputs x 2 rows
    activations, layer = layer_of(rows, rows_per_input=2)
    scores, picked, vectors, share = direction_scores(activations, layer, basis="neuron", directions=[0, 1])
    # mean (1, 1); input 0 rows centred: (0,-1), (2,1) -> mean (1, 0); input 1: (-1,-1), (-1,1) -> (-1, 0)
    assert picked == [0, 1]
    torch.testing.assert_close(scores, torch.tensor([[1.0, -1.0], [0.0, 0.0]], dtype=torch.float64))
    # neuron variances over the 4 rows: [2, 4/3]; total 10/3
    torch.testing.assert_close(share, torch.tensor([0.6, 0.4], dtype=torch.float64))
    _, _, random_vectors, _ = direction_scores(activations, layer, basis="random", num_directions=3, seed=4)
    torch.testing.assert_close(random_vectors.norm(dim=1), torch.ones(3, dtype=torch.float64))
    _, _, again, _ = direction_scores(activations, layer, basis="random", num_directions=3, seed=4)
    assert torch.equal(random_vectors, again)
    with pytest.raises(ValueError, match="basis"):
        direction_scores(activations, layer, basis="channel")
    with pytest.raises(ValueError, match="directions"):
        direction_scores(activations, layer, basis="neuron", directions=[2])


def test_row_numbers_by_hand() -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    assert label_purity(labels[:4]) == 0.75
    assert label_entropy(labels[:4]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert label_entropy(labels[:3]) == 0.0
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    row = row_interpretability(torch.tensor([0, 1, 2, 3]), scores, labels, quantile=0.0)
    assert (row.purity, row.monotonicity) == (0.75, pytest.approx(1.0))
    assert row.coverage == pytest.approx(3.0 / 10.0)
    backwards = row_interpretability(torch.tensor([3, 1, 0]), scores, labels, quantile=0.0)
    assert backwards.monotonicity == pytest.approx(-1.0)
    # a row that does not move along its direction: monotonicity 0, coverage 0 (not NaN)
    flat = row_interpretability(torch.tensor([0, 1]), torch.zeros(6), labels, quantile=0.0)
    assert (flat.monotonicity, flat.coverage) == (0.0, 0.0)
    x, y = [3.0, 1.0, 2.0, 2.0, 5.0], [1.0, 0.0, 3.0, 2.0, 4.0]
    assert spearman(torch.tensor(x), torch.tensor(y)) == pytest.approx(spearmanr(x, y).statistic)
    with pytest.raises(ValueError, match="indices"):
        row_interpretability(torch.tensor([0]), scores, labels)
    with pytest.raises(ValueError, match="labels"):
        row_interpretability(torch.tensor([0, 1]), scores, labels[:5])


def test_nearest_neighbour_rows_of_a_small_direction_stay_at_the_mean() -> None:
    """The artefact the quantile rows remove: along a low-variance axis, the nearest rows are the near-mean ones."""
    activations, layer = two_class_layer()
    rows = activations.rows
    mean = layer.pca.mean
    nearest, _ = direction_grid(activations, layer, basis="neuron", sampling="nearest", directions=[1], num_points=4)
    # feature 0's spread (±5) dwarfs feature 1's (0.2): the 4 nearest rows to μ + t e_1 are the 4 rows
    # closest to μ in feature 0, whatever t is
    closest = torch.argsort((rows[:, 0] - mean[0]).abs(), stable=True)[:4]
    assert sorted(nearest[0].tolist()) == sorted(closest.tolist())
    quantile, _ = direction_grid(activations, layer, basis="neuron", sampling="quantile", directions=[1], num_points=4)
    scores = rows[:, 1] - mean[1]
    assert quantile[0].tolist() == quantile_along_direction(scores, num_points=4).tolist()
    assert row_interpretability(quantile[0], scores, activations.labels).monotonicity == pytest.approx(1.0)


def test_summary_scores_every_basis_the_same_way(tmp_path) -> None:
    activations, layer = two_class_layer()
    pc = interpretability_summary(activations, layer, basis="pc", num_directions=1, num_points=4, top_m=4)
    # PC1 is feature 0: its 4 top- and bottom-scoring inputs are each of one class
    assert pc["mean_extremes"]["purity_top"] == 1.0 and pc["mean_extremes"]["purity_bottom"] == 1.0
    assert pc["variance_share"][0] == pytest.approx(float(layer.pca.explained_variance_ratio[0]))
    neuron = interpretability_summary(activations, layer, basis="neuron", directions=[1], num_points=4, top_m=4)
    # along feature 1 the classes alternate: the top 4 are two of each class
    assert neuron["mean_extremes"]["purity_top"] == 0.5
    assert neuron["mean_extremes"]["entropy_top"] == pytest.approx(1.0)
    assert set(neuron["rows"]) == {"quantile", "top", "bottom", "nearest"}
    assert neuron["mean"]["quantile"]["monotonicity"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="top_m"):
        interpretability_summary(activations, layer, basis="pc", num_directions=1, top_m=21)
    with pytest.raises(ValueError, match="labels"):
        interpretability_summary(LayerActivations(activations.rows, 1, None, (3,)), layer)

    record = pc_vs_neuron_grids(
        activations,
        layer,
        torch.rand(20, 1, 8, 8),
        tmp_path / "g.png",
        num_directions=2,
        num_points=4,
        sampling="top",
        bases=("pc", "neuron", "random"),
    )
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert record["sampling"] == "top" and set(record) >= {"pc", "neuron", "random", "png"}
    assert record["pc"]["rows"][0]["purity"] == 1.0  # the top 4 along PC1 are all class 1
    with pytest.raises(ValueError, match="sampling"):
        pc_vs_neuron_grids(activations, layer, torch.rand(20, 8, 8), tmp_path / "h.png", sampling="random")


def test_nearest_along_direction_still_validates() -> None:
    rows = torch.randn(10, 3)
    with pytest.raises(ValueError, match="quantile"):
        nearest_along_direction(rows, rows.mean(0), torch.tensor([1.0, 0.0, 0.0]), quantile=0.6)
