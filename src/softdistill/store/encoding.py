"""How a store encodes the soft label of one (sample, view): fixed-size records, no pickle.

``full``: the K logits, float32 (exact) or float16.

``topk``: the k largest logits (``values``, descending, float32 or float16), their classes
(``indices``, int16 when K <= 32767 else int32) and ``tail = log sum_{j not in S} exp z_j``, the
log-mass of the other K - k classes at T = 1 (float32; -inf when k = K).  The rebuilding rule
(:func:`topk_logits`) spreads the tail's mass evenly over the classes left out::

    z_hat_j = z_j                          for j in S (the top k)
    z_hat_j = tail - log(K - k)            for j not in S

and the soft label at any temperature T is ``softmax(z_hat / T)``.  At T = 1 this keeps the
probability of every top-k class and the total tail mass exactly (the normaliser is unchanged);
it is exact at every T when k >= K - 1.  At T != 1 the tail's shape matters and the rule is an
approximation; its error is measured in docs/store.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from softdistill.schema import StrictConfig

__all__ = ["Encoding", "EncodingConfig", "EncodingKind", "EncodingDtype", "ENCODING_KINDS", "ENCODING_DTYPES",
           "topk_encode", "topk_logits"]


def topk_encode(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, indices, tail)`` of logits (... x K): the k largest logits (descending), their
    classes, and the log-sum-exp of the others (-inf when k = K); float32 arithmetic."""
    z = logits.float()
    values, indices = z.topk(k, dim=-1)
    rest = z.scatter(-1, indices, float("-inf"))
    return values, indices, torch.logsumexp(rest, dim=-1)


def topk_logits(values: Tensor, indices: Tensor, tail: Tensor, num_classes: int) -> Tensor:
    """Rebuild ... x K logits from a top-k record by the rule of the module docstring."""
    k = values.shape[-1]
    if k >= num_classes:
        fill = torch.full(values.shape[:-1] + (num_classes,), float("-inf"), dtype=torch.float32, device=values.device)
    else:
        spread = tail.float() - math.log(num_classes - k)
        fill = spread.unsqueeze(-1).expand(*values.shape[:-1], num_classes).clone()
    return fill.scatter(-1, indices.long(), values.float())


EncodingKind = Literal["full", "topk"]
EncodingDtype = Literal["float32", "float16"]
ENCODING_KINDS: tuple[str, ...] = get_args(EncodingKind)
ENCODING_DTYPES: tuple[str, ...] = get_args(EncodingDtype)


class EncodingConfig(StrictConfig):
    """``encoding:`` of a label recipe: how a store encodes each soft label (see the module docstring)."""

    kind: EncodingKind = Field("full", description="full: every logit; topk: the k largest + the tail's mass")
    dtype: EncodingDtype = Field("float32", description="of the logits (full) or top-k values")
    k: int | None = Field(None, ge=1, description="topk: how many classes are kept")

    @model_validator(mode="after")
    def _k_for_topk(self) -> "EncodingConfig":
        if (self.kind == "topk") != (self.k is not None):
            raise ValueError("encoding.k is needed for kind: topk and only there")
        return self

    def encoding(self, num_classes: int) -> "Encoding":
        """The encoding of these settings for ``num_classes`` classes."""
        return Encoding(self.kind, num_classes, self.dtype, self.k)


@dataclass(frozen=True)
class Encoding:
    """An encoding (``full`` or ``topk``, see the module docstring) for ``num_classes`` classes."""

    kind: EncodingKind
    num_classes: int
    dtype: EncodingDtype = "float32"
    k: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENCODING_KINDS:
            raise ValueError(f"encoding kind must be one of {ENCODING_KINDS}, got {self.kind!r}")
        if self.dtype not in ENCODING_DTYPES:
            raise ValueError(f"encoding dtype must be one of {ENCODING_DTYPES}, got {self.dtype!r}")
        if self.kind == "topk" and (self.k is None or not 1 <= self.k <= self.num_classes):
            raise ValueError(f"a topk encoding needs 1 <= k <= {self.num_classes} (the class count), got k = {self.k}")
        if self.kind == "full" and self.k is not None:
            raise ValueError("k belongs to the topk encoding only")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Encoding":
        return cls(raw["kind"], int(raw["num_classes"]), raw.get("dtype", "float32"), raw.get("k"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes, "dtype": self.dtype, "k": self.k}

    @property
    def record_dtype(self) -> np.dtype:
        """The numpy (structured) dtype of one record."""
        if self.kind == "full":
            return np.dtype([("logits", self.dtype, (self.num_classes,))])
        index = "int16" if self.num_classes <= np.iinfo(np.int16).max else "int32"
        return np.dtype([("values", self.dtype, (self.k,)), ("indices", index, (self.k,)), ("tail", "float32")])

    @property
    def record_bytes(self) -> int:
        return self.record_dtype.itemsize

    def encode(self, logits: Tensor) -> np.ndarray:
        """Records (shape ``logits.shape[:-1]``) of float logits (... x K)."""
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"logits of {logits.shape[-1]} classes for an encoding of {self.num_classes}")
        out = np.empty(tuple(logits.shape[:-1]), dtype=self.record_dtype)
        if self.kind == "full":
            out["logits"] = logits.detach().float().cpu().numpy().astype(self.dtype)
            return out
        values, indices, tail = topk_encode(logits.detach().cpu(), self.k)
        out["values"] = values.numpy().astype(self.dtype)
        out["indices"] = indices.numpy()
        out["tail"] = tail.numpy()
        return out

    def decode(self, records: np.ndarray) -> Tensor:
        """float32 logits (... x K) of records, by the rebuilding rule for ``topk``."""
        if self.kind == "full":
            return torch.from_numpy(np.ascontiguousarray(records["logits"], dtype=np.float32))
        values = torch.from_numpy(np.ascontiguousarray(records["values"], dtype=np.float32))
        indices = torch.from_numpy(np.ascontiguousarray(records["indices"], dtype=np.int64))
        tail = torch.from_numpy(np.ascontiguousarray(records["tail"], dtype=np.float32))
        return topk_logits(values, indices, tail, self.num_classes)
