"""Progress lines of `fat evaluate`: a line when a phase starts, then one every `every` seconds.

Log lines rather than a bar, as `fat logits` does: evaluate mostly runs under `dvc repro`, whose
stderr is no terminal, and a scoring pass over a large eval set at several r takes minutes.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


class Progress:
    """Counts clips of one phase; logs `done / total clips, clips/s` at most every `every` seconds and at the end."""

    def __init__(self, what: str, total: int, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.total = total
        self.every = every
        self.clock = clock
        self.done = 0
        self.started = self.last = clock()
        log.info("%s: %d clips", what, total)

    def update(self, clips: int) -> None:
        self.done += clips
        now = self.clock()
        if now - self.last >= self.every or self.done >= self.total:
            log.info("  %s: %d / %d clips, %.1f clips/s", self.what, self.done, self.total,
                     self.done / max(now - self.started, 1e-9))
            self.last = now
