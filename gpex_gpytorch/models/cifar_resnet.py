"""ResNet-18 in its CIFAR form (3×3 stem, stride 1, no max-pool), as in He et al. 2016, Sec. 4.2.

torchvision's ``resnet18`` is the ImageNet variant (7×7 stride-2 stem and a max-pool), which
shrinks a 32×32 image to 1×1 too early; and torchvision is optional here.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet18"]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        for name, value in (("in_channels", in_channels), ("channels", channels), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR-style ResNet of :class:`BasicBlock` stages.

    Sub-modules, named like :class:`~gpex_gpytorch.models.DigitsCNN`'s:

    - ``features``: stem, four stages, global average pool, flatten → ``(N, 512)``;
    - ``penultimate``: ``Linear(512 → width)`` + ReLU, or an identity when ``width`` is ``None``;
    - ``classifier``: the last ``Linear`` → logits.

    :param blocks: number of blocks per stage (``[2, 2, 2, 2]`` is ResNet-18).
    :param num_classes: number of output logits.
    :param width: units of an extra wide penultimate layer, or ``None`` for the standard network.
    :param in_channels: channels of the input images.
    """

    def __init__(
        self,
        blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
            raise ValueError(f"width: expected a positive integer or None, got {width!r}")
        if len(blocks) != 4 or any(b < 1 for b in blocks):
            raise ValueError(f"blocks: expected four positive block counts, got {blocks!r}")
        self.num_classes = num_classes
        self.width = width
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        ]
        in_ch = 64
        for stage, (channels, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            stride = 1 if stage == 0 else 2  # 32 → 32 → 16 → 8 → 4
            for i in range(count):
                layers.append(BasicBlock(in_ch, channels, stride if i == 0 else 1))
                in_ch = channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.penultimate: nn.Module = (
            nn.Identity() if width is None else nn.Sequential(nn.Linear(in_ch, width), nn.ReLU(inplace=True))
        )
        self.classifier = nn.Linear(in_ch if width is None else width, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """The input of the classifier: ``(N, width)``, or ``(N, 512)`` without a wide layer."""
        return self.penultimate(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.embed(x))


def cifar_resnet18(num_classes: int = 10, width: int | None = None) -> CifarResNet:
    """ResNet-18 for 32×32 images: about 11.17M parameters with ``width=None`` and 10 classes.

    :param num_classes: number of output logits.
    :param width: units of an optional wide penultimate ``Linear`` + ReLU before the classifier.
    """
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes, width=width)
