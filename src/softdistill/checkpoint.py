"""Checkpoint files: written atomically, read as untrusted input with clear errors, self-describing.

A checkpoint is a dict saved with ``torch.save`` and read with ``weights_only=True`` (plain data
and tensors only, no pickled code; :func:`torch_load_plain`, which every file softdistill reads
with ``torch.load`` goes through).  Its metadata has a typed schema (:class:`CheckpointMeta`):
the model it holds (architecture, class count, input shape) or, for a VAE, its settings; the input
normalisation; the data it was trained on; and the recipe.  So a checkpoint alone rebuilds a
working model, and a checkpoint made on other data can be refused.  Beside the metadata: the
``epoch`` (of ``epochs``), the ``seed``, the ``state_dict``, the per-epoch ``history`` and, in
``last.pt``, what an exact resume needs (``optimizer``, ``scaler``, ``method_state``, and ``step``
for a checkpoint written inside an epoch).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from torch import nn

from softdistill.atomic import torch_save_atomic
from softdistill.models import build_model
from softdistill.schema import StrictConfig, describe_errors

__all__ = ["CheckpointError", "FORMAT", "ModelSpec", "Normalization", "DataSpec", "CheckpointMeta", "save_checkpoint",
           "load_checkpoint", "model_from_checkpoint", "check_model_fits", "UnreadableTorchFile", "torch_load_plain"]

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


class ModelSpec(StrictConfig):
    """The model a checkpoint holds: a registered name, its class count and input shape."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int


class Normalization(StrictConfig):
    """The per-channel input normalisation ``x = (pixels - mean) / std`` (pixels in [0, 1])."""

    mean: list[float]
    std: list[float]


class DataSpec(StrictConfig):
    """The data a checkpoint's model was trained on: the data set's name, its class names (for a
    classifier) and, for a VAE, the images' channels and side."""

    name: str
    class_names: list[str] | None = None
    in_channels: int | None = None
    image_size: int | None = None


class CheckpointMeta(StrictConfig):
    """What every checkpoint says about itself (``kind``: a classifier ``model`` or a ``vae``)."""

    kind: Literal["model", "vae"] = "model"
    model: ModelSpec | None = None
    vae: dict[str, Any] | None = None
    normalization: Normalization
    data: DataSpec
    config: dict[str, Any]

    def to_payload(self) -> dict[str, Any]:
        """The metadata as a checkpoint stores it (plain data)."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def of(cls, payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> "CheckpointMeta":
        """The metadata of a loaded checkpoint, checked; :class:`CheckpointError` naming ``path`` otherwise."""
        fields = {key: payload[key] for key in cls.model_fields if key in payload}
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise CheckpointError(f"{path}: not a usable softdistill checkpoint: "
                                  + "; ".join(describe_errors(exc.errors(), cls))) from None


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`softdistill.atomic.write_atomic`).

    A crash at any point leaves either the old file or the new one, never a truncated file.
    """
    torch_save_atomic(path, {"format": FORMAT, **payload})


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, its metadata checked against
    :class:`CheckpointMeta`; :class:`CheckpointError` naming the file otherwise."""
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
    CheckpointMeta.of(payload, path)
    return payload


def check_model_fits(meta: CheckpointMeta, source: str | os.PathLike, data_name: str, num_classes: int,
                     in_channels: int, image_size: int) -> None:
    """:class:`CheckpointError` unless the checkpoint's model predicts the data's classes and was trained on
    images of its shape (a CNN with global pooling would run on any size, and silently be wrong)."""
    spec = _model_spec(meta, source)
    expected = (spec.num_classes, spec.in_channels, spec.image_size)
    if (num_classes, in_channels, image_size) != expected:
        raise CheckpointError(f"{source} holds a model for {spec.num_classes} classes and "
                              f"{_shape(*expected[1:])} images; {data_name} has {num_classes} classes and "
                              f"{_shape(in_channels, image_size)} images")


def _shape(channels: int, size: int) -> str:
    return f"{channels}x{size}x{size}"


def _model_spec(meta: CheckpointMeta, source: str | os.PathLike) -> ModelSpec:
    if meta.model is None:
        raise CheckpointError(f"{source} holds a {meta.kind}, not a classifier")
    return meta.model


def model_from_checkpoint(payload: dict[str, Any], source: str | os.PathLike = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    spec = _model_spec(CheckpointMeta.of(payload, source), source)
    model = build_model(spec.name, spec.num_classes, spec.in_channels, spec.image_size)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{source}: weights do not fit a {spec.name!r} model: {exc}") from None
    return model
