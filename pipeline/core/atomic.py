"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

A reader never sees a half-written file and a crash leaves the old file (or none) in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_MARKER = ".fat-tmp-"


def temp_path_for(final: Path) -> Path:
    """A unique hidden temporary name beside `final`, keeping its suffix so tools infer the format."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return final.with_name(f".{final.stem}{TEMP_MARKER}{token}{final.suffix}")


def is_temp_path(path: Path) -> bool:
    """True for leftovers of an interrupted atomic write (safe to clean up)."""
    return TEMP_MARKER in path.name


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | Path, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))


def write_json_atomic(final: str | Path, obj: Any) -> None:
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=False) + "\n")
