"""Channel masks through forward hooks: exactness, hook removal, argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpex_gpytorch.explain.pathways import apply_channel_masks, layer_channels
from gpex_gpytorch.explain.pathways.channel_masks import capture_outputs, resolve_layers


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 5 * 5, 7), nn.ReLU())
        self.classifier = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.features(x)))


LAYERS = ["features.0", "features.2", "head.1"]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def test_all_ones_masks_reproduce_the_network_exactly(net):
    x = torch.randn(5, 1, 5, 5)
    expected = net(x)
    channels = layer_channels(net, LAYERS)
    for masks in (
        {n: torch.ones(c) for n, c in channels.items()},
        {n: torch.ones(5, c) for n, c in channels.items()},
        {n: torch.ones(5, c, dtype=torch.bool) for n, c in channels.items()},
    ):
        with apply_channel_masks(net, masks):
            assert torch.equal(net(x), expected)
    assert torch.equal(net(x), expected)
    assert _hook_count(net) == 0


def test_zero_mask_removes_a_channel_per_instance(net):
    x = torch.randn(2, 1, 5, 5)
    mask = torch.ones(2, 4)
    mask[1, 2] = 0.0
    with capture_outputs(net, ["features.0"]) as out, apply_channel_masks(net, {"features.0": mask}):
        net(x)
    # capture hook was registered first, so it saw the unmasked output; check through a second capture
    with apply_channel_masks(net, {"features.0": mask}), capture_outputs(net, ["features.0"]) as masked:
        net(x)
    assert torch.all(masked["features.0"][1, 2] == 0)
    assert torch.equal(masked["features.0"][0], out["features.0"][0])
    assert torch.equal(masked["features.0"][1, :2], out["features.0"][1, :2])
    assert _hook_count(net) == 0


def test_linear_mask_zeroes_neurons(net):
    x = torch.randn(3, 1, 5, 5)
    mask = torch.ones(7)
    mask[[0, 4]] = 0
    with apply_channel_masks(net, {"head.1": mask}), capture_outputs(net, ["head.1"]) as out:
        net(x)
    assert torch.all(out["head.1"][:, [0, 4]] == 0)


def test_hooks_removed_after_exception_in_block(net):
    channels = layer_channels(net, LAYERS)
    with pytest.raises(RuntimeError, match="boom"):
        with apply_channel_masks(net, {n: torch.ones(c) for n, c in channels.items()}):
            assert _hook_count(net) == 3
            raise RuntimeError("boom")
    assert _hook_count(net) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with capture_outputs(net, LAYERS):
            raise RuntimeError("boom")
    assert _hook_count(net) == 0


def test_hooks_removed_after_batch_mismatch_raised_inside_forward(net):
    with pytest.raises(ValueError, match=r"masks\['features.0'\].*batch of 3"):
        with apply_channel_masks(net, {"features.0": torch.ones(2, 4)}):
            net(torch.randn(3, 1, 5, 5))
    assert _hook_count(net) == 0


def test_unknown_layer_lists_close_names(net):
    with pytest.raises(ValueError, match=r"masks: unknown layer 'feature.0'.*closest names: \['features.0'"):
        with apply_channel_masks(net, {"feature.0": torch.ones(4)}):
            pass
    with pytest.raises(ValueError, match=r"layers: unknown layer 'head.5'.*head.1"):
        resolve_layers(net, ["head.5"])
    assert _hook_count(net) == 0


def test_wrong_mask_shape_names_the_argument(net):
    with pytest.raises(ValueError, match=r"masks\['features.2'\]: expected shape \(6,\) or \(batch, 6\).*\(5,\)"):
        with apply_channel_masks(net, {"features.2": torch.ones(5)}):
            pass
    with pytest.raises(ValueError, match=r"masks\['head.1'\]"):
        with apply_channel_masks(net, {"head.1": torch.ones(2, 3, 7)}):
            pass
    assert _hook_count(net) == 0


def test_non_maskable_layer_and_bad_layer_lists(net):
    with pytest.raises(ValueError, match=r"layers: layer 'features.1' is a ReLU"):
        resolve_layers(net, ["features.1"])
    with pytest.raises(ValueError, match="layers: expected at least one"):
        resolve_layers(net, [])
    with pytest.raises(ValueError, match="layers: expected distinct"):
        resolve_layers(net, ["head.1", "head.1"])
    with pytest.raises(TypeError, match="layers: expected a sequence"):
        resolve_layers(net, "head.1")


def test_masks_are_differentiable(net):
    x = torch.randn(4, 1, 5, 5)
    mask = torch.full((4, 7), 0.5, requires_grad=True)
    with apply_channel_masks(net, {"head.1": mask}):
        net(x).sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0
