"""The work log: crash-safe progress of `fat logits`.

While `fat logits` runs, each finished batch is appended to a per-rank log as one self-checking
record (length + CRC32), fsynced. A kill at any moment tears at most the last record, which the
next run drops and recomputes; the store itself is written only at the end (`pipeline.store.write_store`).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_MAGIC = b"FATL"
_HEADER = struct.Struct("<4sIIQ")  # magic, crc32(meta + payload), meta length, payload length


@dataclass
class LogRecord:
    """One finished batch: logits of the clips that decoded and the reasons of those that did not."""

    batch: int
    ids: list[str]
    logits: np.ndarray  # (len(ids), C) in the store dtype
    failed: dict[str, str] = field(default_factory=dict)
    stamp: int = 0  # when it was written (ns): a batch computed again supersedes its older records


class WorkLog:
    """An append-only file of `LogRecord`s; a torn tail (crash mid-write) is detected and dropped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self, verify: bool = True) -> Iterator[LogRecord]:
        """Every intact record in order; stops quietly at the first torn or corrupt one."""
        for record, _end in self._scan(verify=verify):
            yield record

    def valid_length(self) -> int:
        """Byte length of the intact prefix."""
        end = 0
        for _record, end in self._scan(verify=True):
            pass
        return end

    def _scan(self, verify: bool) -> Iterator[tuple[LogRecord, int]]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            offset = 0
            while True:
                head = handle.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    return
                magic, crc, meta_len, payload_len = _HEADER.unpack(head)
                if magic != _MAGIC or meta_len > 1 << 30:
                    return
                body = handle.read(meta_len + payload_len)
                if len(body) < meta_len + payload_len:
                    return
                if verify and zlib.crc32(body) != crc:
                    return
                try:
                    meta = json.loads(body[:meta_len])
                    logits = np.frombuffer(body[meta_len:], dtype=meta["dtype"]).reshape(meta["shape"])
                except (ValueError, KeyError, TypeError):
                    return
                offset += _HEADER.size + meta_len + payload_len
                yield LogRecord(int(meta["batch"]), list(meta["ids"]), logits, dict(meta.get("failed", {})),
                                int(meta.get("stamp", 0))), offset

    def open_for_append(self) -> None:
        """Drop a torn tail left by a crash, so new records follow the last intact one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = self.valid_length()
        with open(self.path, "ab") as handle:
            if handle.tell() != keep:
                handle.truncate(keep)
                os.fsync(handle.fileno())

    def append(self, record: LogRecord) -> None:
        """Write one record and fsync it: once this returns, the batch survives a crash."""
        logits = np.ascontiguousarray(record.logits)
        meta = json.dumps({
            "batch": record.batch, "ids": record.ids, "failed": record.failed, "stamp": record.stamp,
            "dtype": logits.dtype.str, "shape": list(logits.shape),
        }).encode("utf-8")
        body = meta + logits.tobytes()
        with open(self.path, "ab") as handle:
            handle.write(_HEADER.pack(_MAGIC, zlib.crc32(body), len(meta), len(body) - len(meta)) + body)
            handle.flush()
            os.fsync(handle.fileno())


def scan_partial(folder: Path) -> tuple[set[str], dict[str, str]]:
    """Clip ids with logits in the partial folder's logs, and the last failure of the others."""
    done: set[str] = set()
    failures: dict[str, tuple[int, str]] = {}
    for path in sorted(folder.glob("rank*.log")):
        for record in WorkLog(path).records():
            done.update(record.ids)
            for clip_id, reason in record.failed.items():
                if failures.get(clip_id, (-1, ""))[0] <= record.stamp:
                    failures[clip_id] = (record.stamp, reason)
    return done, {k: reason for k, (_, reason) in failures.items() if k not in done}
