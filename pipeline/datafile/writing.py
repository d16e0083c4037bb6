"""Writing AST-format datafiles: one entry per line, keys `wav, labels, id`, atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_path


@dataclass(frozen=True)
class DatafileEntry:
    """One clip to write: its id, its wav path (as it should appear in the file) and its MIDs."""

    id: str
    wav: str
    labels: tuple[str, ...]


def entry_json(entry: DatafileEntry | Mapping[str, Any]) -> str:
    """One datafile entry as compact JSON with keys in AST's order (wav, labels) then id."""
    if isinstance(entry, DatafileEntry):
        record: dict[str, Any] = {"wav": entry.wav, "labels": ",".join(entry.labels), "id": entry.id}
    else:
        record = {"wav": entry["wav"], "labels": entry["labels"] if isinstance(entry["labels"], str)
                  else ",".join(entry["labels"])}
        if entry.get("id") is not None:
            record["id"] = entry["id"]
        record.update({k: v for k, v in entry.items() if k not in record})
    return json.dumps(record, ensure_ascii=False)


def write_datafile(path: str | Path, entries: Iterable[DatafileEntry | Mapping[str, Any]]) -> int:
    """Write an AST datafile atomically, one entry per line (streamed, diff-friendly); returns the count."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write('{"data": [')
        for entry in entries:
            handle.write(("\n" if count == 0 else ",\n") + entry_json(entry))
            count += 1
        handle.write("\n]}\n" if count else "]}\n")
    return count


def wav_reference(audio_path: str | Path, datafile_dir: str | Path, absolute: bool = False) -> str:
    """How a datafile in `datafile_dir` should name `audio_path`: relative (relocatable) or absolute."""
    audio = os.path.abspath(audio_path)
    return audio if absolute else os.path.relpath(audio, os.path.abspath(datafile_dir))
