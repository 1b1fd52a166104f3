"""Save → load gives bit-identical predictions without data or retraining; bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from gpex_gpytorch import CachedDeepKernel, GPEXModel
from gpex_gpytorch.distillation import (
    DefaultKernelNetwork,
    Distiller,
    SavedExplainer,
    load_explainer,
    save_checkpoint,
    save_explainer,
)
from gpex_gpytorch.explain import nearest_neighbours


@pytest.fixture(scope="module")
def fitted() -> tuple[Distiller, TensorDataset, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    train = TensorDataset(x, y)
    distiller = Distiller(ann, embedding_dim=4, steps=20, batch_size=32, inducing_batch_size=32, progress=False)
    distiller.fit(train)
    return distiller, train, torch.randn(15, 6, generator=generator)


def test_default_network_reloads_without_code_and_predicts_bit_identically(fitted, tmp_path: Path) -> None:
    distiller, train, x_test = fitted
    model = distiller.model_
    assert type(model.covar_module.feature_extractor) is DefaultKernelNetwork
    path = save_explainer(
        tmp_path / "sub" / "explainer.pt",
        model,
        inducing_inputs=train.tensors[0],
        inducing_labels=train.tensors[1],
        head_names=["a", "b", "c"],
        feature_names=[f"x{i}" for i in range(6)],
        metadata={"steps": 20, "data": "synthetic"},
    )
    loaded = load_explainer(path)
    mean, variance = model.predict(x_test)
    mean2, variance2 = loaded.predict(x_test)
    assert torch.equal(mean, mean2) and torch.equal(variance, variance2)
    assert not loaded.model.training
    with pytest.raises(ValueError, match=r"inputs: expected a batch of shape \(N, 6\), got a single example"):
        loaded.predict(x_test[0])
    # The cache itself and the neighbours it gives are identical, not only the posterior.
    assert torch.equal(model.covar_module.embeddings, loaded.model.covar_module.embeddings)
    assert torch.equal(model.covar_module.gram, loaded.model.covar_module.gram)
    neighbours, neighbours2 = nearest_neighbours(model, x_test, k=5), nearest_neighbours(loaded.model, x_test, k=5)
    assert torch.equal(neighbours.indices, neighbours2.indices)
    assert torch.equal(neighbours.similarities, neighbours2.similarities)
    assert torch.equal(loaded.inducing_labels, train.tensors[1])
    assert torch.equal(loaded.inducing_inputs, train.tensors[0])
    assert loaded.head_names == ["a", "b", "c"]
    assert loaded.feature_names == [f"x{i}" for i in range(6)]
    assert loaded.metadata == {"steps": 20, "data": "synthetic"}
    # The file holds nothing that needs unpickling beyond tensors and containers.
    assert torch.load(path, weights_only=True)["version"] == 1
    # GPEXModel.save / GPEXModel.load are the same format.
    model.save(tmp_path / "m.pt")
    again = GPEXModel.load(tmp_path / "m.pt")
    assert torch.equal(again.predict(x_test)[1], variance)
    # A SavedExplainer writes itself back unchanged.
    loaded.save(tmp_path / "copy.pt")
    assert load_explainer(tmp_path / "copy.pt").metadata == loaded.metadata


def _custom_model(embedding_dtype: torch.dtype | None = None) -> tuple[GPEXModel, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(40, 5)
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 2 * 3))
    kernel = CachedDeepKernel(net, num_inducing=40, num_heads=2, embedding_dim=3, embedding_dtype=embedding_dtype)
    kernel.fill(x, progress=False)
    model = GPEXModel(kernel, torch.randn(40, 2), noise=torch.tensor([0.5, 2.0]), learn_noise=True)
    return model, x


@pytest.mark.parametrize("embedding_dtype", [None, torch.bfloat16])
def test_custom_network_needs_its_architecture_and_then_matches(tmp_path: Path, embedding_dtype) -> None:
    model, x = _custom_model(embedding_dtype)
    path = model.save(tmp_path / "custom.pt")
    with pytest.raises(ValueError, match=r"custom kernel network \(torch.nn.modules.container.Sequential\)"):
        load_explainer(path)
    wrong = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6))
    with pytest.raises(ValueError, match=r"kernel_network: does not match.*shape mismatch.*0.weight: saved \(12, 5\)"):
        load_explainer(path, wrong)
    renamed = nn.Sequential(nn.Linear(5, 12), nn.Linear(12, 6))
    with pytest.raises(ValueError, match="missing from the file"):
        load_explainer(path, renamed)
    fresh = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 6))  # other random weights
    loaded = GPEXModel.load(path, fresh)
    assert loaded.covar_module.embeddings.dtype == (embedding_dtype or torch.float32)
    assert torch.equal(loaded.noise, model.noise) and loaded.noise.shape == (2,)
    assert loaded.variational_strategy.raw_noise.requires_grad
    assert torch.equal(loaded.predict(x)[0], model.predict(x)[0])
    assert torch.equal(loaded.predict(x)[1], model.predict(x)[1])


def test_bad_files_fail_with_a_clear_error(tmp_path: Path) -> None:
    model, _ = _custom_model()
    path = model.save(tmp_path / "good.pt")
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_explainer(tmp_path / "truncated.pt")
    with pytest.raises(FileNotFoundError, match="no saved explainer"):
        load_explainer(tmp_path / "missing.pt")
    save_checkpoint(tmp_path / "checkpoint.pt", {"format": "gpex-distiller-1"})
    with pytest.raises(ValueError, match="not a saved explainer.*gpex-distiller-1"):
        load_explainer(tmp_path / "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    state.pop("sha256")  # the payload's digest: save_checkpoint writes a new one
    save_checkpoint(tmp_path / "future.pt", {**state, "version": 99})
    with pytest.raises(ValueError, match="version 99.*upgrade"):
        load_explainer(tmp_path / "future.pt")
    del state["config"]["embedding_dim"]
    save_checkpoint(tmp_path / "incomplete.pt", state)
    with pytest.raises(ValueError, match="incomplete saved explainer.*embedding_dim"):
        load_explainer(tmp_path / "incomplete.pt")
    # An arbitrary pickled object is refused, not executed.
    torch.save({"format": "gpex-explainer", "payload": SavedExplainer}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="truncated or corrupted, or not a saved explainer"):
        load_explainer(tmp_path / "pickled.pt")


def test_save_rejects_bad_extras_before_writing(tmp_path: Path) -> None:
    model, x = _custom_model()
    with pytest.raises(ValueError, match="inducing_labels: expected a tensor with num_inducing=40 rows"):
        model.save(tmp_path / "a.pt", inducing_labels=torch.zeros(3))
    with pytest.raises(ValueError, match="head_names: expected 2 names, got 3"):
        model.save(tmp_path / "a.pt", head_names=["a", "b", "c"])
    with pytest.raises(TypeError, match="metadata: expected JSON-ready"):
        model.save(tmp_path / "a.pt", metadata={"tensor": torch.zeros(1)})
    assert not (tmp_path / "a.pt").exists()
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 6))
    assert load_explainer(model.save(tmp_path / "b.pt", metadata={"k": (1, 2)}), net).metadata == {"k": [1, 2]}
