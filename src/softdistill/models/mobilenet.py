"""MobileNetV2 for small images.

Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks".
"""

from __future__ import annotations

from torch import Tensor, nn

from softdistill.models._init import init_conv_weights
from softdistill.models.registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2"]

# (expansion t, output channels c, repeats n, stride s of the first repeat) from Table 2 of the
# paper, with the stem and the 24-channel stage at stride 1 instead of 2 for 32x32 inputs.
_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
    ]


class InvertedResidual(nn.Module):
    """1x1 expansion - 3x3 depthwise - linear 1x1 projection, with an identity shortcut when the
    shape is unchanged (Sandler et al. 2018)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(in_channels, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, out_channels, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2, width multiplier 1.0, adapted to 32x32 inputs (overall stride 8 instead of 32)."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 32, 3), nn.ReLU6(inplace=True)]
        channels = 32
        for expansion, width, repeats, stride in _CONFIG:
            for repeat in range(repeats):
                layers.append(InvertedResidual(channels, width, stride if repeat == 0 else 1, expansion))
                channels = width
        layers += [*_conv_bn(channels, 1280, 1), nn.ReLU6(inplace=True)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """CIFAR-style MobileNetV2 (~2.4M parameters for 100 classes)."""
    return MobileNetV2(num_classes, in_channels)
