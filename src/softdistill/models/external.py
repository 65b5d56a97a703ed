"""Models from optional packages: ``torchvision:NAME`` and ``timm:NAME``.

The packages are imported only when such a model is built, and weights are never downloaded
(``weights=None`` / ``pretrained=False``).  ``image_size`` is not passed on: most of these models
pool adaptively, while e.g. vision transformers expect their native input size.
"""

from __future__ import annotations

import importlib

from torch import nn

__all__ = ["EXTERNAL_FORMS", "build_external", "check_external"]

# source prefix -> name of the softdistill extra that installs it
_EXTRAS = {"torchvision": "vision", "timm": "timm"}
EXTERNAL_FORMS = tuple(f"'{source}:NAME'" for source in _EXTRAS)


def check_external(name: str) -> tuple[str, str]:
    """(source, model name) of ``torchvision:NAME`` or ``timm:NAME``; ValueError for another form."""
    source, _, model_name = name.partition(":")
    if source not in _EXTRAS:
        raise ValueError(
            f"unknown model source {source!r} in {name!r}; use {' or '.join(EXTERNAL_FORMS)}"
        )
    if not model_name:
        raise ValueError(f"missing model name after {source + ':'!r} in {name!r}")
    return source, model_name


def build_external(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build ``torchvision:NAME`` (via ``torchvision.models.get_model``) or ``timm:NAME``
    (via ``timm.create_model``)."""
    source, model_name = check_external(name)
    module_name = "torchvision.models" if source == "torchvision" else "timm"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = _EXTRAS[source]
        raise ImportError(f"model {name!r} needs {source}: pip install 'softdistill[{extra}]'") from err
    if source == "timm":
        return module.create_model(
            model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels
        )
    model = module.get_model(model_name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        replace_first_conv(model, in_channels, name)
    return model


def replace_first_conv(model: nn.Module, in_channels: int, name: str) -> None:
    """Replace the first registered ``nn.Conv2d`` of ``model`` by a fresh one taking ``in_channels``."""
    for path, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise ValueError(
            f"cannot adapt {name!r} to in_channels={in_channels}: it has no Conv2d; use 3 channels"
        )
    if conv.groups != 1:
        raise ValueError(
            f"cannot adapt {name!r} to in_channels={in_channels}: its first conv {path!r} is grouped; "
            "use 3 channels"
        )
    new_conv = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new_conv)
