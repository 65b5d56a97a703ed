"""Wide ResNets ``wrn-D-W`` (Zagoruyko & Komodakis 2016, "Wide Residual Networks")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from softdistill.models._init import init_conv_weights
from softdistill.models.registry import register_pattern

__all__ = ["WideBlock", "WideResNet"]


class WideBlock(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-conv3x3; when the shape changes the shortcut is a
    1x1 conv applied to the shared pre-activation (Zagoruyko & Komodakis 2016)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen (Zagoruyko & Komodakis 2016): 3x3 stem of 16 channels, 3 stages of
    (depth - 4) / 6 wide blocks with 16W, 32W, 64W channels, final BN-ReLU, global pooling, linear."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(
                f"wrn-D-W needs a depth D >= 10 with (D - 4) divisible by 6 (10, 16, 22, 28, 40, ...), "
                f"got {depth}"
            )
        if widen < 1:
            raise ValueError(f"wrn-D-W needs a widen factor W >= 1, got {widen}")
        per_stage = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        channels = 16
        for index, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            blocks: list[nn.Module] = []
            for block in range(per_stage):
                blocks.append(WideBlock(channels, width, 2 if index > 0 and block == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(self.stages(self.stem(x))))


@register_pattern(
    "wrn-D-W", r"wrn-(\d+)-(\d+)", examples=("wrn-16-2", "wrn-16-4", "wrn-28-2", "wrn-40-1", "wrn-40-2")
)
def wrn(depth: int, widen: int, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """WRN-D-W, e.g. ``wrn-28-2``."""
    return WideResNet(depth, widen, num_classes, in_channels)
