"""ResNets for ImageNet-size images (He et al. 2016), torchvision's when it is installed, ours otherwise.

``resnet18-imagenet`` and ``resnet34-imagenet``: a 7x7 stride-2 stem and a 3x3 stride-2 max-pool, four
stages of BasicBlocks (64, 128, 256, 512 channels, the last three starting at stride 2, 1x1-conv + BN
projection shortcuts), global average pooling and a linear layer ``fc``: for 224 x 224 inputs.
With the ``vision`` extra the builder returns ``torchvision.models.resnet18`` / ``resnet34``
(``weights=None``); without it, :class:`ImageNetResNet`, which has torchvision's module names and
shapes (a checkpoint of one loads into the other), its initialisation (Kaiming normal, fan-out, on
every convolution; BatchNorm 1 and 0; PyTorch's default for ``fc``) drawn in the same order, and
its forward pass: under the same seed both build the same weights and compute the same logits.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from softdistill.models.external import build_external
from softdistill.models.registry import Builder, register_model

__all__ = ["ImageNetBlock", "ImageNetResNet", "LAYOUTS"]

#: blocks per stage of each depth
LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class ImageNetBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: the identity, or ``downsample`` (a 1x1 conv + BN, built by
    the caller before this block, as torchvision builds it, so that the weights are drawn in its order)."""

    def __init__(self, in_channels: int, channels: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ImageNetResNet(nn.Module):
    """He et al.'s ImageNet ResNet with BasicBlocks, laid out and initialised as torchvision's."""

    def __init__(self, blocks: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for index, (width, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            stage = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                downsample = None
                if stride != 1 or channels != width:
                    downsample = nn.Sequential(nn.Conv2d(channels, width, 1, stride=stride, bias=False),
                                               nn.BatchNorm2d(width))
                stage.append(ImageNetBlock(channels, width, stride, downsample))
                channels = width
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torchvision_installed() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _builder(depth: int) -> Builder:
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        if torchvision_installed():
            return build_external(f"torchvision:resnet{depth}", num_classes, in_channels, image_size)
        return ImageNetResNet(LAYOUTS[depth], num_classes, in_channels)

    return build


for _depth in LAYOUTS:
    register_model(f"resnet{_depth}-imagenet")(_builder(_depth))
