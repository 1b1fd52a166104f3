"""Any output structure (output=), multi-argument sub-modules, DataLoaders, sklearn clone, batch-dimension errors."""

from __future__ import annotations

import pytest
import torch
from sklearn.base import clone
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from gpex_gpytorch.distillation import Distiller
from gpex_gpytorch.explain import SubmoduleExplainer, capture_submodule
from gpex_gpytorch.explain.submodule_explainer import FlattenedOutput
from gpex_gpytorch.utils.network_output import select_output


class DictNet(nn.Module):
    """Returns a dict, like many third-party models."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.body(x)
        return {"logits": logits, "probabilities": logits.softmax(-1)}


def _data(n: int = 96) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _settings(**kwargs: object) -> dict[str, object]:
    return {"embedding_dim": 4, "steps": 8, "batch_size": 16, "inducing_batch_size": 16, "progress": False, **kwargs}


def test_select_output_reads_keys_attributes_indices_and_callables() -> None:
    t = torch.ones(2, 3)
    assert select_output({"logits": t}, "logits", "net") is t
    assert select_output((t, None), 0, "net") is t
    assert select_output([None, t], -1, "net") is t
    assert select_output(t, lambda out: out * 2, "net").sum() == 12
    with pytest.raises(TypeError, match=r"got dict \(it has keys \['logits'\]\); pass output="):
        select_output({"logits": t}, None, "net")
    with pytest.raises(ValueError, match=r"no key or attribute 'logit' \(it has keys \['logits'\]\)"):
        select_output({"logits": t}, "logit", "net")
    with pytest.raises(ValueError, match="index 2 does not exist in the tuple"):
        select_output((t, t), 2, "net")
    with pytest.raises(TypeError, match="output: expected None, an attribute or key name"):
        Distiller(nn.Linear(2, 2), output=1.5)  # type: ignore[arg-type]


def test_distiller_explains_the_selected_output() -> None:
    train = _data()
    torch.manual_seed(0)
    ann = DictNet().eval()
    with pytest.raises(TypeError, match=r"expected ann to return a tensor, got dict.*pass output="):
        Distiller(ann, **_settings()).fit(train)
    model = Distiller(ann, output="logits", **_settings()).fit(train).model_
    with torch.no_grad():
        logits = ann(train.tensors[0])["logits"]
    # The GP heads hold the network's logits (not the probabilities) as inducing values.
    assert model.num_heads == 3
    assert torch.equal(model.covar_module.inducing_values, logits)
    by_callable = Distiller(ann, output=lambda out: out["probabilities"], **_settings()).fit(train).model_
    torch.testing.assert_close(by_callable.covar_module.inducing_values, logits.softmax(-1))


class Block(nn.Module):
    """A block called with several arguments that returns a tuple, like a transformer layer."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(3, 3)

    def forward(self, hidden: Tensor, mask: Tensor | None = None, *, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        weights = (hidden @ hidden.mT).softmax(-1) if mask is None else (hidden @ hidden.mT + mask[:, None]).softmax(-1)
        return scale * torch.tanh(self.mix(weights @ hidden)), weights


class Pipeline(nn.Module):
    def __init__(self, vary_mask: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(2, 3)
        self.block = Block()
        self.vary_mask = vary_mask

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.embed(x)  # shape: (N, 4, 3)
        mask = x[:, :, 0] if self.vary_mask else torch.zeros(x.shape[0], x.shape[1])
        return self.block(hidden, mask, scale=0.5)[0].sum((1, 2))


def test_a_multi_argument_tuple_output_block_is_captured_replayed_and_distilled() -> None:
    torch.manual_seed(0)
    pipeline = Pipeline()
    x = torch.randn(160, 4, 2)
    loader = DataLoader(x, batch_size=32)
    captured = capture_submodule(pipeline, "block", loader, output=0)
    with torch.no_grad():
        hidden = pipeline.embed(x)
        expected = pipeline.block(hidden, torch.zeros(160, 4), scale=0.5)[0]
    assert torch.equal(captured.inputs, hidden)
    assert torch.equal(captured.outputs, expected.reshape(160, -1))
    # The mask (all-equal rows) is repeated for any batch size; the keyword flag is replayed.
    assert captured.call.repeated == frozenset({("arg", 1)}) and captured.call.kwargs == {"scale": 0.5}
    replayed = FlattenedOutput(pipeline.block, 0, captured.call)(hidden[:7])
    assert torch.equal(replayed, expected[:7].reshape(7, -1))
    # Attention weights (the tuple's second element) as the explained output.
    weights = capture_submodule(pipeline, "block", loader, output=1)
    assert weights.output_shape == (4, 4)
    torch.testing.assert_close(weights.outputs.reshape(160, 4, 4).sum(-1), torch.ones(160, 4))

    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 64), nn.Tanh(), nn.Linear(64, 12 * 8))
    explainer = SubmoduleExplainer(
        pipeline, "block", output=0, kernel_network=net, **_settings(embedding_dim=8, steps=250, lr=3e-3, batch_size=32)
    ).fit(loader)
    report = explainer.score(DataLoader(torch.randn(64, 4, 2), batch_size=32))
    assert report.pearson_mean > 0.9, report.pearson_per_head


def test_arguments_that_differ_between_examples_are_named() -> None:
    loader = DataLoader(torch.randn(8, 4, 2), batch_size=4)
    with pytest.raises(ValueError, match=r"block': positional argument 1 differs between examples"):
        capture_submodule(Pipeline(vary_mask=True), "block", loader, output=0)
    with pytest.raises(TypeError, match=r"to return a tensor, got tuple"):
        capture_submodule(Pipeline(), "block", loader)
    with pytest.raises(ValueError, match="input: the sub-module was not called with an argument 'query'"):
        capture_submodule(Pipeline(), "block", loader, output=0, input="query")
    # By name, the explained input may be the mask (the hidden states then must not vary: they do).
    with pytest.raises(ValueError, match="positional argument 0 differs between examples"):
        capture_submodule(Pipeline(), "block", loader, output=0, input="mask")


class Stream(IterableDataset):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __iter__(self):  # noqa: ANN204
        return iter(zip(*self.data.tensors, strict=True))


def test_dataloaders_and_tensors_give_the_same_fit_as_the_dataset() -> None:
    train = _data()
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    x_test = torch.randn(10, 5)
    reference = Distiller(ann, **_settings()).fit(train).model_.predict(x_test)
    for data in (
        DataLoader(train, batch_size=7, shuffle=True),
        DataLoader(Stream(train), batch_size=10),
        train.tensors[0],
    ):
        mean, variance = Distiller(ann, **_settings()).fit(data).model_.predict(x_test)
        assert torch.equal(mean, reference[0]) and torch.equal(variance, reference[1]), type(data).__name__
    with pytest.raises(TypeError, match="train_dataset: the DataLoader yields a mapping batches"):
        Distiller(ann, **_settings()).fit(DataLoader(Stream(train), batch_size=4, collate_fn=lambda b: {"x": b}))


def test_sklearn_clone_and_set_params() -> None:
    train = _data()
    torch.manual_seed(0)
    ann = DictNet().eval()
    distiller = Distiller(ann, output="logits", checkpoint_path=None, **_settings(steps=5))
    copy = clone(distiller)
    assert copy.ann is not ann and copy.output == "logits" and copy.steps == 5
    assert not hasattr(copy, "model_")
    x_test = torch.randn(6, 5)
    # A deep copy of the same network and settings: the same fit, to the bit.
    assert torch.equal(copy.fit(train).model_.predict(x_test)[0], distiller.fit(train).model_.predict(x_test)[0])
    assert distiller.set_params(steps=3) is distiller and distiller.steps == 3
    with pytest.raises(ValueError, match=r"set_params: unknown parameters \['stepz'\]"):
        distiller.set_params(stepz=1)
    with pytest.raises(ValueError, match="steps: expected an integer >= 1"):
        distiller.set_params(steps=0)
    assert distiller.steps == 3


def test_one_unbatched_example_is_told_to_add_a_batch_dimension() -> None:
    train = _data()
    ann = nn.Linear(5, 2).eval()
    model = Distiller(ann, **_settings(steps=2)).fit(train).model_
    with pytest.raises(ValueError, match=r"got a single example of shape \(5,\): add a batch dimension"):
        model.predict(train.tensors[0][0])
    assert model.predict(train.tensors[0][:1])[0].shape == (1, 2)
