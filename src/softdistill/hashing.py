"""Counter-based hashing: random numbers as a pure function of integer keys.

Every draw that must be recomputable anywhere (a view's crop and flip, a mixing partner and its
lambda, SBT's per-sample wrong classes) is ``hash(seed, key, ..., stream)``: no sequential
generator, so any process, worker or rank gets the same number for the same keys, in any order
and any batch split.  Integers stay on 31 bits, so every product fits int64 on every device.

Also the content digests that files and data sets are identified by: :func:`sha256_of` a file and
:func:`data_fingerprint` of a split (its sample ids and labels).
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch import Tensor

__all__ = ["mix31", "hash_keys", "hash_uniform", "to_uniform", "hash_below", "data_fingerprint", "sha256_of"]

MASK31 = 2**31 - 1
_GOLDEN = 0x9E3779B  # odd 28-bit constant: spreads consecutive keys before mixing


def mix31(x: Tensor) -> Tensor:
    """An integer finaliser on 31 bits (xor-shift / multiply rounds; products stay below 2^62)."""
    x = x.long() & MASK31
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & MASK31
    x = x ^ (x >> 12)
    x = (x * 0x297A2D39) & MASK31
    return x ^ (x >> 15)


def hash_keys(*keys: Tensor | int) -> Tensor:
    """One 31-bit hash per element of the broadcast ``keys``; the order of the keys matters."""
    tensors = [k if isinstance(k, Tensor) else torch.tensor(int(k)) for k in keys]
    device = next((t.device for t in tensors if t.dim() > 0), tensors[0].device)
    h = torch.zeros((), dtype=torch.long, device=device)
    for position, key in enumerate(tensors):
        h = mix31(h ^ mix31(key.to(device).long() * _GOLDEN + position + 1))
    return h


def hash_uniform(*keys: Tensor | int) -> Tensor:
    """Uniform float64 numbers in (0, 1), one per element of the broadcast keys (31-bit resolution)."""
    return to_uniform(hash_keys(*keys))


def to_uniform(hashes: Tensor) -> Tensor:
    """31-bit hashes as uniform float64 numbers in (0, 1)."""
    return (hashes.double() + 0.5) / 2**31


def hash_below(n: int | Tensor, *keys: Tensor | int) -> Tensor:
    """Integers in ``[0, n)`` (int64), one per element of the broadcast keys (bias below n / 2^31)."""
    return hash_keys(*keys) % n


def data_fingerprint(ids: Tensor, labels: Tensor) -> str:
    """sha256 over the sample ids and labels (int64, little-endian) in row order: the identity of a split's
    samples, the same whichever source (image folder, shards, memory) holds them."""
    h = hashlib.sha256()
    h.update(ids.cpu().long().numpy().astype("<i8").tobytes())
    h.update(labels.cpu().long().numpy().astype("<i8").tobytes())
    return h.hexdigest()


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 (hex) of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            h.update(block)
    return h.hexdigest()
