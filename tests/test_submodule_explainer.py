"""SubmoduleExplainer: distilling a spatial branch, swapping in the GP, and restoring the pipeline."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gpex_gpytorch.explain import SubmoduleExplainer, compare_pipeline, substitute_gp


class Masked(nn.Module):
    """Features (N, 4, 2, 2) gated by a 2×2 sigmoid mask whose top-left cell is always off."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.mask = MaskBranch()
        self.features = nn.Linear(16, 16)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(16, 3))

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        gated = self.features(s).reshape(-1, 4, 2, 2) * self.mask(s)
        return self.head(gated.flatten(1))


class MaskBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 4)

    def forward(self, s: Tensor) -> Tensor:
        logits = self.linear(s).reshape(-1, 1, 2, 2)
        off = torch.zeros_like(logits)
        off[:, :, 0, 0] = -1e4  # an always-off attention cell: a constant head
        return torch.sigmoid(logits + off)


@pytest.fixture(scope="module")
def fitted() -> tuple[Masked, SubmoduleExplainer, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    model = Masked()
    x = torch.randn(96, 6)
    loader = [(x[i : i + 32], torch.randint(3, (32,))) for i in range(0, 96, 32)]
    explainer = SubmoduleExplainer(
        model, "mask", forward_fn=lambda m, b: m(b[0]), embedding_dim=4, steps=20, eval_every=10, progress=False
    ).fit(loader)
    return model, explainer, loader


def test_fit_shapes_and_constant_head(fitted: tuple[Masked, SubmoduleExplainer, list]) -> None:
    _, explainer, loader = fitted
    assert explainer.capture_.output_shape == (1, 2, 2)
    assert explainer.model_.num_heads == 4
    assert explainer.constant_heads_ == [0]
    report = explainer.score(loader)
    assert report.constant_heads == [0] and report.pearson_per_head[0] is None
    # brute force: Pearson of GP mean and the mask branch's output, head by head, over the loader
    model = explainer.pipeline
    with torch.no_grad():
        s = model.stem(torch.cat([batch[0] for batch in loader]))
        target = model.mask(s).reshape(s.shape[0], -1).double()
        mean = explainer.model_.predict(s)[0].double()
    for head in range(1, 4):
        expected = float(torch.corrcoef(torch.stack([mean[:, head], target[:, head]]))[0, 1])
        assert report.pearson_per_head[head] == pytest.approx(expected, abs=1e-5)
    mean, variance = explainer.predict(explainer.capture_.inputs[:5])
    assert mean.shape == variance.shape == (5, 1, 2, 2)


def test_parameters_and_modes_unchanged_by_fit() -> None:
    torch.manual_seed(1)
    model = Masked()
    model.train()
    model.stem.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    loader = [torch.randn(40, 6)]
    explainer = SubmoduleExplainer(model, "mask", steps=3, embedding_dim=2, progress=False).fit(loader)
    explainer.score(loader)
    explainer.compare(loader)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes


def test_substitution_uses_gp_mean_and_restores_exactly(fitted: tuple[Masked, SubmoduleExplainer, list]) -> None:
    model, explainer, loader = fitted
    model.eval()
    x = loader[0][0]
    with torch.no_grad():
        original = model(x)
        s = model.stem(x)
        mean, _ = explainer.predict(s)
        expected = model.head((model.features(s).reshape(-1, 4, 2, 2) * mean).flatten(1))
        with explainer.substitute() as module:
            assert module is model.mask
            replaced = model(x)
        after = model(x)
    torch.testing.assert_close(replaced, expected)
    assert not torch.equal(replaced, original)
    assert torch.equal(after, original)
    assert not model.mask._forward_hooks


def test_substitution_restores_after_exception(fitted: tuple[Masked, SubmoduleExplainer, list]) -> None:
    model, explainer, loader = fitted
    model.eval()
    x = loader[0][0]
    with torch.no_grad():
        original = model(x)
        with pytest.raises(RuntimeError, match="inside"):
            with substitute_gp(model, "mask", explainer.model_):
                model(x)
                raise RuntimeError("inside")
        assert torch.equal(model(x), original)
    assert not model.mask._forward_hooks


def test_sample_mode_is_reproducible(fitted: tuple[Masked, SubmoduleExplainer, list]) -> None:
    model, explainer, loader = fitted
    model.eval()
    x = loader[0][0]
    outs = []
    for _ in range(2):
        with torch.no_grad(), explainer.substitute(mode="sample", generator=torch.Generator().manual_seed(3)):
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="mode"):
        with explainer.substitute(mode="median"):
            pass


def test_compare_reports_accuracy(fitted: tuple[Masked, SubmoduleExplainer, list]) -> None:
    model, explainer, loader = fitted
    result = compare_pipeline(
        model, "mask", explainer.model_, loader, forward_fn=lambda m, b: m(b[0]), label_fn=lambda b: b[1]
    )
    model.eval()
    with torch.no_grad():
        x, labels = (torch.cat(parts) for parts in zip(*loader, strict=True))
        original = model(x)
        s = model.stem(x)
        mean, _ = explainer.predict(s)
        with_gp = model.head((model.features(s).reshape(-1, 4, 2, 2) * mean).flatten(1))
    assert result.num_samples == 96
    assert result.accuracy == pytest.approx(float((original.argmax(1) == labels).double().mean()))
    assert result.accuracy_with_gp == pytest.approx(float((with_gp.argmax(1) == labels).double().mean()))
    assert result.agreement == pytest.approx(float((with_gp.argmax(1) == original.argmax(1)).double().mean()))
    change = (with_gp.double() - original.double()).abs()
    assert result.mean_abs_change == pytest.approx(float(change.mean()), rel=1e-4)
    assert result.max_abs_change == pytest.approx(float(change.max()), rel=1e-4)


def test_bad_inputs(fitted: tuple[Masked, SubmoduleExplainer, list]) -> None:
    model, explainer, _ = fitted
    with pytest.raises(ValueError, match="did you mean 'mask'"):
        SubmoduleExplainer(model, "masc")
    with pytest.raises(ValueError, match=r"k: expected an integer in \[1, M=96\]"):
        explainer.neighbours(explainer.capture_.inputs[:2], k=97)
    with pytest.raises(RuntimeError, match="fit"):
        SubmoduleExplainer(model, "mask").predict(torch.randn(2, 16))
    with pytest.raises(ValueError, match="heads"):
        with substitute_gp(model, "head.1", explainer.model_), torch.no_grad():
            model(torch.randn(2, 6))
    assert not model.get_submodule("head.1")._forward_hooks
