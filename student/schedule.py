"""Merge schedule files: one merge count per block, as JSON, with where the schedule came from.

    {"format": "fat-merge-schedule/1", "r": [24, 24, 16, ...], ...provenance (free keys)}

`fat tune-r` writes them; everything that takes an r (`fat evaluate --r`, `fat predict --r`,
`fat export --r`, `fat train --tome-r`, `set_tome_r`) takes a path to one where it takes `16` or
`16,16,8`. Unlike a typed per-layer list, which is padded with zeros, a file must fit the model
exactly: one value per block, none negative, none above what its block can merge (half of the
unprotected tokens left there). A schedule tuned for one model is then never run silently
truncated on another. Pure Python: `student.tome` reads it through `parse_r_spec`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from student.errors import StudentError

SCHEDULE_FORMAT = "fat-merge-schedule/1"
_R_TEXT = re.compile(r"[\d\s,:.+-]*")  # what a typed r looks like: 16, 16,16,8, 16:-1


class FileSchedule(list):
    """A per-layer r list read from a schedule file; remembers the file so errors can name it."""

    def __init__(self, values: list[int], path: str | Path) -> None:
        super().__init__(values)
        self.path = str(path)


def is_schedule_path(text: str) -> bool:
    """True for a schedule file: a name ending in .json, or an existing file that is no typed r."""
    text = str(text).strip()
    return text.lower().endswith(".json") or (not _R_TEXT.fullmatch(text) and Path(text).is_file())


def read_schedule(path: str | Path) -> FileSchedule:
    """The per-layer r of a schedule file; StudentError naming the file for anything else."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudentError(f"{path}: no such merge schedule file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudentError(f"{path}: cannot read the merge schedule ({exc})") from None
    except json.JSONDecodeError as exc:
        raise StudentError(f"{path}: not JSON (line {exc.lineno}: {exc.msg}); a merge schedule is "
                           f'{{"r": [per-block merge counts]}}') from None
    values = document.get("r") if isinstance(document, dict) else None
    if not isinstance(values, list) or not values:
        raise StudentError(f'{path}: a merge schedule needs "r": a list of per-block merge counts, got {values!r}')
    for index, value in enumerate(values):
        if not isinstance(value, int) or isinstance(value, bool):
            raise StudentError(f"{path}: r[{index}] = {value!r} is not an integer")
        if value < 0:
            raise StudentError(f"{path}: r[{index}] = {value} is negative")
    return FileSchedule(values, path)


def check_schedule(schedule: FileSchedule, num_layers: int, tokens: int, protected: int = 2) -> None:
    """A schedule file must fit the model: one r per block, each within what its block can merge."""
    if len(schedule) != num_layers:
        raise StudentError(f"{schedule.path}: the schedule has {len(schedule)} merge counts but the model has "
                           f"{num_layers} blocks")
    for index, value in enumerate(schedule):
        can = (tokens - protected) // 2
        if value > can:
            raise StudentError(f"{schedule.path}: block {index} merges r[{index}] = {value} tokens but only {can} can "
                               f"merge there ({tokens} tokens enter it, {protected} protected, at most half the rest)")
        tokens -= value


def schedule_document(r: list[int], **provenance: Any) -> dict[str, Any]:
    """The JSON document of a schedule file (the caller writes it, atomically)."""
    return {"format": SCHEDULE_FORMAT, "r": [int(value) for value in r], **provenance}
