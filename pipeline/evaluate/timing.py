"""Throughput: clips per second of the model forward on one fixed batch of real features, per r.

Model forward only, batched, after warm-up, the device synchronised around each measurement, with
`student.benchmark.time_settings` (the timer `fat bench student` uses too), so the numbers compare
settings, not data loading."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pipeline import runtime
from pipeline.evaluate.settings import TimingSettings
from pipeline.runtime import Precision
from student.benchmark import Setting, time_settings
from student.tome import parse_r_spec, set_tome_r


def precision_of(timing: TimingSettings) -> Precision:
    """The autocast policy of the timing settings' precision on their device (pipeline.runtime's rules)."""
    return runtime.choose_precision(timing.precision, torch.device(timing.device))


def measure_throughput(model: Any, batch: Any, r_settings: Sequence[str], timing: TimingSettings) -> dict[str, float]:
    """Clips per second of `model(batch)` at each r on the timing device, with the project's one
    timer (`student.benchmark.time_settings`, as `fat bench student`): warm-up, then rounds in
    which every r runs `timed_batches` batches, the order rotated each round; each r keeps its
    median round, so a burst of load from elsewhere on the machine hits all settings alike."""
    device = torch.device(timing.device)
    batch = batch.to(device)
    settings = [Setting(r, lambda: model(batch), lambda r=r: set_tome_r(model, parse_r_spec(r))) for r in r_settings]
    warmup = max(1, math.ceil(timing.warmup_batches / timing.timed_batches))
    with torch.inference_mode(), precision_of(timing).autocast():
        timings = time_settings(settings, device, rounds=timing.rounds, warmup=warmup, steps=timing.timed_batches)
    return {r: batch.shape[0] * timing.timed_batches / timings[r].seconds for r in r_settings}


def timing_batch(loader: Any, inputs: Any, batch_size: int) -> Any:
    """One batch of real eval features (`DeviceInputs.evaluation`), repeated up to `batch_size` clips
    if the set is smaller."""
    with torch.inference_mode():
        features = inputs.evaluation(next(iter(loader)))
    if features.shape[0] < batch_size:
        repeats = math.ceil(batch_size / features.shape[0])
        features = torch.cat([features] * repeats)[:batch_size]
    return features
