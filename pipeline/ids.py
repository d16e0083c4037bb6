"""Clip-id validation: ids reach file names and subprocess arguments, so they are checked first."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import FatError

YTID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{11}$")


def is_valid_ytid(value: str) -> bool:
    """True for an 11-character YouTube id (letters, digits, `_`, `-`; may start with `-`)."""
    return bool(YTID_PATTERN.fullmatch(value))


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
