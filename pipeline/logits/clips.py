"""The clips a `fat logits` run is asked for: the union of its datafiles, and their label CSV."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import FatError
from pipeline.logits.settings import DEFAULT_LABEL_CSV, LogitsSettings


@dataclass
class Clips:
    ids: list[str]
    paths: list[str]
    sources: list[tuple[Path, Any, list[int]]]  # (datafile, Datafile, its entries' positions in ids)


def load_clips(datafiles: Sequence[Path], labels: Any) -> Clips:
    """The union of the datafiles' clips, in order."""
    from pipeline.datafile import load_datafile

    ids: list[str] = []
    paths: list[str] = []
    where: dict[str, tuple[int, Path]] = {}
    sources = []
    for datafile in datafiles:
        data = load_datafile(datafile, labels)
        positions = []
        for clip_id, path in zip(data.ids, data.paths, strict=True):
            clip_id, path = str(clip_id), str(path)
            if clip_id in where:
                row, first = where[clip_id]
                if paths[row] != path:
                    raise FatError(f"{datafile}: clip {clip_id!r} is {path}, but {first} has it as {paths[row]}")
                positions.append(row)
                continue
            where[clip_id] = (len(ids), Path(datafile))
            positions.append(len(ids))
            ids.append(clip_id)
            paths.append(path)
        sources.append((Path(datafile), data, positions))
    if not ids:
        raise FatError(f"{', '.join(map(str, datafiles))}: no clips listed")
    return Clips(ids, paths, sources)


def find_label_csv(settings: LogitsSettings) -> Path | None:
    if settings.labels is not None:
        if not settings.labels.is_file():
            raise FatError(f"{settings.labels}: no such label CSV")
        return settings.labels
    beside = settings.datafiles[0].parent / DEFAULT_LABEL_CSV
    return beside if beside.is_file() else None
