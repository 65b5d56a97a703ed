"""Where a model's mid-level feature is: the output of the stage before its last (USKD's weak head reads it).

For the built-in families: the CIFAR ResNets and Wide ResNets, ``stages`` minus one; the ImageNet
ResNets (ours and torchvision's), ``layer3``; the small CNNs, the last max-pool (the input of their
last block); the MLP, its first hidden layer (after the ReLU).  Any other model names the module
itself (e.g. USKD's ``method.feature``).
"""

from __future__ import annotations

from torch import nn

from softdistill.models.small import MLP, SmallCNN

__all__ = ["mid_level_feature"]


def mid_level_feature(model: nn.Module) -> str:
    """The dotted name of the module of ``model`` whose output is its mid-level feature (see the module
    docstring); ValueError for a model of another family, naming its top-level modules."""
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages) >= 2:
        return f"stages.{len(stages) - 2}"
    if isinstance(getattr(model, "layer3", None), nn.Module) and isinstance(getattr(model, "layer4", None), nn.Module):
        return "layer3"
    if isinstance(model, SmallCNN):
        pools = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.MaxPool2d)]
        if pools:
            return f"features.{pools[-1]}"
    if isinstance(model, MLP):
        return "body.2"
    children = ", ".join(name for name, _ in model.named_children())
    raise ValueError(f"no mid-level feature is known for a {type(model).__name__} (its modules: {children}): name the "
                     "module whose output it is, e.g. method.feature: stages.1")
