"""The one owner of model wrapping: BatchNorm synchronisation and compile (when asked), then DDP;
and the one ``unwrap``.

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
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from softdistill.runtime.distributed import DistContext

__all__ = ["wrap", "unwrap", "CompileError", "compile_errors", "has_4d_weights", "COMPILE_KEYS", "GlobalBatchNorm",
           "global_batchnorm"]

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


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm that, in training mode in a process group, normalises with the mean and variance
    of the global batch (every process's slice), so N processes compute what one process does.

    Any device and back end (torch's ``SyncBatchNorm`` needs CUDA); the same parameters and
    buffers as ``BatchNorm1d/2d/3d``, so checkpoints load into the plain model.  Statistics are
    summed over processes with a differentiable all-reduce (mean first, then the centred squares).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (batch, channels, ...), got {input.dim()}")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float()
        dims, shape = [0, *range(2, x.dim())], (1, -1) + (1,) * (x.dim() - 2)
        count = torch.full((1,), x.numel() / x.shape[1], device=x.device)
        totals = all_reduce(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            self.num_batches_tracked.add_(1)
            # momentum None: a cumulative average, its factor kept on the device (no host read in the step)
            factor = (1.0 / self.num_batches_tracked.to(mean.dtype) if self.momentum is None
                      else torch.tensor(self.momentum, dtype=mean.dtype, device=mean.device))
            with torch.no_grad():
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * n / (n - 1).clamp(min=1), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by a :class:`GlobalBatchNorm` that keeps the
    layer's own parameters and buffers (the optimiser and checkpoints see the same tensors)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        layer = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        for name, param in module.named_parameters(recurse=False):
            setattr(layer, name, param)
        for name, buffer in module.named_buffers(recurse=False):
            setattr(layer, name, buffer)
        return layer.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child))
    return module


def wrap(module: nn.Module, ctx: DistContext, *, compile: bool | dict[str, Any] = False,
         channels_last: bool = False, sync_batchnorm: bool = False) -> nn.Module:
    """``module`` with BatchNorm over the global batch in a distributed run (``sync_batchnorm``,
    :func:`global_batchnorm`), in the channels_last memory format (when asked), compiled
    (``compile``: True or ``torch.compile`` keyword arguments) and, in a distributed run, wrapped in
    DDP when it has parameters to train."""
    if sync_batchnorm and ctx.distributed:
        module = global_batchnorm(module)
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
