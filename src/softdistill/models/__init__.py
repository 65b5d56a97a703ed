"""Model zoo: small MLP/CNN students, CIFAR ResNets, Wide ResNets, MobileNetV2 and external models.

``build_model(name, num_classes, in_channels, image_size)`` returns a module mapping
``B x in_channels x image_size x image_size`` images to ``B x num_classes`` logits; every built-in
model ends in a linear layer named ``fc``.  Names: see :func:`available_models`, plus the patterns
``mlp-H`` and ``wrn-D-W`` and the external sources ``torchvision:NAME`` / ``timm:NAME``.
``resnet18-imagenet`` / ``resnet34-imagenet`` are torchvision's ResNets when it is installed and
our identical copies otherwise (:mod:`softdistill.models.resnet_imagenet`).  A model of your own is a
builder registered with :func:`register_model` in any module (a recipe's ``plugins`` imports it).
"""

from __future__ import annotations

from softdistill.models.registry import (available_models, build_model, check_model_name, count_parameters, models,
                                         register_model, register_pattern)

__all__ = ["build_model", "check_model_name", "available_models", "register_model", "register_pattern",
           "count_parameters", "models"]
