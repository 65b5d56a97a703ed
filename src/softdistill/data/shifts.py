"""Distribution shifts of images and the out-of-domain (OOD) test sets built from them.

The transforms are pure functions on float images in [0, 1] units, N x C x H x W; the image
row index grows downwards and the column index to the right, as images are shown on screen.

An OOD set is named by a specification ``kind:amount``:

* ``shift:k``  -- each image translated by a random integer offset (dx, dy) drawn uniformly
  from [-k, k]^2, vacated pixels black (``k`` must be an integer);
* ``rotate:d`` -- each image rotated about its centre by a random angle uniform in [-d, d] degrees;
* ``noise:s``  -- Gaussian pixel noise of standard deviation ``s`` (in [0, 1] pixel units), clipped to [0, 1];
* ``blur:s``   -- Gaussian blur with a standard deviation of ``s`` pixels.

The random draws come from a generator seeded by the set's seed alone, so a set is the same in
every run.  Its canonical name, the key of its metrics, is kind and amount run together:
``shift4``, ``rotate20``, ``noise0.2``, ``blur1``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from softdistill.data.samples import TensorSet

__all__ = ["OOD_KINDS", "OODSpec", "parse_ood_spec", "parse_ood_specs", "ood_set", "ood_sets", "translate", "rotate",
           "gaussian_noise", "gaussian_blur"]

OOD_KINDS: tuple[str, ...] = ("shift", "rotate", "noise", "blur")
_FORM = f"the form kind:amount, e.g. shift:4, with kind one of {', '.join(OOD_KINDS)}"
_CHUNK_SIZE = 2048  # images transformed at once by ood_set (bounds memory; part of what a seed draws)


def _per_sample(value: int | float | Tensor, n: int, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """``value`` (a scalar or a tensor of shape (N,)) as a tensor of shape (N,) on ``device``."""
    return torch.as_tensor(value, device=device, dtype=dtype).expand(n)


def _source_index(length: int, shift: Tensor) -> tuple[Tensor, Tensor]:
    """For content moved by ``shift`` (N,) along an axis: the source index of every target position
    (N x length, clamped into range) and whether that source lies inside the image."""
    source = torch.arange(length, device=shift.device) - shift.view(-1, 1)
    inside = (source >= 0) & (source < length)
    return source.clamp(0, length - 1), inside


def translate(images: Tensor, dx: int | Tensor, dy: int | Tensor) -> Tensor:
    """Move each image's content by whole pixels: ``dx`` to the right, ``dy`` down (negative: left, up).

    ``dx`` and ``dy`` are ints or integer tensors of shape (N,); vacated pixels become 0.  Exact
    (a gather, no interpolation); a shift of the image's size or more leaves it all zeros.
    """
    n, c, h, w = images.shape
    dx, dy = _per_sample(dx, n, images.device), _per_sample(dy, n, images.device)
    if dx.is_floating_point() or dy.is_floating_point():
        raise TypeError(f"translate takes integer shifts, got {dx.dtype} and {dy.dtype}")
    rows, rows_inside = _source_index(h, dy)
    cols, cols_inside = _source_index(w, dx)
    moved = images.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
    moved = moved.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
    inside = rows_inside.view(n, 1, h, 1) & cols_inside.view(n, 1, 1, w)
    return moved.masked_fill(~inside, 0)


def rotate(images: Tensor, degrees: float | Tensor) -> Tensor:
    """Rotate each image about its centre by ``degrees`` (a float or a tensor of shape (N,));
    positive turns the content counter-clockwise on screen.

    Bilinear sampling, 0 outside the image, in pixel units (so non-square images are not sheared);
    pixel centres as ``align_corners=False`` places them.
    """
    n, _, h, w = images.shape
    angle = torch.deg2rad(_per_sample(degrees, n, images.device, images.dtype))
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    # output -> input coordinates in grid units ([-1, 1] across each axis): the rotation by +angle in
    # pixel coordinates with y pointing down, conjugated by the per-axis scale of the grid.
    theta = torch.stack([torch.stack([cos, -sin * (h / w), zero], 1),
                         torch.stack([sin * (w / h), cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_noise(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Add independent N(0, ``sigma``^2) noise to every pixel, drawn from ``generator``, and clip to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator, device=generator.device, dtype=images.dtype)
    return (images + sigma * noise.to(images.device)).clamp_(0, 1)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Blur each channel with a Gaussian of standard deviation ``sigma`` pixels.

    Separable (a row pass then a column pass) with a kernel of radius ceil(3 sigma), normalised to
    sum 1.  Zero padding: pixels beyond the border count as black, so borders of bright images
    darken.  ``sigma = 0`` returns a copy.
    """
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    radius = math.ceil(3 * sigma)
    if radius == 0:
        return images.clone()
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-offsets.square() / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    along_rows = F.conv2d(images, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)
    return F.conv2d(along_rows, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)


@dataclass(frozen=True)
class OODSpec:
    """One OOD set: a shift ``kind`` (one of :data:`OOD_KINDS`) and its ``amount`` (see the module docstring)."""

    kind: str
    amount: float

    @property
    def name(self) -> str:
        """The canonical name, e.g. ``shift4`` or ``noise0.2``."""
        return f"{self.kind}{self.amount:g}"

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """This shift applied to float images in [0, 1], random draws taken from ``generator``."""
        n = images.shape[0]
        if self.kind == "shift":
            k = int(self.amount)
            offsets = torch.randint(-k, k + 1, (2, n), generator=generator)
            return translate(images, offsets[0], offsets[1])
        if self.kind == "rotate":
            angles = (2 * torch.rand(n, generator=generator) - 1) * self.amount
            return rotate(images, angles)
        if self.kind == "noise":
            return gaussian_noise(images, self.amount, generator)
        return gaussian_blur(images, self.amount)


def parse_ood_spec(text: str) -> OODSpec:
    """Read ``kind:amount`` (e.g. ``shift:4``, ``rotate:20``, ``noise:0.2``, ``blur:1.0``); raise
    ValueError saying what is wrong, the valid kinds and the expected form."""
    kind, sep, amount_text = text.strip().partition(":")
    kind = kind.strip()
    if not sep:
        raise ValueError(f"OOD set {text!r} must have {_FORM}")
    if kind not in OOD_KINDS:
        close = difflib.get_close_matches(kind, OOD_KINDS, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"OOD set {text!r}: unknown kind {kind!r}{hint} (expected {_FORM})")
    try:
        amount = float(amount_text)
    except ValueError:
        raise ValueError(f"OOD set {text!r}: amount {amount_text.strip()!r} is not a number (expected {_FORM})") from None
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"OOD set {text!r}: the amount must be a finite number >= 0")
    if kind == "shift" and not amount.is_integer():
        raise ValueError(f"OOD set {text!r}: a shift is a whole number of pixels")
    return OODSpec(kind, amount)


def ood_set(test: TensorSet, spec: OODSpec | str, seed: int = 0) -> TensorSet:
    """``test`` with ``spec`` applied to every image (uint8 -> [0, 1] -> shifted -> rounded back to uint8).

    The random draws come from a generator seeded by ``seed`` (the global RNG is untouched);
    labels are kept.  Images are processed in chunks of 2048 to bound memory.
    """
    spec = parse_ood_spec(spec) if isinstance(spec, str) else spec
    generator = torch.Generator().manual_seed(seed)
    chunks = [spec.apply(chunk.float().div_(255), generator).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
              for chunk in test.images.split(_CHUNK_SIZE)]
    return TensorSet(torch.cat(chunks), test.labels.clone())


def parse_ood_specs(specs: Iterable[OODSpec | str]) -> list[OODSpec]:
    """:func:`parse_ood_spec` for every string; raise ValueError when two share a canonical name."""
    parsed = [parse_ood_spec(s) if isinstance(s, str) else s for s in specs]
    names = [s.name for s in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"OOD sets given more than once: {', '.join(repeated)}")
    return parsed


def ood_sets(test: TensorSet, specs: Iterable[OODSpec | str], seed: int = 0) -> dict[str, TensorSet]:
    """:func:`ood_set` for every spec, keyed by canonical name; two specs of the same name are an error."""
    return {s.name: ood_set(test, s, seed) for s in parse_ood_specs(specs)}
