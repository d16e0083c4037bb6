"""Learning rate: linear warm-up over optimiser steps × AST's step decay over epochs.

AST decays with MultiStepLR(milestones = start, start + step, ...) stepped after each epoch, so
during 1-based epoch e the rate is lr · factor^(number of milestones ≤ e − 1) — e.g. the balanced
recipe (10 / 5 / 0.5) trains epochs 1–10 at 5e-5 and 11–15 at 2.5e-5. AST's warm-up is a
staircase that starts at lr = 0 for 50 steps; here it is linear from lr / warmup_steps, so no
step is wasted at zero.
"""

from __future__ import annotations

import math
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


def optimizer_steps_per_epoch(clips_per_rank: int, batch_size: int, accum_steps: int = 1) -> int:
    """Optimiser steps in one epoch: batches of this rank, a step every `accum_steps` and at the epoch's end."""
    batches = math.ceil(clips_per_rank / batch_size)
    return math.ceil(batches / accum_steps)


def schedule_warnings(schedule: LRSchedule, epochs: int, steps_per_epoch: int) -> list[str]:
    """One line per part of the schedule this run never reaches: a warm-up longer than the run (the
    rate never gets to --lr) and a step decay that would start after the last epoch. Recipes made
    for AudioSet's 20,000 clips (1000 warm-up steps, decay from epoch 10) do this silently on a
    few hundred clips."""
    total = epochs * steps_per_epoch
    lines = []
    if schedule.warmup_steps > total:
        peak = schedule.base_lr * total / schedule.warmup_steps
        lines.append(f"--warmup-steps {schedule.warmup_steps} is longer than the whole run ({total} optimiser steps: "
                     f"{epochs} epochs × {steps_per_epoch}): the learning rate peaks at {peak:.3g}, never at --lr "
                     f"{schedule.base_lr:g}; lower --warmup-steps (e.g. {max(1, total // 20)})")
    if schedule.decay_factor < 1.0 and schedule.decay_start >= epochs:
        lines.append(f"--lr-decay-start {schedule.decay_start}: the first decay would come after epoch "
                     f"{schedule.decay_start}, but the run ends at epoch {epochs}: the learning rate never decays "
                     "(lower --lr-decay-start, or --lr-decay-factor 1 for no decay)")
    return lines
