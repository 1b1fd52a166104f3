"""End to end on digits with a small budget: the trained generator beats random and top-k masks at equal sparsity."""

from __future__ import annotations

import math

import pytest
import torch

from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.explain.pathways import (
    PathwayTrainingConfig,
    activation_scores,
    apply_channel_masks,
    class_iou,
    class_mean_scores,
    class_pathways,
    class_scores_for,
    fraction_masks,
    gradient_x_activation_scores,
    layer_channels,
    layer_sparsity,
    matched_counts,
    paper_metrics,
    pathway_embedding_correlation,
    pathway_faithfulness,
    random_channel_scores,
    top_k_masks,
    train_pathway_explainer,
    transfer_faithfulness,
)
from gpex_gpytorch.models import DigitsCNN, fit_classifier

LAYERS = ["features.0", "features.2", "features.5", "penultimate.1"]


@pytest.fixture(scope="module")
def trained():
    train, test = load_digits(seed=0)
    torch.manual_seed(0)
    model = fit_classifier(DigitsCNN(width=128), train, epochs=10, seed=0)
    config = PathwayTrainingConfig(epochs=15, seed=0)
    explainer, history = train_pathway_explainer(model, LAYERS, train, config)
    return model, explainer, history, train, test


@pytest.mark.slow
def test_generator_beats_random_and_topk_at_equal_sparsity(trained):
    model, explainer, history, train, test = trained
    x, y = test.tensors
    assert len(history) == 15
    masks = explainer.masks(x)
    assert set(masks) == set(LAYERS)
    assert all(bool(((m == 0) | (m == 1)).all()) for m in masks.values())
    sparsity = layer_sparsity(masks)
    assert all(0.05 < s < 0.98 for s in sparsity.values()), sparsity

    ours = pathway_faithfulness(model, x, masks, labels=y)
    counts = matched_counts(masks)
    random = pathway_faithfulness(
        model, x, top_k_masks(random_channel_scores(layer_channels(model, LAYERS), len(x)), counts)
    )
    topk = pathway_faithfulness(model, x, top_k_masks(activation_scores(model, x, LAYERS), counts))
    # Equal sparsity, instance by instance and layer by layer.
    assert layer_sparsity(top_k_masks(activation_scores(model, x, LAYERS), counts)) == pytest.approx(sparsity)
    for baseline in (random, topk):
        assert ours["agreement"] >= baseline["agreement"]
        assert ours["confidence_ratio"] > baseline["confidence_ratio"]
        assert ours["kl"] < baseline["kl"]
    assert ours["agreement"] > 0.9

    predicted = model(x).argmax(1)
    relevance = class_iou(masks, predicted)
    assert relevance.intra > relevance.inter

    pathways = class_pathways(explainer.masks(train.tensors[0]), model(train.tensors[0]).argmax(1), 10)
    transfer = transfer_faithfulness(model, x, pathways)
    assert transfer["agreement"] > transfer["agreement_other_class"]

    result = pathway_embedding_correlation(masks, x, model.embed, classes=predicted, n_permutations=9)
    # inputs with overlapping pathways sit closer in feature space than any of 9 shuffles of the inputs
    assert result.spearman > 0.1
    assert result.p_value == pytest.approx(0.1)

    # the class-mean gradient x activation baseline: one ranking per predicted class, learnt on train
    predicted_train = model(train.tensors[0]).argmax(1)
    table = class_mean_scores(gradient_x_activation_scores(model, train.tensors[0], LAYERS), predicted_train, 10)
    class_mean = class_scores_for(table, predicted)
    same_size = paper_metrics(model, x, fraction_masks(class_mean, 0.3), classes=predicted)
    assert same_size["acIOU"] == pytest.approx(100.0)  # same class, same count: the very same mask
    assert same_size["sparsity"] == pytest.approx(
        100.0 * (1 - sum(math.ceil(0.3 * c) / c for c in (32, 64, 64, 128)) / 4)
    )
    matched = pathway_faithfulness(model, x, top_k_masks(class_mean, counts))
    assert matched["agreement"] > 0.95


def test_generator_is_reproducible_and_leaves_target_untouched():
    torch.manual_seed(1)
    model = DigitsCNN(width=16).eval()
    x = torch.rand(40, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    config = PathwayTrainingConfig(epochs=2, batch_size=20, seed=3)
    state = torch.get_rng_state()
    a, _ = train_pathway_explainer(model, ["features.0", "penultimate.1"], x, config)
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = train_pathway_explainer(model, ["features.0", "penultimate.1"], x, config)
    for pa, pb in zip(a.generator.parameters(), b.generator.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    # all-ones masks still reproduce the model exactly
    ones = {n: torch.ones(40, c) for n, c in layer_channels(model, ["features.0", "penultimate.1"]).items()}
    with torch.no_grad(), apply_channel_masks(model, ones):
        masked = model(x)
    with torch.no_grad():
        assert torch.equal(masked, model(x))
