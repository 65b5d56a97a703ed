"""Shared weight initialisation for the convolutional models."""

from __future__ import annotations

from torch import nn


def init_conv_weights(model: nn.Module) -> None:
    """He-normal (fan-out) conv weights, unit/zero BatchNorm (He et al. 2015, "Delving deep into rectifiers").

    Linear layers keep PyTorch's default init.  Deterministic given ``torch.manual_seed``.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
