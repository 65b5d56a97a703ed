"""Mixing augmentations: mixup (Zhang et al., 2018) and cutmix (Yun et al., 2019).

Both return the mixed batch and ``(labels_a, labels_b, lam)``: sample i is ``lam_i`` parts
sample i (label a) and ``1 - lam_i`` parts sample ``perm[i]`` of the same batch (label b).
``lam`` is always a float32 tensor of shape (B,): one Beta(alpha, alpha) draw shared by the
batch (the default, as in the papers' code) or one draw per sample.  For cutmix, ``lam`` is
the exact share of pixels kept from sample i after the box is clipped to the image, for square
and non-square images alike.  Random numbers come from PyTorch's global generator, which the
trainer seeds per epoch, so mixed batches are reproducible and resume exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mixup", "cutmix", "MIXES"]

MIXES = ("mixup", "cutmix")


def _draw(alpha: float, n: int, device: torch.device) -> Tensor:
    if alpha <= 0:
        raise ValueError(f"the Beta parameter alpha must be > 0, got {alpha}")
    lam = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample((n,))
    return lam.to(device)


def _pairing(x: Tensor, y: Tensor) -> Tensor:
    if x.dim() != 4 or y.shape != x.shape[:1]:
        raise ValueError(f"expected images B x C x H x W and labels (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
    return torch.randperm(x.shape[0]).to(x.device)


def mixup(x: Tensor, y: Tensor, alpha: float = 1.0, per_sample: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x~_i = lam_i x_i + (1 - lam_i) x_perm(i)``; returns (x~, y, y[perm], lam)."""
    perm = _pairing(x, y)
    lam = _draw(alpha, x.shape[0] if per_sample else 1, x.device).expand(x.shape[0]).contiguous()
    w = lam.view(-1, 1, 1, 1).to(x.dtype)
    return w * x + (1 - w) * x[perm], y, y[perm], lam


def cutmix(x: Tensor, y: Tensor, alpha: float = 1.0, per_sample: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Paste a box of sample perm(i) into sample i; the box covers a share 1 - lam' of the image
    (lam' ~ Beta), centred uniformly and clipped to the image; the returned lam is the exact
    share of sample i's pixels that remain."""
    perm = _pairing(x, y)
    n, _, h, w = x.shape
    boxes = n if per_sample else 1
    cut = (1 - _draw(alpha, boxes, x.device)).sqrt()
    cut_h, cut_w = (cut * h).round(), (cut * w).round()
    cy = torch.randint(0, h, (boxes,)).to(x.device)
    cx = torch.randint(0, w, (boxes,)).to(x.device)
    top, bottom = (cy - cut_h / 2).round().clamp(0, h), (cy + cut_h / 2).round().clamp(0, h)
    left, right = (cx - cut_w / 2).round().clamp(0, w), (cx + cut_w / 2).round().clamp(0, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < bottom.view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < right.view(-1, 1, 1)))  # boxes x H x W
    inside = inside.expand(n, h, w)
    mixed = torch.where(inside.unsqueeze(1), x[perm], x)
    lam = 1 - inside.float().mean(dim=(1, 2))
    return mixed, y, y[perm], lam
