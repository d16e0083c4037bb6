"""A stage switched off by its params (`<section>.skip: true`) still writes its DVC output: a folder
holding only README.md that says why, so one dvc.yaml serves the demo and the real-data presets.
Light on purpose: a skipped stage imports neither torch nor its own package."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.atomic import write_text_atomic

log = logging.getLogger(__name__)


def write_skipped_note(out_dir: str | Path, stage: str, why: str) -> Path:
    """<out_dir>/README.md titled "<stage>: skipped" with the reason, and one log line; returns its path."""
    note = Path(out_dir) / "README.md"
    write_text_atomic(note, f"# {stage}: skipped\n\n{why.strip()}\n")
    log.info("%s: skipped by its params; wrote %s", stage, note)
    return note
