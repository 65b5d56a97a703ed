"""ResNets for small images (He et al. 2016, "Deep Residual Learning for Image Recognition").

``resnet8`` ... ``resnet110`` and the x4 variants follow Sec. 4.2 of the paper as implemented by
the CRD / mdistiller distillation benchmarks: 3x3 stem, 3 stages of (depth - 2) / 6 BasicBlocks,
1x1-conv + BN projection shortcuts.  ``resnet18`` / ``resnet34`` are the ImageNet stage layouts
with the same small-image stem (3x3, stride 1, no max-pool).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from softdistill.models._init import init_conv_weights
from softdistill.models.registry import Builder, register_model

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus an identity or 1x1-conv + BN projection shortcut (He et al. 2016)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016): 3x3 stride-1 stem, BasicBlock stages (the first at
    stride 1, the others at stride 2), global average pooling, linear classifier."""

    def __init__(
        self,
        stem_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        channels = stem_width
        for index, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stage: list[nn.Module] = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def _builder(stem_width: int, widths: Sequence[int], blocks: Sequence[int]) -> Builder:
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return CifarResNet(stem_width, widths, blocks, num_classes, in_channels)

    return build


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_builder(16, (16, 32, 64), (((_depth - 2) // 6),) * 3))
for _depth in (8, 32):
    register_model(f"resnet{_depth}x4")(_builder(32, (64, 128, 256), (((_depth - 2) // 6),) * 3))
register_model("resnet18")(_builder(64, (64, 128, 256, 512), (2, 2, 2, 2)))
register_model("resnet34")(_builder(64, (64, 128, 256, 512), (3, 4, 6, 3)))
