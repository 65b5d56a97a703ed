"""Optimisers and learning-rate schedules (per step, with linear warm-up)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

__all__ = ["build_optimizer", "LRSchedule"]


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float, momentum: float = 0.9,
                    nesterov: bool = False, weight_decay: float = 0.0,
                    betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW (decoupled weight decay)."""
    params = list(params)
    if not params:
        raise ValueError("nothing to optimise: the method has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use sgd or adamw")


class LRSchedule:
    """Learning rate as a function of the global step.

    - warm-up: ``lr * t / warmup`` for epoch position t < warmup_epochs (t counts fractional epochs);
    - ``constant``: ``lr``;
    - ``multistep``: ``lr * gamma ** (number of milestones <= current epoch)``, epochs counted from 0;
    - ``cosine``: ``min_lr + (lr - min_lr) (1 + cos(pi * u)) / 2``, u the fraction of the
      post-warm-up steps done.
    Stateless, so a resumed run needs only its step count.
    """

    def __init__(self, name: str, base_lr: float, epochs: int, steps_per_epoch: int,
                 milestones: Sequence[int] = (), gamma: float = 0.1, warmup_epochs: float = 0.0,
                 min_lr: float = 0.0) -> None:
        if name not in ("constant", "multistep", "cosine"):
            raise ValueError(f"unknown schedule {name!r}; use constant, multistep or cosine")
        if steps_per_epoch < 1:
            raise ValueError("the training set yields no batch: lower the batch size or set drop_last: false")
        self.name = name
        self.base_lr = base_lr
        self.total_steps = epochs * steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.milestones = sorted(milestones)
        self.gamma = gamma
        self.warmup_steps = round(warmup_epochs * steps_per_epoch)
        self.min_lr = min_lr

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.name == "multistep":
            epoch = step // self.steps_per_epoch
            return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            u = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * u))
        return self.base_lr
