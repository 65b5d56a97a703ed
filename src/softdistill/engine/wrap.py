"""The one owner of model wrapping: compile (when asked), then DDP; and the one ``unwrap``.

Checkpoints, evaluation and methods that need the plain module (e.g. to read its state or to run
it without a gradient all-reduce) call :func:`unwrap`, so a checkpoint never holds the
``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``) prefixes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from softdistill.engine.distributed import DistContext

__all__ = ["wrap", "unwrap", "CompileError", "compile_errors", "has_4d_weights", "COMPILE_KEYS"]

#: the ``torch.compile`` keyword arguments a recipe may give (``train.compile: {backend: ..., mode: ...}``)
COMPILE_KEYS = ("backend", "mode", "dynamic", "fullgraph", "options")


class CompileError(RuntimeError):
    """``torch.compile`` failed on this platform; the message names the option that turns it off."""


@contextlib.contextmanager
def compile_errors() -> Iterator[None]:
    """Turn a failure of ``torch.compile`` (raised lazily, on the first call of a compiled module)
    into one :class:`CompileError` paragraph instead of a Dynamo traceback."""
    try:
        yield
    except Exception as exc:
        dynamo = sys.modules.get("torch._dynamo.exc")
        if dynamo is None or not isinstance(exc, dynamo.TorchDynamoException):
            raise
        cause = getattr(exc, "inner_exception", None) or exc  # what the backend raised, when it was the backend
        reason = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
        raise CompileError(f"train.compile: torch.compile failed on this platform ({type(exc).__name__}: "
                           f"{type(cause).__name__}: {reason}). "
                           "Set train.compile: false to train without it, or choose another backend, e.g. "
                           "train.compile: {backend: aot_eager}.") from None


def has_4d_weights(module: nn.Module) -> bool:
    """Whether ``module`` has a 4-D weight (a 2-D convolution): what ``channels_last`` can speed up."""
    return any(p.dim() == 4 for p in module.parameters())


def wrap(module: nn.Module, ctx: DistContext, *, compile: bool | dict[str, Any] = False,
         channels_last: bool = False) -> nn.Module:
    """``module`` in the channels_last memory format (when asked), compiled (``compile``: True or
    ``torch.compile`` keyword arguments) and, in a distributed run, wrapped in DDP when it has
    parameters to train."""
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
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
