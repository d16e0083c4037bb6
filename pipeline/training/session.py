"""What every resumable epoch run shares (`fat train`, `fat finetune-teacher`): the process group around
it, DataLoader workers that leave SIGTERM to the main process, resuming from the saved state, the epoch
loop that saves and stops on SIGTERM, and the state file itself.

A run subclasses `EpochSession` and supplies its own steps (`train_epoch`, `end_epoch`, `finish`,
`restore`) and the state entries only it has (`state_fields`); one resume path serves both, so a fix to
how a run saves or stops reaches both.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any, Callable, Protocol

from pipeline import runtime
from pipeline.core.workers import ignore_sigterm, killed_on_error
from pipeline.training.logs import RunLog
from pipeline.training.state import STATE_NAME, check_same_data, rng_state, save_state

log = logging.getLogger(__name__)


class RunSettings(Protocol):
    device: str
    threads: int

    def check(self) -> None: ...


def worker_init(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process (which saves and stops them) and use one thread."""
    ignore_sigterm()
    runtime.set_threads(1)


def run_in_context(settings: RunSettings, runner: Callable[[Any, runtime.Context], Any]) -> Any:
    """Check the settings, join the torchrun group (or stand alone), run, and always leave the group."""
    settings.check()
    context = runtime.start(settings.device, settings.threads)
    try:
        with killed_on_error():  # the workers ignore SIGTERM: an error must not leave them for exit to wait on
            return runner(settings, context).run()
    finally:
        runtime.stop(context)


class EpochSession:
    """The epoch loop, its SIGTERM stop and its state; subclasses set `out`, `model`, `optimizer`, `scaler`,
    `sampler`, `data_identity` and `epoch_sums` before `resume`, and define the steps named above."""

    out: Path
    epoch_sums: list[float]

    def __init__(self, context: runtime.Context) -> None:
        self.context = context
        self.stop_requested = False

    def resume(self, state: dict[str, Any] | None, dvclive: bool, progress: bool) -> None:
        """Start at epoch 1, or where `state` left off (same data only), and open the run's logs."""
        self.epoch, self.batches_done = 1, 0
        self.history: list[dict[str, Any]] = []
        self.step_rows: list[dict[str, Any]] = []
        self.finished, self.final_metrics = False, {}
        if state is not None:
            check_same_data(self.out / STATE_NAME, state.get("data"), self.data_identity)
            self.restore(state)
            log.info("resuming %s at epoch %d, batch %d", self.out, self.epoch, self.batches_done)
        self.runlog = RunLog(self.out, self.context.is_main, dvclive, progress)
        self.runlog.open(self.history, self.step_rows)

    def run_epochs(self, epochs: int) -> bool:
        """Train up to `epochs` and finish; False when SIGTERM stopped it (its state saved for --resume)."""
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            while self.epoch <= epochs:
                if not self.train_epoch():
                    self.save(finished=False)
                    log.warning("SIGTERM: state saved at epoch %d, batch %d in %s; continue with --resume",
                                self.epoch, self.batches_done, self.out / STATE_NAME)
                    return False
                self.end_epoch()
            self.finish()
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.runlog.close()
        return True

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        self.stop_requested = True

    def save(self, finished: bool) -> None:
        """Every rank's RNG and partial sums gathered; rank 0 writes the state atomically."""
        rngs = runtime.gather_objects(self.context, rng_state(self.context.device))
        sums = runtime.gather_objects(self.context, list(self.epoch_sums))
        if not self.context.is_main:
            runtime.barrier(self.context)
            return
        save_state(self.out, {
            **self.state_fields(),
            "data": self.data_identity,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": [{k: v.cpu() for k, v in r.items()} for r in rngs],
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "epoch_sums": sums,
            "history": self.history,
            "step_rows": self.runlog.step_rows,
            "finished": finished,
            "final_metrics": self.final_metrics,
        })
        runtime.barrier(self.context)

    # ------------------------------------------------------------------ a run's own parts
    def restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def train_epoch(self) -> bool:
        raise NotImplementedError

    def end_epoch(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def state_fields(self) -> dict[str, Any]:
        """The state entries only this kind of run has (its settings, schedule, ...)."""
        raise NotImplementedError
