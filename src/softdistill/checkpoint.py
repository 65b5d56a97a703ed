"""Checkpoint files: written atomically, read with clear errors, self-describing.

A checkpoint is a dict saved with ``torch.save`` and read with ``weights_only=True`` (plain data
and tensors only, no pickled code; :func:`torch_load_plain`, which every file softdistill reads
with ``torch.load`` goes through).  It names the model it holds (architecture, class count,
input shape) and the input normalisation, so a checkpoint alone rebuilds a working model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softdistill.atomic import torch_save_atomic
from softdistill.models import build_model

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "load_checkpoint", "model_from_checkpoint", "check_model_fits",
           "UnreadableTorchFile", "torch_load_plain"]

FORMAT = "softdistill-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit what it is loaded into."""


class UnreadableTorchFile(ValueError):
    """``torch.load`` could not read a file as plain data and tensors; the message says why in one line."""


def torch_load_plain(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: plain data and tensors only, never code.  Any failure is an
    :class:`UnreadableTorchFile` that says why in one line, without torch's advice to load the file with
    ``weights_only=False`` or to allow-list its classes, which must never be followed for a file whose
    origin is unknown."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated, foreign or unsafe files
        text = " ".join(str(exc).split())
        unsafe = re.search(r"WeightsUnpickler error: (.*?\.)(?= |$)", text)
        if unsafe:
            reason = f"it holds Python objects that are not plain data or tensors ({unsafe[1]})"
        elif "weights_only" in text:
            reason = f"{type(exc).__name__}: it holds Python objects that are not plain data or tensors"
        else:
            reason = text or type(exc).__name__
        raise UnreadableTorchFile(reason) from None


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`softdistill.atomic.write_atomic`).

    A crash at any point leaves either the old file or the new one, never a truncated file.
    """
    torch_save_atomic(path, {"format": FORMAT, **payload})


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch_load_plain(path, map_location)
    except UnreadableTorchFile as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch file of plain data ({exc})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a softdistill checkpoint (format {FORMAT})")
    return payload


def check_model_fits(payload: dict[str, Any], source: str | os.PathLike, data_name: str, num_classes: int,
                     in_channels: int, image_size: int) -> None:
    """:class:`CheckpointError` unless the checkpoint's model predicts the data's classes and was trained on
    images of its shape (a CNN with global pooling would run on any size, and silently be wrong)."""
    spec = payload["model"]
    expected = (spec["num_classes"], spec["in_channels"], spec["image_size"])
    if (num_classes, in_channels, image_size) != expected:
        raise CheckpointError(f"{source} holds a model for {spec['num_classes']} classes and "
                              f"{_shape(*expected[1:])} images; {data_name} has {num_classes} classes and "
                              f"{_shape(in_channels, image_size)} images")


def _shape(channels: int, size: int) -> str:
    return f"{channels}x{size}x{size}"


def model_from_checkpoint(payload: dict[str, Any], source: str | os.PathLike = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    spec = payload["model"]
    model = build_model(spec["name"], spec["num_classes"], spec["in_channels"], spec["image_size"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit a {spec['name']!r} model: {exc}") from None
    return model
