"""explain(): one result whose numbers equal the separate calls and brute force; tables, JSON, figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from gpex_gpytorch import CachedDeepKernel, GPEXModel
from gpex_gpytorch.distillation import SavedExplainer
from gpex_gpytorch.explain import explain, nearest_neighbours

M, H, D = 40, 3, 4


def _model(example_shape: tuple[int, ...]) -> tuple[GPEXModel, torch.Tensor, torch.Tensor, nn.Module]:
    torch.manual_seed(0)
    width = int(torch.tensor(example_shape).prod())
    net = nn.Sequential(nn.Flatten(), nn.Linear(width, 16), nn.Tanh(), nn.Linear(16, H * D))
    ann = nn.Sequential(nn.Flatten(), nn.Linear(width, H))
    x = torch.randn(M, *example_shape)
    kernel = CachedDeepKernel(net, num_inducing=M, num_heads=H, embedding_dim=D)
    kernel.fill(x, progress=False)
    with torch.no_grad():
        model = GPEXModel(kernel, ann(x), noise=0.5).eval()
    labels = torch.arange(M) % H
    return model, x, labels, ann


def test_numbers_match_the_separate_calls_and_brute_force() -> None:
    model, x_ind, labels, ann = _model((6,))
    x = torch.randn(5, 6)
    result = explain(model, x, k=4, inducing_labels=labels, network=ann, num_contributions=3)
    mean, variance = model.predict(x)
    assert torch.equal(result.mean, mean) and torch.equal(result.variance, variance)
    assert torch.equal(result.prediction, mean.argmax(1)) and torch.equal(result.heads, mean.argmax(1))
    with torch.no_grad():
        assert torch.equal(result.network_output, ann(x))
        # Brute force in float64: cosine between f_l(x) and every f_l(x̃_m), head l = predicted.
        f = model.covar_module.feature_extractor
        q = f(x).double().reshape(5, H, D)[torch.arange(5), result.heads]
        u = f(x_ind).double().reshape(M, H, D)[:, result.heads].transpose(0, 1)  # shape: (5, M, D)
    cosine = torch.nn.functional.cosine_similarity(q.unsqueeze(1), u, dim=-1)
    top, order = cosine.topk(4, dim=1)
    assert torch.equal(result.neighbour_indices, order)
    torch.testing.assert_close(result.similarities.double(), top, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        result.kernel_values.double(), (q.unsqueeze(1) * u).sum(-1).gather(1, order), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(result.neighbour_labels, labels[order])
    assert torch.equal(result.neighbour_indices, nearest_neighbours(model, x, k=4).indices)
    # Contributions sum to the explained head's mean; positives are positive, negatives negative.
    head_mean = mean[torch.arange(5), result.heads]
    torch.testing.assert_close(result.contributions.total, head_mean, rtol=1e-4, atol=1e-5)
    assert bool((result.contributions.positive[:, 0] >= result.contributions.positive[:, -1]).all())
    assert bool((result.contributions.negative <= 0).all())


def test_tables_json_and_tabular_plot(tmp_path: Path) -> None:
    model, x_ind, labels, ann = _model((6,))
    x = torch.randn(3, 6)
    names = [f"feature {j}" for j in range(6)]
    result = explain(model, x, k=4, inducing_inputs=x_ind, inducing_labels=labels, head_names=["a", "b", "c"],
                     feature_names=names, network=ann)  # fmt: skip
    frame = result.to_frame("neighbours")
    assert len(frame) == 3 * 4
    assert frame["index"].tolist() == result.neighbour_indices.flatten().tolist()
    assert frame["similarity"].tolist() == pytest.approx(result.similarities.flatten().tolist())
    assert frame["label"].tolist() == labels[result.neighbour_indices].flatten().tolist()
    queries = result.to_frame("queries")
    assert queries["head_name"].tolist() == [["a", "b", "c"][h] for h in result.heads.tolist()]
    assert queries["variance"].tolist() == pytest.approx(
        result.variance.gather(1, result.heads[:, None]).flatten().tolist()
    )
    assert len(result.to_frame("contributions")) == 3 * 2 * 5
    data = json.loads(result.to_json(tmp_path / "explanation.json"))
    assert json.loads((tmp_path / "explanation.json").read_text()) == data
    assert len(data["queries"]) == 3 and len(data["queries"][1]["neighbours"]) == 4
    assert data["queries"][1]["mean_all_heads"] == pytest.approx(result.mean[1].tolist())
    assert data["queries"][2]["neighbours"][0]["index"] == int(result.neighbour_indices[2, 0])
    fig = result.plot(tmp_path / "explanation.png", max_queries=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names
    assert (tmp_path / "explanation.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="table: expected one of"):
        result.to_records("rows")


def test_image_inputs_plot_a_neighbour_grid_and_saved_explainers_supply_their_data(tmp_path: Path) -> None:
    model, x_ind, labels, _ = _model((1, 4, 4))
    saved = SavedExplainer(model, inducing_inputs=x_ind, inducing_labels=labels, head_names=["u", "v", "w"])
    result = explain(saved, torch.randn(2, 1, 4, 4), k=3)
    assert result.neighbour_inputs.shape == (2, 3, 1, 4, 4)
    assert torch.equal(result.neighbour_inputs[1, 0], x_ind[result.neighbour_indices[1, 0]])
    assert result.head_names == ["u", "v", "w"]
    fig = result.plot(tmp_path / "grid.png")
    assert len(fig.axes) == 2 * (3 + 1)
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_a_single_example_is_told_to_add_a_batch_dimension() -> None:
    model, x_ind, _, _ = _model((6,))
    with pytest.raises(ValueError, match=r"inputs: expected a batch of shape \(N, 6\).*add a batch dimension"):
        explain(model, torch.randn(6), inducing_inputs=x_ind)
    with pytest.raises(ValueError, match="head_names: expected 3 names"):
        explain(model, torch.randn(2, 6), head_names=["a"])
    with pytest.raises(TypeError, match="model: expected a GPEXModel or a SavedExplainer"):
        explain(object(), torch.randn(2, 6))


def test_to_frame_without_pandas_says_what_to_use(monkeypatch) -> None:
    model, _, _, _ = _model((6,))
    result = explain(model, torch.randn(2, 6), k=2)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"needs pandas.*to_records\(\)"):
        result.to_frame()
    assert len(result.to_records()) == 4


def test_plot_faithfulness_takes_head_names(tmp_path: Path) -> None:
    from gpex_gpytorch.distillation import plot_faithfulness

    mean, out = torch.randn(20, 3), torch.randn(20, 3)
    assert plot_faithfulness(mean, out, tmp_path / "f.png", head_names=["a", "b", "c"]).stat().st_size > 0
    with pytest.raises(ValueError, match=r"head_names: expected 3 names \(one per head\), got 2"):
        plot_faithfulness(mean, out, tmp_path / "g.png", head_names=["a", "b"])
