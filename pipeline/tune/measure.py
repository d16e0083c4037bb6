"""Measuring schedules: features computed once, accuracy of many schedules per pass over them, and
throughput with `fat evaluate`'s timer (all settings of one call timed round-robin, so load from
elsewhere on the machine hits them alike)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.evaluate.scoring import forward_scores
from pipeline.evaluate.settings import TimingSettings
from pipeline.evaluate.timing import measure_throughput, precision_of
from pipeline.metrics import score
from pipeline.tune.candidates import Schedule
from student.tome import format_r_spec, set_tome_r

log = logging.getLogger(__name__)


@dataclass
class FeatureCache:
    """The validation set's normalised fbank batches on the scoring device (independent of r), and the
    targets in the same order."""

    batches: list[torch.Tensor]
    targets: np.ndarray

    @classmethod
    def build(cls, loader: Any, inputs: Any, targets: np.ndarray, device: str) -> "FeatureCache":
        batches, order = [], []
        with torch.inference_mode():
            for batch in loader:
                batches.append(inputs.evaluation(batch).to(device))
                order.append(np.asarray(batch["index"]))
        positions = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
        return cls(batches, targets[positions])

    def timing_batch(self, size: int) -> torch.Tensor:
        """One batch of `size` real clips (repeated when the set is smaller) for the throughput timer."""
        features = torch.cat(self.batches)[:size]
        repeats = -(-size // features.shape[0])
        return torch.cat([features] * repeats)[:size]


def name_of(schedule: Schedule) -> str:
    return format_r_spec(list(schedule))


def accuracy(model: Any, cache: FeatureCache, schedules: Sequence[Schedule], timing: TimingSettings,
             multi_label: bool) -> dict[Schedule, dict[str, float]]:
    """The metrics of every schedule, one pass over the cached features (each batch runs at every schedule)."""
    precision = precision_of(timing)
    chunks: dict[Schedule, list[np.ndarray]] = {s: [] for s in schedules}
    with torch.inference_mode():
        for features in cache.batches:
            for schedule in schedules:
                set_tome_r(model, list(schedule))
                chunks[schedule].append(forward_scores(model, features, precision))
    return {s: score(cache.targets, np.concatenate(c), multi_label) for s, c in chunks.items()}


def throughput(model: Any, batch: torch.Tensor, schedules: Sequence[Schedule],
               timing: TimingSettings) -> dict[Schedule, float]:
    """Clips per second of each schedule, timed together (evaluate's timer: warm-up, rotating rounds, medians)."""
    names = {name_of(s): s for s in schedules}
    speeds = measure_throughput(model, batch, list(names), timing)
    return {names[name]: value for name, value in speeds.items()}
