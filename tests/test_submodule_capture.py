"""Capturing a sub-module's inputs and outputs through forward hooks driven by the user's loader."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gpex_gpytorch.explain import capture_submodule
from gpex_gpytorch.explain.submodule_capture import resolve_submodule


class Gated(nn.Module):
    """A pipeline with a spatial gate, BatchNorm (mode-sensitive buffers) and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.gate = nn.Sequential(nn.Conv2d(4, 2, 1), nn.Sigmoid())  # (N, 2, 3, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 9, 3))

    def forward(self, image: Tensor, scale: float = 1.0) -> Tensor:
        s = self.stem(image)
        return self.head(s * self.gate(s).mean(1, keepdim=True) * scale)


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner(x), x


class WithTupleChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = TupleOut()

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(x)[0]


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_tuple_batches_with_metadata_via_forward_fn() -> None:
    torch.manual_seed(0)
    model = Gated()
    images = torch.randn(10, 1, 3, 3)
    loader = [(images[:6], torch.zeros(6), {"ids": list(range(6))}), (images[6:], torch.ones(4), {"ids": [6, 7]})]
    captured = capture_submodule(model, "gate", loader, forward_fn=lambda m, b: m(b[0]))
    assert captured.inputs.shape == (10, 4, 3, 3)
    assert captured.outputs.shape == (10, 18) and captured.output_shape == (2, 3, 3)
    assert captured.num_calls == 2 and captured.num_heads == 18
    model.eval()
    with torch.no_grad():
        expected = model.gate(model.stem(images))
    torch.testing.assert_close(captured.unflatten(captured.outputs), expected)
    # Row-major head order: head c*h*w + i*w + j is channel c, row i, column j.
    assert torch.equal(captured.outputs[:, 1 * 9 + 2 * 3 + 0], expected[:, 1, 2, 0])


def test_dict_and_tensor_batches_default_paths() -> None:
    torch.manual_seed(0)
    model = Gated()
    images = torch.randn(5, 1, 3, 3)
    by_dict = capture_submodule(model, "gate", [{"image": images, "scale": 2.0}])
    by_tensor = capture_submodule(model, "gate", [images])
    torch.testing.assert_close(by_dict.outputs, by_tensor.outputs)
    with pytest.raises(TypeError, match="forward_fn"):
        capture_submodule(model, "gate", [(images, torch.zeros(5))])


def test_max_samples_and_module_object_selector() -> None:
    model = Gated()
    loader = [torch.randn(4, 1, 3, 3) for _ in range(5)]
    captured = capture_submodule(model, model.gate, loader, max_samples=6)
    assert captured.name == "gate" and captured.inputs.shape[0] == 6


def test_parameters_buffers_and_modes_unchanged() -> None:
    torch.manual_seed(0)
    model = Gated()
    model.train()
    model.stem.eval()  # mixed modes must come back exactly
    before, modes = _state(model), _modes(model)
    capture_submodule(model, "gate", [torch.randn(8, 1, 3, 3) * 5 + 3 for _ in range(3)])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats too
    assert _modes(model) == modes


def test_hook_removed_when_forward_raises() -> None:
    model = Gated()
    modes = _modes(model)

    def failing(m: nn.Module, batch: Tensor) -> Tensor:
        m(batch)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture_submodule(model, "gate", [torch.randn(2, 1, 3, 3)], forward_fn=failing)
    assert all(not m._forward_hooks for m in model.modules())
    assert _modes(model) == modes


def test_unknown_name_lists_close_names() -> None:
    with pytest.raises(ValueError, match=r"no sub-module 'gat'.*did you mean 'gate'"):
        capture_submodule(Gated(), "gat", [torch.randn(2, 1, 3, 3)])
    with pytest.raises(ValueError, match="'stem.1'"):
        resolve_submodule(Gated(), "stem.l")
    with pytest.raises(ValueError, match="not a sub-module"):
        resolve_submodule(Gated(), nn.Linear(2, 2))


def test_non_tensor_output_raises_and_removes_hook() -> None:
    model = WithTupleChild()
    with pytest.raises(TypeError, match="expected sub-module .branch. to return a tensor, got tuple.*pass output="):
        capture_submodule(model, "branch", [torch.randn(3, 3)])
    assert not model.branch._forward_hooks


def test_loader_that_never_reaches_the_submodule() -> None:
    with pytest.raises(ValueError, match="without calling"):
        capture_submodule(Gated(), "gate", [])
