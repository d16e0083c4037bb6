"""The download status store: one current row per clip in SQLite (WAL), written only by the runner.

Every update is its own transaction, so a crash at any moment leaves each row either as it was
or as it became; WAL keeps readers (a progress view, `sqlite3`) from blocking the writer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import FatError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    ytid           TEXT PRIMARY KEY,
    status         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    message        TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    updated        TEXT NOT NULL,
    start_seconds  REAL NOT NULL,
    end_seconds    REAL NOT NULL,
    audio_seconds  REAL NOT NULL DEFAULT 0,
    wav_bytes      INTEGER NOT NULL DEFAULT 0,
    download_bytes INTEGER NOT NULL DEFAULT 0,
    elapsed        REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StatusRow:
    ytid: str
    status: str
    reason: str
    message: str
    attempts: int
    updated: str
    start_seconds: float
    end_seconds: float
    audio_seconds: float = 0.0
    wav_bytes: int = 0
    download_bytes: int = 0
    elapsed: float = 0.0


_FIELDS = tuple(StatusRow.__dataclass_fields__)


class StatusStore:
    """Open (creating if needed) the store at `path`; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise FatError(f"{self.path}: not a usable status database ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StatusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # settings that must not change between runs on one store (e.g. the sample rate)
    def setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    def rows(self) -> dict[str, StatusRow]:
        cursor = self._db.execute(f"SELECT {', '.join(_FIELDS)} FROM clips")
        return {row[0]: StatusRow(*row) for row in cursor}

    def get(self, ytid: str) -> StatusRow | None:
        row = self._db.execute(f"SELECT {', '.join(_FIELDS)} FROM clips WHERE ytid = ?", (ytid,)).fetchone()
        return StatusRow(*row) if row else None

    def record(self, row: StatusRow) -> None:
        """Insert or replace the clip's current row (one transaction)."""
        self._db.execute(
            f"INSERT OR REPLACE INTO clips ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})",
            tuple(getattr(row, name) for name in _FIELDS),
        )

    def record_many(self, rows: Iterable[StatusRow]) -> None:
        with self.transaction():
            for row in rows:
                self.record(row)

    def transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def now_iso() -> str:
    """UTC time stamp for the `updated` column."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
