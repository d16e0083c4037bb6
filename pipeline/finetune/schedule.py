"""EfficientAT's fine-tuning learning rate: per epoch, an exponential warm-up times a linear ramp-down.

During 1-based epoch E the factor is f(E − 1) with f(e) = rampup(e) · rampdown(e):
rampup(e) = exp(−5 (1 − max(e, 0.5)/W)²) while e < W, then 1 (Laine & Aila's ramp-up; epoch 0
counts as 0.5, so it does not start at exp(−5)); rampdown(e) = 1 until e = S, then falls
linearly over L epochs to `last`, where it stays. Unlike `fat train`'s AST schedule
(pipeline.training.schedule, per optimiser step), it changes once per epoch, as upstream's
LambdaLR stepped after each epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RampSchedule:
    base_lr: float
    warmup_epochs: int = 10
    rampdown_start: int = 10
    rampdown_epochs: int = 65
    last: float = 0.01

    def factor(self, epoch: int) -> float:
        """The rate's share during 1-based `epoch`."""
        e = epoch - 1
        up = 1.0
        if e < self.warmup_epochs:
            phase = 1.0 - max(e, 0.5) / self.warmup_epochs
            up = math.exp(-5.0 * phase * phase)
        if e <= self.rampdown_start:
            down = 1.0
        elif e - self.rampdown_start < self.rampdown_epochs:
            down = self.last + (1.0 - self.last) * (self.rampdown_epochs - e + self.rampdown_start) / self.rampdown_epochs
        else:
            down = self.last
        return up * down

    def lr(self, epoch: int) -> float:
        return self.base_lr * self.factor(epoch)

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        value = self.lr(epoch)
        for group in optimizer.param_groups:
            group["lr"] = value
        return value
