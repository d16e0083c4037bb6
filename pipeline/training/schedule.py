"""Learning rate: linear warm-up over optimiser steps × AST's step decay over epochs.

AST decays with MultiStepLR(milestones = start, start + step, ...) stepped after each epoch, so
during 1-based epoch e the rate is lr · factor^(number of milestones ≤ e − 1) — e.g. the balanced
recipe (10 / 5 / 0.5) trains epochs 1–10 at 5e-5 and 11–15 at 2.5e-5. AST's warm-up is a
staircase that starts at lr = 0 for 50 steps; here it is linear from lr / warmup_steps, so no
step is wasted at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LRSchedule:
    base_lr: float
    warmup_steps: int = 0
    decay_start: int = 10
    decay_step: int = 5
    decay_factor: float = 0.5
    step: int = 0  # optimiser steps taken
    epoch: int = 1  # the 1-based epoch being trained

    def decays(self, epoch: int) -> int:
        finished = epoch - 1
        if finished < self.decay_start:
            return 0
        return (finished - self.decay_start) // self.decay_step + 1

    def lr(self) -> float:
        warm = min(1.0, (self.step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.base_lr * warm * self.decay_factor ** self.decays(self.epoch)

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        value = self.lr()
        for group in optimizer.param_groups:
            group["lr"] = value
        return value

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
