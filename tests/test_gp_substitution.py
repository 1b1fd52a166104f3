"""compare_pipeline against a brute-force recomputation, with a GP that deliberately disagrees with
the sub-module it replaces (so every number it reports depends on the substitution being used)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gpex_gpytorch.explain import compare_pipeline, substitute_gp
from gpex_gpytorch.kernels import CachedDeepKernel
from gpex_gpytorch.models.gpex_model import GPEXModel

H, M = 3, 30


class Pipeline(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.branch = nn.Linear(6, H)
        self.head = nn.Linear(H, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.branch(self.stem(x)))


@pytest.fixture(scope="module")
def case() -> tuple[Pipeline, GPEXModel, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    pipeline = Pipeline().eval()
    with torch.no_grad():
        inducing = pipeline.stem(torch.randn(M, 4))
        kernel = CachedDeepKernel(nn.Linear(6, H * 2), num_inducing=M, num_heads=H, embedding_dim=2)
        kernel.fill(inducing)
        # A poor GP on purpose: it interpolates the *negated, scaled* branch outputs.
        model = GPEXModel(kernel, -5.0 * pipeline.branch(inducing), noise=0.1)
        x = torch.randn(50, 4)
        labels = pipeline(x).argmax(1)
    labels[40:] = (labels[40:] + 2) % 3  # the network is right on exactly 40 of 50
    batches = [(x[s:e], labels[s:e]) for s, e in ((0, 20), (20, 40), (40, 50))]
    return pipeline, model, batches


def test_compare_pipeline_reports_the_substituted_accuracy(case: tuple) -> None:
    pipeline, model, batches = case
    result = compare_pipeline(
        pipeline, "branch", model, batches, forward_fn=lambda m, b: m(b[0]), label_fn=lambda b: b[1]
    )
    # brute force: the GP's posterior mean plugged in by hand, batch by batch
    originals, replaced, labels = [], [], []
    with torch.no_grad():
        for x, y in batches:
            originals.append(pipeline(x))
            mean, _ = model.predict(pipeline.stem(x))
            replaced.append(pipeline.head(mean))
            labels.append(y)
    original, with_gp, y = torch.cat(originals), torch.cat(replaced), torch.cat(labels)
    accuracy_with_gp = float((with_gp.argmax(1) == y).double().mean())
    agreement = float((with_gp.argmax(1) == original.argmax(1)).double().mean())
    change = (with_gp.double() - original.double()).abs()

    assert result.num_samples == 50
    assert result.accuracy == pytest.approx(40 / 50)
    assert result.accuracy_with_gp == pytest.approx(accuracy_with_gp)
    assert result.agreement == pytest.approx(agreement)
    assert result.mean_abs_change == pytest.approx(float(change.mean()), rel=1e-5)
    assert result.max_abs_change == pytest.approx(float(change.max()), rel=1e-5)
    # the case separates the three numbers: a report computed from the un-substituted output fails
    assert accuracy_with_gp < 0.6 and agreement < 0.7
    assert abs(accuracy_with_gp - result.accuracy) > 0.2 and abs(accuracy_with_gp - agreement) > 0.05


def test_substitute_gp_output_is_the_gp_mean_and_leaves_no_hook(case: tuple) -> None:
    pipeline, model, batches = case
    x = batches[0][0]
    with torch.no_grad():
        expected = pipeline.head(model.predict(pipeline.stem(x))[0])
        with substitute_gp(pipeline, "branch", model):
            got = pipeline(x)
        after = pipeline(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(after, got)
    assert not pipeline.branch._forward_hooks


class TupleBranch(nn.Module):
    """Called as ``branch(mask, hidden=h)``; returns ``(output, aux)``: the selectors' case."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, H)

    def forward(self, mask: Tensor | None, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear(hidden), hidden.sum(-1)


class TuplePipeline(nn.Module):
    def __init__(self, base: Pipeline) -> None:
        super().__init__()
        self.stem, self.head = base.stem, base.head
        self.branch = TupleBranch()
        self.branch.linear = base.branch

    def forward(self, x: Tensor) -> Tensor:
        out, aux = self.branch(None, hidden=self.stem(x))
        return self.head(out) + aux[:, None]


def test_substitution_replaces_only_the_selected_output_of_a_multi_argument_sub_module(case: tuple) -> None:
    base, model, batches = case
    pipeline = TuplePipeline(base).eval()
    x = batches[0][0]
    with torch.no_grad():
        hidden = pipeline.stem(x)
        mean, _ = model.predict(hidden)
        expected = pipeline.head(mean) + hidden.sum(-1)[:, None]  # the GP for output 0, aux passed through
        original = pipeline(x)
        with substitute_gp(pipeline, "branch", model, input="hidden", output=0):
            replaced = pipeline(x)
        after = pipeline(x)
    torch.testing.assert_close(replaced, expected)
    assert not torch.allclose(replaced, original, atol=1e-3)
    assert torch.equal(after, original)
    result = compare_pipeline(
        pipeline, "branch", model, batches, forward_fn=lambda m, b: m(b[0]), input="hidden", output=0
    )
    with torch.no_grad():  # brute force over every batch: the GP's mean by hand for output 0
        changes = []
        for xb, _ in batches:
            h = pipeline.stem(xb)
            changes.append(pipeline.head(model.predict(h)[0]) + h.sum(-1)[:, None] - pipeline(xb))
        change = torch.cat(changes).abs()
    assert result.max_abs_change == pytest.approx(float(change.max()), rel=1e-5)
    assert result.mean_abs_change == pytest.approx(float(change.mean()), rel=1e-5)
    with pytest.raises(ValueError, match=r"input: the sub-module was not called with an argument 'nope'"):
        with substitute_gp(pipeline, "branch", model, input="nope", output=0), torch.no_grad():
            pipeline(x)
    with pytest.raises(TypeError, match=r"output: a callable selector cannot be inverted"):
        with substitute_gp(pipeline, "branch", model, input="hidden", output=lambda out: out[0]):
            pass
