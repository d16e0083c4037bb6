"""A stage switched off by its params (`<section>.skip: true`) still writes its DVC output: a folder
holding only README.md that says why, so one dvc.yaml serves the demo and the real-data presets.
Light on purpose: a skipped stage imports neither torch nor its own package."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.atomic import write_text_atomic


def write_skipped_note(out_dir: str | Path, title: str, why: str) -> Path:
    """<out_dir>/README.md with a title line and the reason; returns its path."""
    note = Path(out_dir) / "README.md"
    write_text_atomic(note, f"# {title}\n\n{why.strip()}\n")
    return note
