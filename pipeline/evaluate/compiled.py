"""`fat evaluate --compile`: the student compiled once, each r's graph built before anything is timed.

Compilation happens at the first call at each r (a new r is a new graph); that call is timed here
on the timing batch and reported apart (`EvalRow.compile_seconds`), so neither the scoring pass nor
the throughput figures include it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.evaluate.settings import TimingSettings
from pipeline.evaluate.timing import precision_of
from student.compile import compile_student, first_calls
from student.tome import parse_r_spec, set_tome_r

log = logging.getLogger(__name__)


def compile_and_warm(model: Any, batch: torch.Tensor, r_settings: Sequence[str], timing: TimingSettings,
                     name: str = "student") -> dict[str, float]:
    """Compile `model` in place and build the graph of every r; {r: seconds of its first call}, or {}
    when compilation is unavailable (one warning, the model stays eager)."""
    if not compile_student(model):
        return {}
    log.info("%s: compiling r = %s on %s (the first call at each r builds its graph)", name, " ".join(r_settings),
             timing.device)
    batch = batch.to(timing.device)
    settings = [(r, lambda r=r: set_tome_r(model, parse_r_spec(r))) for r in r_settings]
    with torch.inference_mode(), precision_of(timing).autocast():
        seconds = first_calls(lambda: model(batch), settings, timing.device)
    for r, value in seconds.items():
        log.info("%s r=%s: compiled in %.1f s", name, r, value)
    return seconds
