"""Label review: the paper's protocol on hand-built cases, the self-score, the views, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gpex_gpytorch.explain.label_review import (
    kernel_similarities,
    label_review,
    label_self_scores,
    plot_review,
    rank_by_score,
    review_order,
    write_review_html,
)
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel


def _identity_model(train: torch.Tensor, heads: int = 2, noise: float = 1.0) -> GPEXModel:
    """Every head embeds an input as itself, so kernel similarities are plain dot products."""
    d = train.shape[1]
    net = nn.Linear(d, heads * d, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(d).repeat(heads, 1))
    kernel = CachedDeepKernel(net, train.shape[0], heads, d)
    kernel.fill(train, progress=False)
    return GPEXModel(kernel, torch.zeros(train.shape[0], heads), noise=noise)


def test_review_order_known_answer() -> None:
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 1.0, 2.0, 3.0]])
    ranking = review_order(scores)
    # Row 0 takes 0; row 1's best (0) is shown, so it takes 3; row 0 takes 1; row 1 is left with 2.
    assert ranking.indices.tolist() == [0, 3, 1, 2]
    assert ranking.sources.tolist() == [0, 1, 0, 1]
    assert ranking.scores.tolist() == [4.0, 3.0, 3.0, 2.0]
    assert review_order(scores, max_shown=2).indices.tolist() == [0, 3]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(0, 10_000))
def test_review_order_shows_each_instance_once(rows: int, cols: int, seed: int) -> None:
    scores = torch.randint(0, 4, (rows, cols), generator=torch.Generator().manual_seed(seed)).double()  # many ties
    ranking = review_order(scores)
    assert sorted(ranking.indices.tolist()) == list(range(cols))
    assert ranking.sources.tolist() == [i % rows for i in range(cols)]  # rows take turns


def test_rank_by_score_descending_stable() -> None:
    ranking = rank_by_score(torch.tensor([0.5, 2.0, 0.5, 1.0]))
    assert ranking.indices.tolist() == [1, 3, 0, 2]
    assert ranking.sources.tolist() == [-1] * 4


def test_label_review_follows_protocol_on_hand_built_case() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.2], [0.2, 0.8]])
    model = _identity_model(train)
    test = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([1, 1, 0])
    predictions = torch.tensor([0, 1, 1])  # test 1 is right, tests 0 and 2 are wrong
    ranking = label_review(model, test, labels, predictions=predictions, metric="kernel")
    # Test 0 ranks 0, 2, 3, 1; test 2 ranks 1, 3, 2, 0: they alternate over unshown instances.
    assert ranking.indices.tolist() == [0, 1, 2, 3]
    assert ranking.sources.tolist() == [0, 2, 0, 2]
    torch.testing.assert_close(ranking.scores, torch.tensor([1.0, 0.9, 0.8, 0.74], dtype=ranking.scores.dtype))
    # The default ranks by cosine: the same order here, with scores 1, 0.9/|t2|, 0.8/|x2|, 0.74/(|t2||x3|).
    cosine = label_review(model, test, labels, predictions=predictions)
    assert cosine.indices.tolist() == [0, 1, 2, 3]
    norm_t2, norm_x = 0.82**0.5, 0.68**0.5
    expected = torch.tensor([1.0, 0.9 / norm_t2, 0.8 / norm_x, 0.74 / (norm_t2 * norm_x)], dtype=cosine.scores.dtype)
    torch.testing.assert_close(cosine.scores, expected)
    everyone = label_review(model, test, predictions=predictions, instances="all")
    assert sorted(everyone.indices.tolist()) == [0, 1, 2, 3]
    assert everyone.sources.tolist()[:3] == [0, 1, 2]


@pytest.mark.parametrize("metric", ["kernel", "correlation", "distance"])
def test_kernel_similarities_match_brute_force(metric: str) -> None:
    torch.manual_seed(0)
    kernel = CachedDeepKernel(nn.Linear(6, 3 * 4), 25, 3, 4)
    kernel.fill(torch.randn(25, 6), progress=False)
    model = GPEXModel(kernel, torch.randn(25, 3))
    x, heads = torch.randn(5, 6), torch.tensor([0, 2, 1, 2, 0])
    sims, chosen = kernel_similarities(model, x, heads, metric=metric, chunk_size=7)
    with torch.no_grad():
        queries = kernel.embed(x)
    for t in range(5):
        u, q = kernel.embeddings[int(heads[t])].double(), queries[int(heads[t]), t].double()
        expected = {
            "kernel": u @ q,
            "correlation": torch.nn.functional.cosine_similarity(u, q[None], dim=1),
            "distance": -(u - q).norm(dim=1),
        }[metric]
        torch.testing.assert_close(sims[t], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(chosen, heads)


def test_self_score_equals_brute_force_leave_one_out() -> None:
    torch.manual_seed(1)
    train = torch.randn(12, 3)
    labels = torch.randint(0, 2, (12,))
    model = _identity_model(train, heads=2, noise=0.5)
    ranking = label_self_scores(model, labels)
    scores = torch.empty(12, dtype=torch.float64)
    x = train.double()
    targets = torch.nn.functional.one_hot(labels, 2).double()
    for i in range(12):
        keep = torch.arange(12) != i
        w = torch.linalg.solve(x[keep].T @ x[keep] + 0.5 * torch.eye(3, dtype=torch.float64), x[keep].T @ targets[keep])
        loo = x[i] @ w
        scores[i] = loo[1 - labels[i]] - loo[labels[i]]
    torch.testing.assert_close(ranking.scores, scores[ranking.indices])
    assert torch.equal(ranking.indices, torch.sort(scores, descending=True, stable=True).indices)


def test_self_score_puts_the_flipped_label_first() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0]) + 0.05 * torch.randn(10, 2, generator=generator)
    b = torch.tensor([0.0, 1.0]) + 0.05 * torch.randn(10, 2, generator=generator)
    train = torch.cat([a, b])
    labels = torch.tensor([0] * 10 + [1] * 10)
    labels[3] = 1  # the one corrupted label
    assert int(label_self_scores(_identity_model(train), labels).indices[0]) == 3


def test_views_write_png_and_html(tmp_path: Path) -> None:
    train = torch.rand(6, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ranking = rank_by_score(torch.arange(6, dtype=torch.float64))
    plot_review(ranking, train, labels, tmp_path / "suspects.png", top=4, class_names=["zero", "one", "two"])
    page = write_review_html(ranking, train, labels, tmp_path / "suspects.html", top=3)
    assert (tmp_path / "suspects.png").stat().st_size > 0
    text = page.read_text()
    assert "data:image/png;base64," in text and text.count("<tr>") == 4  # header + 3 suspects


def test_bad_input_is_named() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.2]])
    model = _identity_model(train)
    test = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="max_shown"):
        review_order(torch.ones(2, 3), max_shown=4)
    with pytest.raises(ValueError, match="max_shown"):
        label_review(model, test, torch.tensor([1, 1]), predictions=torch.tensor([0, 0]), max_shown=0)
    with pytest.raises(ValueError, match="scores"):
        review_order(torch.ones(0, 3))
    with pytest.raises(ValueError, match="scores"):
        rank_by_score(torch.ones(0))
    with pytest.raises(ValueError, match="test_inputs"):
        label_review(model, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="test_labels"):
        label_review(model, test, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="test_labels"):
        label_review(model, test)  # misclassified needs labels
    with pytest.raises(ValueError, match="test_labels"):
        label_review(model, test, torch.tensor([0, 1]), predictions=torch.tensor([0, 1]))  # nothing wrong
    with pytest.raises(ValueError, match="predictions"):
        label_review(model, test, torch.tensor([0, 1]), predictions=torch.tensor([0]))
    with pytest.raises(ValueError, match="instances"):
        label_review(model, test, instances="some")
    with pytest.raises(ValueError, match=r"predictions: expected classes in \[0, 1\]"):
        label_review(model, test, torch.tensor([0, 1]), predictions=torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="metric: expected one of"):
        label_review(model, test, torch.tensor([0, 1]), predictions=torch.tensor([1, 1]), metric="cosine")
    with pytest.raises(ValueError, match="train_labels"):
        label_self_scores(model, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="train_labels"):
        label_self_scores(model, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="top"):
        plot_review(rank_by_score(torch.ones(3)), train, torch.tensor([0, 1, 0]), top=0)
    with pytest.raises(ValueError, match="labels"):
        plot_review(rank_by_score(torch.ones(3)), train, torch.tensor([0, 1]))
