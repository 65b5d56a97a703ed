"""Small models: the MLP (no spatial inductive bias), small VGG-style CNNs and the CIFAR VGGs of the
distillation benchmarks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from softdistill.models._init import init_conv_weights
from softdistill.models.registry import register_model, register_pattern

__all__ = ["MLP", "SmallCNN"]


class MLP(nn.Module):
    """Multilayer perceptron (Rumelhart, Hinton & Williams 1986): flatten, H, ReLU, H, ReLU, classes.

    No convolution and no BatchNorm: the student without spatial inductive bias.
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.in_features = in_channels * image_size * image_size
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"MLP expects inputs with {self.in_features} features per sample "
                f"(in_channels * image_size**2), got shape {tuple(x.shape)}"
            )
        return self.fc(self.body(x))


class SmallCNN(nn.Module):
    """VGG-style CNN (Simonyan & Zisserman 2015): 3x3 conv-BN-ReLU layers, 2x2 max-pools ("M"),
    global average pooling and a linear classifier."""

    def __init__(self, config: Sequence[int | str], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                assert isinstance(item, int)
                layers += [
                    nn.Conv2d(channels, item, 3, padding=1, bias=False),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("mlp")
def mlp(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """MLP with two hidden layers of width 256."""
    return MLP(num_classes, in_channels, image_size, hidden=256)


@register_pattern("mlp-H", r"mlp-(\d+)", examples=("mlp-512", "mlp-1024"))
def mlp_hidden(hidden: int, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """MLP with two hidden layers of width ``hidden``."""
    if hidden < 1:
        raise ValueError(f"mlp-H needs a hidden width H >= 1, got {hidden}")
    return MLP(num_classes, in_channels, image_size, hidden=hidden)


@register_model("cnn")
def cnn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """~0.29M-parameter CNN (1x28x28, 10 classes): 32-32-M-64-64-M-128-128."""
    return SmallCNN([32, 32, "M", 64, 64, "M", 128, 128], num_classes, in_channels)


@register_model("cnn-small")
def cnn_small(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """~36k-parameter CNN, a fast student: 16-16-M-32-32-M-64."""
    return SmallCNN([16, 16, "M", 32, 32, "M", 64], num_classes, in_channels)


#: The CIFAR VGGs of the CRD / mdistiller distillation benchmarks (Simonyan & Zisserman 2015 with BatchNorm):
#: five stages of 3x3 convolutions, a 2x2 max-pool after each of the first four, global average pooling
#: and one linear classifier (VGG-8: one convolution a stage; VGG-13: two).
CIFAR_VGG = {"vgg8": [64, "M", 128, "M", 256, "M", 512, "M", 512],
             "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512]}


def _vgg_builder(layout: Sequence[int | str]) -> Callable[[int, int, int], nn.Module]:
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return SmallCNN(layout, num_classes, in_channels)

    return build


for _name, _layout in CIFAR_VGG.items():
    register_model(_name)(_vgg_builder(_layout))
