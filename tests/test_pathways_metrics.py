"""Metrics, baselines, objectives and the GPEX connection on tiny cases with known answers."""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from gpex_gpytorch.explain.pathways import (
    PathwayExplainer,
    PathwayGenerator,
    PathwayObjective,
    class_iou,
    class_mean_scores,
    class_pathways,
    class_scores_for,
    deletion_insertion_curves,
    fraction_masks,
    gradient_x_activation_scores,
    layer_sparsity,
    matched_counts,
    minimal_faithful_masks,
    paper_metrics,
    pathway_embedding_correlation,
    pathway_faithfulness,
    pathway_kernel_survival,
    random_channel_scores,
    top_k_masks,
    transfer_faithfulness,
)
from gpex_gpytorch.explain.pathways.generator import binarize
from gpex_gpytorch.explain.pathways.gpex_connection import kernel_similarity, spearman_upper, submodule_inputs
from gpex_gpytorch.explain.pathways.metrics import mask_iou, pairwise_iou
from gpex_gpytorch.explain.pathways.objectives import (
    class_relevance_loss,
    faithfulness_gate,
    faithfulness_loss,
    mask_density,
    prototype_loss,
    sparsity_loss,
)


def test_iou_of_hand_made_masks():
    a = torch.tensor([1.0, 1.0, 0.0, 0.0])
    b = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert mask_iou(a, b).item() == pytest.approx(1 / 3)
    assert mask_iou(a, a).item() == 1.0
    assert mask_iou(a, 1 - a).item() == 0.0
    assert mask_iou(torch.zeros(4), torch.zeros(4)).item() == 1.0  # two empty pathways are identical
    with pytest.raises(ValueError, match="b: expected 4 channels"):
        mask_iou(a, torch.ones(3))


def test_pairwise_and_class_iou():
    masks = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.float32)
    iou = pairwise_iou(masks)
    expected = torch.tensor(
        [[1, 1, 0, 1 / 4], [1, 1, 0, 1 / 4], [0, 0, 1, 2 / 3], [1 / 4, 1 / 4, 2 / 3, 1]], dtype=torch.float32
    )
    assert torch.allclose(iou, expected)
    result = class_iou(masks, torch.tensor([0, 0, 1, 1]))
    assert result.intra == pytest.approx((1 + 2 / 3) / 2)
    assert result.inter == pytest.approx((0 + 1 / 4 + 0 + 1 / 4) / 4)
    assert result.per_class == pytest.approx({0: 1.0, 1: 2 / 3})
    assert result.ratio == pytest.approx(result.intra / result.inter)
    # multi-layer pathways: mean of per-layer IoUs
    layered = {"a": masks[:, :2], "b": masks[:, 2:]}
    assert pairwise_iou(layered)[0, 3].item() == pytest.approx((1 / 2 + 0) / 2)
    with pytest.raises(ValueError, match=r"classes: expected shape \(4,\)"):
        class_iou(masks, torch.tensor([0, 1]))


def test_layer_sparsity_and_density():
    masks = {
        "a": torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]),
        "b": torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
    }
    assert layer_sparsity(masks) == pytest.approx({"a": 5 / 8, "b": 1 / 2})
    assert torch.allclose(mask_density(masks), torch.tensor([(1 / 4 + 1) / 2, (1 / 2 + 0) / 2]))
    assert sparsity_loss(masks).item() == pytest.approx(((1 / 4 + 1) / 2 + 1 / 4) / 2)
    assert sparsity_loss(masks, torch.tensor([1.0, 0.0])).item() == pytest.approx(5 / 8 / 2)
    with pytest.raises(ValueError, match=r"masks\['a'\]: expected shape \(N, C\)"):
        layer_sparsity({"a": torch.ones(3)})
    with pytest.raises(ValueError, match="same number of instances"):
        layer_sparsity({"a": torch.ones(2, 3), "b": torch.ones(3, 3)})


def test_top_k_masks_and_matched_counts():
    scores = {"a": torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0]])}
    masks = top_k_masks(scores, {"a": torch.tensor([2, 1])})
    assert torch.equal(masks["a"], torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(matched_counts(masks)["a"], torch.tensor([2, 1]))
    assert top_k_masks(scores, {"a": 0})["a"].sum() == 0
    assert top_k_masks(scores, {"a": 4})["a"].sum() == 8
    with pytest.raises(ValueError, match=r"counts\['a'\]: expected values in \[0, 4\]"):
        top_k_masks(scores, {"a": 5})
    with pytest.raises(ValueError, match="counts: expected the layers"):
        top_k_masks(scores, {"b": 1})
    random = top_k_masks(random_channel_scores({"a": 10}, 50, seed=0), {"a": 3})
    assert torch.equal(random["a"].sum(1), torch.full((50,), 3.0))


def test_binarize_straight_through():
    p = torch.tensor([0.2, 0.5, 0.8], requires_grad=True)
    st = binarize(p, "straight_through")
    assert torch.equal(st.detach(), torch.tensor([0.0, 1.0, 1.0]))
    st.sum().backward()
    assert torch.equal(p.grad, torch.ones(3))
    assert torch.equal(binarize(p, "hard"), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="mode: expected one of"):
        binarize(p, "bad")  # type: ignore[arg-type]


def test_objective_terms():
    full = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    assert faithfulness_loss(full, full).item() == pytest.approx(0.0, abs=1e-7)
    assert faithfulness_loss(torch.zeros(2, 3), full).item() > 0
    with pytest.raises(ValueError, match="masked_logits: expected the shape"):
        faithfulness_loss(torch.zeros(3, 3), full)
    assert torch.allclose(faithfulness_gate(full, full), torch.ones(2))
    assert torch.equal(faithfulness_gate(full.roll(1, dims=1), full, "agreement"), torch.tensor([0.0, 0.0]))
    assert torch.equal(faithfulness_gate(torch.zeros(2, 3), full, "none"), torch.ones(2))
    # a masked network keeping < threshold of the confidence closes the gate
    assert faithfulness_gate(torch.zeros(2, 3), full, "confidence", 0.8).max().item() == 0.0
    # contrastive/prototype: same-class identical masks give lower loss than shuffled classes
    masks = {
        "a": torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    }
    good, bad = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    assert class_relevance_loss(masks, good) < class_relevance_loss(masks, bad)
    assert prototype_loss(masks, good).item() == pytest.approx(0.0)
    assert prototype_loss(masks, bad).item() > 0
    assert class_relevance_loss(masks, torch.arange(4)).item() == 0.0  # no positives
    terms = PathwayObjective()(masks, full[[0, 1, 0, 1]], full[[0, 1, 0, 1]])
    assert set(terms) == {"loss", "faithfulness", "sparsity", "relevance", "density", "gate"}


class Linear2(nn.Module):
    """logits = W2 relu(W1 x) with hand-set weights."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(2, 3, bias=False)
        self.out = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.out.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def test_faithfulness_curves_transfer_and_gradient_scores():
    net = Linear2()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    # hidden = [[1,0,1],[0,1,1],[2,1,3]]; logits = [[3,-1],[2,0],[8,-2]] -> all class 0
    full = net(x)
    assert torch.equal(full.argmax(1), torch.tensor([0, 0, 0]))
    keep_all = {"hidden": torch.ones(3, 3)}
    assert pathway_faithfulness(net, x, keep_all, labels=torch.tensor([0, 0, 1])) == pytest.approx(
        {"agreement": 1.0, "confidence_ratio": 1.0, "kl": 0.0, "accuracy": 2 / 3, "full_accuracy": 2 / 3}, abs=1e-6
    )
    # dropping unit 2 (weight 2 to class 0, -1 to class 1): logits [[1,0],[0,1],[2,1]] -> second flips
    drop = {"hidden": torch.tensor([[1.0, 1.0, 0.0]] * 3)}
    assert pathway_faithfulness(net, x, drop)["agreement"] == pytest.approx(2 / 3)
    # gradient x activation for class 0: d logit0 / d h = [1, 0, 2] -> scores h * [1, 0, 2]
    scores = gradient_x_activation_scores(net, x, ["hidden"])
    assert torch.allclose(scores["hidden"], torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 2.0], [2.0, 0.0, 6.0]]))
    curves = deletion_insertion_curves(net, x, scores, fractions=(0.0, 1.0))
    assert curves.insertion_agreement[-1] == 1.0 and curves.deletion_agreement[0] == 1.0
    assert curves.insertion_confidence[-1] == pytest.approx(1.0)
    assert curves.auc("insertion_agreement") == pytest.approx((curves.insertion_agreement[0] + 1.0) / 2)
    with pytest.raises(ValueError, match="fractions: expected values in"):
        deletion_insertion_curves(net, x, scores, fractions=(1.5,))
    # class pathways: quorum vote; transfer with the pathway of class 0 = units kept by >= half
    masks = {"hidden": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])}
    pathways = class_pathways(masks, torch.tensor([0, 0, 0]), 2)
    assert torch.equal(pathways["hidden"], torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    transfer = transfer_faithfulness(net, x, pathways)
    assert transfer["agreement"] == 1.0 and transfer["agreement_other_class"] == 1.0
    assert transfer["density"] == pytest.approx(2 / 3)


def test_spearman_against_scipy_and_permutation_test():
    rng = np.random.default_rng(0)
    a = rng.random((12, 12))
    a = a + a.T
    b = a + 0.3 * rng.random((12, 12))
    b = b + b.T
    rows, cols = np.triu_indices(12, 1)
    assert spearman_upper(a, b) == pytest.approx(spearmanr(a[rows, cols], b[rows, cols]).statistic)
    # pathways built from an embedding's clusters correlate with that embedding
    torch.manual_seed(0)
    centres = torch.randn(3, 5) * 5
    labels = torch.arange(30) % 3
    x = centres[labels] + 0.1 * torch.randn(30, 5)
    proto = (torch.rand(3, 40) > 0.5).float()
    flips = (torch.rand(30, 40) < 0.05).float()
    masks = (proto[labels] + flips) % 2
    result = pathway_embedding_correlation(masks, x, lambda v: v, classes=labels, n_permutations=49)
    assert result.spearman > 0.5
    assert result.p_value == pytest.approx(1 / 50)
    assert result.within_class_spearman is not None and abs(result.within_class_spearman) < 0.5
    # (H, N, D) embeddings average the heads' kernels
    heads = torch.stack([x, x])
    assert torch.allclose(kernel_similarity(heads), kernel_similarity(x))
    cosine = kernel_similarity(x, "cosine")
    assert torch.allclose(cosine.diagonal(), torch.ones(30, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"embed: expected a tensor of shape \(30, D\)"):
        pathway_embedding_correlation(masks, x, lambda v: v[:5])
    with pytest.raises(ValueError, match=r"x: expected 30 inputs"):
        pathway_embedding_correlation(masks, x[:4], lambda v: v)


def test_generator_shapes_and_errors():
    net = Linear2()
    explainer = PathwayExplainer.build(net, ["hidden"], torch.randn(4, 2))
    masks = explainer.masks(torch.randn(5, 2))
    assert masks["hidden"].shape == (5, 3)
    soft = explainer.masks(torch.randn(5, 2), mode="soft")
    assert bool(((soft["hidden"] > 0) & (soft["hidden"] < 1)).all())
    scores = explainer.scores(torch.randn(5, 2))
    assert math.isclose(float(scores["hidden"].min()), float(scores["hidden"].min()))
    with pytest.raises(ValueError, match="mode: expected one of"):
        explainer.masks(torch.randn(5, 2), mode="binary")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"read_layers: unknown layer 'hiden'.*closest names: \['hidden'\]"):
        PathwayExplainer.build(net, ["hidden"], torch.randn(4, 2), read_layers=["hiden"])
    with pytest.raises(ValueError, match="mask_channels: expected at least one"):
        PathwayGenerator({"a": 3}, {})
    generator = PathwayGenerator({"a": 3}, {"a": 3}, num_classes=2)
    with pytest.raises(ValueError, match=r"class_probs: expected shape \(2, 2\)"):
        generator({"a": torch.randn(2, 3)})
    with pytest.raises(ValueError, match="summaries: missing read layers"):
        generator({"b": torch.randn(2, 3)}, torch.ones(2, 2))


def test_class_mean_scores_and_lookup():
    scores = {"layer": torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [0.0, 10.0]])}
    table = class_mean_scores(scores, torch.tensor([0, 0, 1, 1]), 3)
    assert torch.equal(table["layer"], torch.tensor([[2.0, 3.0], [5.0, 5.0], [0.0, 0.0]]))  # empty class: zeros
    looked_up = class_scores_for(table, torch.tensor([2, 0]))
    assert torch.equal(looked_up["layer"], torch.tensor([[0.0, 0.0], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="classes"):
        class_mean_scores(scores, torch.tensor([0, 0, 1, 3]), 3)
    with pytest.raises(ValueError, match="classes"):
        class_scores_for(table, torch.tensor([3]))


def test_paper_metrics_by_hand():
    net = Linear2()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    # full logits [[3,-1],[2,0],[8,-2]]: p(class 0) = sigmoid(4), sigmoid(2), sigmoid(10)
    masks = {"hidden": torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])}
    # masked logits [[3,-1],[2,-1],[2,1]]: q = sigmoid(4), sigmoid(3) (> p: an increase), sigmoid(1)
    s = torch.sigmoid
    p10, q1 = float(s(torch.tensor(10.0))), float(s(torch.tensor(1.0)))
    metrics = paper_metrics(net, x, masks)
    assert metrics["mDC"] == pytest.approx(100.0 * ((p10 - q1) / p10) / 3, rel=1e-6)
    assert metrics["mIC"] == pytest.approx(100.0 / 3)
    assert metrics["sparsity"] == pytest.approx(100.0 * 2 / 9)
    # one class: IoUs 2/3, 2/3, 1/3 over the three pairs
    assert metrics["acIOU"] == pytest.approx(100.0 * 5 / 9)


def test_fraction_masks_and_minimal_faithful_fraction():
    scores = {"a": torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])}
    assert fraction_masks(scores, 0.5)["a"].tolist() == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]]
    assert fraction_masks(scores, torch.tensor([0.2, 1.0]))["a"].sum(1).tolist() == [1, 5]
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            fraction_masks(scores, bad)

    net = Linear2()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    ranking = {"hidden": torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.5], [1.0, 0.0, 0.0]])}
    masks, chosen = minimal_faithful_masks(net, x, ranking, fractions=(1 / 3, 2 / 3, 1.0))
    # instance 1 keeping only unit 1 predicts class 1; with units 1 and 2 it is back to class 0
    torch.testing.assert_close(chosen, torch.tensor([1 / 3, 2 / 3, 1 / 3], dtype=torch.float64))
    assert masks["hidden"].tolist() == [[0, 0, 1], [0, 1, 1], [1, 0, 0]]
    assert pathway_faithfulness(net, x, masks)["agreement"] == 1.0
    # asking for 99% of the confidence: instance 0 on unit 2 alone keeps sigmoid(3)/sigmoid(4) = 0.97 only
    _, strict = minimal_faithful_masks(net, x, ranking, fractions=(1 / 3, 2 / 3, 1.0), min_confidence_ratio=0.99)
    assert strict[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="fractions"):
        minimal_faithful_masks(net, x, ranking, fractions=(0.0, 0.5))
    with pytest.raises(ValueError, match="min_confidence_ratio"):
        minimal_faithful_masks(net, x, ranking, min_confidence_ratio=1.5)


def test_gp_survival_against_brute_force():
    from gpex_gpytorch.kernels import CachedDeepKernel
    from gpex_gpytorch.models import GPEXModel

    torch.manual_seed(0)
    pipeline = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x, inducing_x = torch.randn(30, 4), torch.randn(40, 4)
    masks = {"0": (torch.rand(30, 6) > 0.4).float()}
    masked = submodule_inputs(pipeline, "2", x, masks)
    with torch.no_grad():
        torch.testing.assert_close(masked, torch.relu(pipeline[0](x) * masks["0"]))
        full = submodule_inputs(pipeline, "2", x)
        torch.testing.assert_close(full, torch.relu(pipeline[0](x)))
        inducing = torch.relu(pipeline[0](inducing_x))
        kernel = CachedDeepKernel(nn.Linear(6, 3 * 2), num_inducing=40, num_heads=3, embedding_dim=2)
        kernel.fill(inducing)
        gp = GPEXModel(kernel, pipeline[2](inducing), noise=0.5)
    same = pathway_kernel_survival(gp, full, full, k=5)
    assert (same.embedding_cosine, same.neighbour_overlap, same.prediction_agreement) == pytest.approx((1, 1, 1))

    result = pathway_kernel_survival(gp, full, masked, k=5)
    with torch.no_grad():
        heads = gp.predict(full)[0].argmax(1)
        rows = torch.arange(30)
        a, b = kernel.embed(full)[heads, rows].double(), kernel.embed(masked)[heads, rows].double()
        cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
        # Neighbours by kernel correlation (the default metric): cosines of the embeddings.
        u = torch.nn.functional.normalize(kernel.embed(inducing).double(), dim=-1)  # (H, M, D)
        a_unit, b_unit = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
        top_full = torch.einsum("nd,nmd->nm", a_unit, u[heads]).topk(5, dim=1).indices
        top_masked = torch.einsum("nd,nmd->nm", b_unit, u[heads]).topk(5, dim=1).indices
        overlap = [len(set(f.tolist()) & set(m.tolist())) / 5 for f, m in zip(top_full, top_masked, strict=True)]
        kept = (gp.predict(masked)[0].argmax(1) == heads).double().mean()
    assert result.embedding_cosine == pytest.approx(float(cosine.mean()), abs=1e-6)
    assert result.neighbour_overlap == pytest.approx(sum(overlap) / 30)
    assert result.prediction_agreement == pytest.approx(float(kept))
    assert result.embedding_cosine < 1.0  # the masks did change the input
    with pytest.raises(ValueError, match="masked_inputs"):
        pathway_kernel_survival(gp, full, masked[:5])
    with pytest.raises(ValueError, match="submodule"):
        submodule_inputs(pipeline, "head", x)
    with pytest.raises(ValueError, match="masks"):
        submodule_inputs(pipeline, "2", x, {"0": masks["0"][:3]})


def test_old_names_are_deprecated_aliases_of_the_renamed_ones():
    from gpex_gpytorch.explain.pathways import faithfulness, random_scores

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    x, masks = torch.randn(6, 4), {"0": torch.ones(6, 3)}
    with pytest.warns(DeprecationWarning, match="faithfulness is deprecated; use .*pathway_faithfulness"):
        assert faithfulness(net, x, masks) == pathway_faithfulness(net, x, masks)
    with pytest.warns(DeprecationWarning, match="random_scores is deprecated; use .*random_channel_scores"):
        old = random_scores({"0": 3}, 5, seed=1)
    assert torch.equal(old["0"], random_channel_scores({"0": 3}, 5, seed=1)["0"])
    sys.modules.pop("gpex_gpytorch.explain.pathways.baselines", None)
    with pytest.warns(DeprecationWarning, match="pathways.baselines is deprecated; import from .*mask_baselines"):
        baselines = importlib.import_module("gpex_gpytorch.explain.pathways.baselines")
    assert baselines.top_k_masks is top_k_masks and baselines.random_channel_scores is random_channel_scores
