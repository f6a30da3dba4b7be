"""Optimiser and learning-rate schedule (stepped once per epoch).

The schedule is closed-form in the epoch (warm-up factor x gamma^(milestones passed)), so its
state is just ``last_epoch`` and resuming it is exact.
"""
from __future__ import annotations

from bisect import bisect_right

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["build_optimizer", "WarmupMultiStepLR"]


def build_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)
    raise ValueError(f"optimizer: got {name!r}, expected adam, adamw or sgd")


class WarmupMultiStepLR(LRScheduler):
    """lr(e) = base_lr * warm(e) * gamma ** #{m in milestones : m <= e}.

    ``warm(e)`` rises linearly from ``warmup_factor`` at epoch 0 to 1 at ``warmup_epochs``.
    With ``warmup_epochs=0`` this is ``MultiStepLR`` (the release: x0.1 at 60, 120, 180).
    """

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_epochs=0, warmup_factor=0.01, last_epoch=-1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.warmup_factor = warmup_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        warm = 1.0
        if epoch < self.warmup_epochs:
            alpha = epoch / self.warmup_epochs
            warm = self.warmup_factor * (1 - alpha) + alpha
        return warm * self.gamma ** bisect_right(self.milestones, epoch)

    def load_state_dict(self, state_dict):
        # the closed form makes the restored epoch alone define the lr: apply it now, so the
        # optimiser is right even when its own state was not restored alongside
        super().load_state_dict(state_dict)
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def get_lr(self):
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
