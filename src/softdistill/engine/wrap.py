"""The one owner of model wrapping: compile (when asked), then DDP; and the one ``unwrap``.

Checkpoints, evaluation and methods that need the plain module (e.g. to read its state or to run
it without a gradient all-reduce) call :func:`unwrap`, so a checkpoint never holds the
``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``) prefixes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from softdistill.engine.distributed import DistContext

__all__ = ["wrap", "unwrap"]


def wrap(module: nn.Module, ctx: DistContext, *, compile: bool | dict[str, Any] = False) -> nn.Module:
    """``module`` compiled (``compile``: True or ``torch.compile`` keyword arguments) and, in a
    distributed run, wrapped in DDP when it has parameters to train."""
    if compile:
        module = torch.compile(module, **(compile if isinstance(compile, dict) else {}))
    if ctx.distributed and any(p.requires_grad for p in module.parameters()):
        module = DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return module


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside any DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module
