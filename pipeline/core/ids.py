"""Ids and names that reach file names and subprocess arguments, checked first; label MID lists."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.core.errors import FatError

YTID_PATTERN = re.compile(r"[A-Za-z0-9_-]{11}")  # used with fullmatch
SPLIT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_valid_ytid(value: str) -> bool:
    """True for an 11-character YouTube id (letters, digits, `_`, `-`; may start with `-`)."""
    return bool(YTID_PATTERN.fullmatch(value))


def check_split_name(value: str) -> str:
    """A split name names output files: letters, digits, `_`, `.`, `-`, not starting with `.` or `-`."""
    if not SPLIT_NAME_PATTERN.fullmatch(value):
        raise FatError(f"--split {value!r}: use letters, digits, '_', '.', '-' (not first: '.' or '-')")
    return value


def split_labels(text: str) -> tuple[str, ...]:
    """"/m/a, /m/b" → ("/m/a", "/m/b"); an empty string has no labels."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def check_ytid(value: str, where: str = "") -> str:
    """Return `value` if it is a valid YouTube id, else raise a FatError naming it and `where`."""
    if not is_valid_ytid(value):
        place = f"{where}: " if where else ""
        raise FatError(f"{place}invalid YouTube id {value!r} (expected 11 characters of A-Z a-z 0-9 _ -)")
    return value


def subprocess_path(path: str | Path) -> str:
    """A path string that no command line can read as an option.

    Ids may begin with `-` (e.g. `-0Qx2kCxA7s.wav`); an absolute path always begins with `/`.
    """
    return str(Path(path).absolute())
