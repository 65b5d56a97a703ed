"""The model registry: exact names, name patterns (``mlp-H``, ``wrn-D-W``) and external sources.

A builder is any callable ``fn(num_classes, in_channels, image_size) -> nn.Module`` registered with
:func:`register_model` (a pattern's builder takes its integers first, :func:`register_pattern`).
Names of the form ``source:NAME`` go to :mod:`softdistill.models.external`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

from torch import nn

from softdistill.models.external import EXTERNAL_FORMS, build_external, check_external
from softdistill.registry import Registry, UnknownNameError

__all__ = ["Builder", "models", "build_model", "check_model_name", "available_models", "register_model",
           "register_pattern", "count_parameters"]

Builder = Callable[[int, int, int], nn.Module]

#: Every model softdistill can build by name (the built-ins register when :mod:`softdistill.models` loads).
models: Registry[Builder] = Registry("model", "softdistill.models")
register_model = models.register
register_pattern = models.register_pattern


def available_models() -> list[str]:
    """Sorted model names; patterns are represented by their example names."""
    return models.names()


def count_parameters(model: nn.Module) -> int:
    """Number of (distinct) parameters of ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def _check_int(what: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_model_name(name: str) -> None:
    """ValueError unless ``name`` names a model (a registered one, a pattern's or an external source's);
    builds nothing (an external model's package is imported only when it is built)."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if ":" in name:
        check_external(name)
        return
    try:
        models.get(name)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{exc}; external: {', '.join(EXTERNAL_FORMS)}") from None


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """Build model ``name``: ``B x in_channels x image_size x image_size`` -> ``B x num_classes`` logits.

    Args:
        name: a registered name (:func:`available_models`), a pattern such as ``mlp-H`` or ``wrn-D-W``, or
            ``torchvision:NAME`` / ``timm:NAME``.
        num_classes: K (at least 2).
        in_channels: the images' channels.
        image_size: the images' side.

    Returns:
        The ``nn.Module``; a ``ValueError`` for an unknown name (with the closest names) or bad sizes, an
        ``ImportError`` when an external model's package is missing.

    Example:
        >>> import torch
        >>> model = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    num_classes = _check_int("num_classes", num_classes, 2)
    in_channels = _check_int("in_channels", in_channels, 1)
    image_size = _check_int("image_size", image_size, 1)
    check_model_name(name)
    if ":" in name:
        return build_external(name, num_classes, in_channels, image_size)
    return models.get(name)(num_classes, in_channels, image_size)
