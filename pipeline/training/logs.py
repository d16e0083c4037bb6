"""What a run tells its user: a progress bar, CSV logs and DVCLive metrics and plots (rank 0 only).

- `<out>/steps.csv`: every `log_every` optimiser steps: loss, its terms, lr, clips/s.
- `<out>/epochs.csv`: one row per epoch: training loss terms and validation metrics.
  `label_present` (train and valid) is the label loss over the classes the training set has:
  the plain BCE averages over every class of the label CSV, and on a dataset with 10 of
  AudioSet's 527 the absent ones, pushed to ~0 in the first epoch, make it look converged.
- `<out>/dvclive/`: metrics.json (the latest values, read by `dvc exp show`) and
  plots/metrics/*.tsv (one point per epoch, read by `dvc plots`).

The epoch history is part of the training state; on resume the CSVs and DVCLive files are
rebuilt from it, so an interrupted and resumed run logs exactly what an uninterrupted one does.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.core.atomic import write_text_atomic

log = logging.getLogger(__name__)

STEP_COLUMNS = ("epoch", "step", "lr", "loss", "label", "kd", "teacher_coverage", "label_present", "clips_per_s")


def _csv_text(rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _fmt(row.get(key)) for key in columns})
    return buffer.getvalue()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else value)


class RunLog:
    """Rank 0's writer; other ranks get a RunLog with `enabled=False`, which does nothing."""

    def __init__(self, out: Path, enabled: bool, use_dvclive: bool, progress: bool | None) -> None:
        self.out = out
        self.enabled = enabled
        self.use_dvclive = use_dvclive and enabled
        self.progress_enabled = enabled and (sys.stderr.isatty() if progress is None else progress)
        self.live = None
        self.bar = None
        self.step_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle
    def open(self, history: list[dict[str, Any]], step_rows: list[dict[str, Any]]) -> None:
        """Start (or restart after a resume) from the saved epoch history and step log."""
        if not self.enabled:
            return
        self.step_rows = list(step_rows)
        write_text_atomic(self.out / "steps.csv", _csv_text(self.step_rows, STEP_COLUMNS))
        self._write_epochs(history)
        if self.use_dvclive:
            from dvclive import Live

            # A fresh DVCLive directory, refilled from the history: no duplicated or missing points.
            self.live = Live(dir=str(self.out / "dvclive"), resume=False, save_dvc_exp=False, dvcyaml=False)
            for row in history:
                self._live_epoch(row)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.live is not None:
            self.live.end()
            self.live = None

    # ------------------------------------------------------------------ steps
    def start_epoch(self, epoch: int, epochs: int, total_batches: int, done_batches: int) -> None:
        if not self.progress_enabled:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total_batches, initial=done_batches, desc=f"epoch {epoch}/{epochs}", unit="batch",
                        dynamic_ncols=True, file=sys.stderr)

    def batch_done(self, loss: float | None, clips_per_s: float | None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{clips_per_s:.1f}", refresh=False)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def step(self, row: dict[str, Any]) -> None:
        """One step-log row; appended to steps.csv (the file is rebuilt on resume)."""
        if not self.enabled:
            return
        self.step_rows.append(row)
        path = self.out / "steps.csv"
        new = not path.exists()
        with open(path, "a", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(STEP_COLUMNS), extrasaction="ignore", lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow({key: _fmt(row.get(key)) for key in STEP_COLUMNS})

    # ------------------------------------------------------------------ epochs
    def epoch(self, history: list[dict[str, Any]]) -> None:
        """The newest epoch row of `history` is logged; the CSV is rewritten whole."""
        if not self.enabled:
            return
        row = history[-1]
        self._write_epochs(history)
        self._live_epoch(row)
        shown = {k: v for k, v in row.items() if k.startswith("valid/") or k in ("train/loss", "train/label_present", "lr")}
        log.info("epoch %d: %s", row["epoch"], ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))

    def final(self, name: str, metrics: dict[str, float]) -> None:
        """Summary values (e.g. the weight-averaged model's), not plotted."""
        if not self.enabled:
            return
        if self.live is not None:
            for key, value in metrics.items():
                self.live.log_metric(f"{name}/{key}", value, plot=False)
        log.info("%s: %s", name, ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))

    def _write_epochs(self, history: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for row in history:
            columns += [key for key in row if key not in columns]
        write_text_atomic(self.out / "epochs.csv", _csv_text(history, columns or ["epoch"]))

    def _live_epoch(self, row: dict[str, Any]) -> None:
        if self.live is None:
            return
        self.live.step = int(row["epoch"])
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                self.live.log_metric(key, value)
        self.live.make_summary()
