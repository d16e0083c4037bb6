"""Where a stage gets a clip's samples: its audio file, or a packed store, chosen by one setting.

Every stage that reads clips of a datafile (logits, train, evaluate, stats, predict by id) asks
`open_clip_audio(clips, packed)` once and then calls `.read(i)`; whether the samples come from
`pipeline.core.audio.read_audio(path)` or from `pipeline.packed.PackedAudio` is decided only here.
A FLAC-packed store returns the very float32 samples the WAV file gives, so a stage's results
do not depend on the choice; a lossy store is flagged by `exact` (it belongs in the identity of
anything computed from the samples, e.g. a teacher logits store).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.core.audio import read_audio
from pipeline.core.errors import FatError
from pipeline.packed.reader import PackedAudio


class ClipAudio(Protocol):
    """The samples of clip i of a list, whatever holds them."""

    source: str
    ids: Sequence[str]

    def __len__(self) -> int: ...

    def read(self, index: int, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
        """float32 mono samples of clip `index` at its own rate, or resampled to `sample_rate`."""
        ...

    def missing(self) -> list[int]:
        """Clips whose audio is not there (no file, or no row in the store)."""
        ...

    def require_all(self, show: int = 10) -> None:
        """A FatError naming the first `show` clips whose audio is not there."""
        ...

    @property
    def exact(self) -> bool:
        """True when the samples are the source's own (audio files, lossless packing)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the samples are read from, for logs and provenance."""
        ...


class _Listed:
    """Shared by both kinds: the clip list's ids and the messages naming its clips."""

    def __init__(self, ids: Sequence[str], source: str) -> None:
        self.ids = ids
        self.source = source

    def __len__(self) -> int:
        return len(self.ids)

    def require_all(self, show: int = 10) -> None:
        missing = self.missing()  # type: ignore[attr-defined]
        if missing:
            listed = "\n".join(f"  {self.ids[i]}: {self._where(i)}" for i in missing[:show])
            more = f"\n  ... and {len(missing) - show} more" if len(missing) > show else ""
            raise FatError(f"{self.source}: the audio of {len(missing)} of {len(self)} clips is missing:\n"
                           f"{listed}{more}")

    def _where(self, index: int) -> str:
        raise NotImplementedError


class FileClipAudio(_Listed):
    """Clips read from their files with `pipeline.core.audio.read_audio`."""

    def __init__(self, ids: Sequence[str], paths: Sequence[str], source: str) -> None:
        super().__init__(ids, source)
        self.paths = paths

    def read(self, index: int, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
        try:
            return read_audio(self.paths[index], sample_rate)
        except FatError as exc:
            raise FatError(f"clip {self.ids[index]} of {self.source}: {exc}") from None

    def missing(self) -> list[int]:
        return [i for i in range(len(self)) if not os.path.isfile(self.paths[i])]

    @property
    def exact(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"audio": "files"}

    def _where(self, index: int) -> str:
        return str(self.paths[index])


class PackedClipAudio(_Listed):
    """Clips read by id from packed stores; each clip's row is looked up once, here."""

    def __init__(self, ids: Sequence[str], store: PackedAudio, source: str) -> None:
        super().__init__(ids, source)
        self.store = store
        self.rows = store.rows_of([str(i) for i in ids])

    def read(self, index: int, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
        row = int(self.rows[index])
        if row < 0:
            raise FatError(f"clip {self.ids[index]} of {self.source}: not in the packed stores "
                           f"{', '.join(map(str, self.store.dirs))}")
        return self.store.read_row(row, sample_rate)

    def missing(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.rows < 0)]

    @property
    def exact(self) -> bool:
        return self.store.lossless

    def describe(self) -> dict[str, Any]:
        return {"audio": "packed", "stores": [str(d) for d in self.store.dirs], "codecs": self.store.codecs}

    def _where(self, index: int) -> str:
        return f"not in {', '.join(map(str, self.store.dirs))}"


def open_clip_audio(clips: Any, packed: str | Path | Sequence[str | Path] | None = None,
                    datafiles: Sequence[str | Path] = ()) -> ClipAudio:
    """The audio of `clips` (anything with `.ids` and `.paths`, e.g. a ClipList or a Datafile).

    `packed`: None or empty = the clips' files; else the packed store folder(s) holding them by
    id. `datafiles`: when given, every store must have been packed from one of them.
    """
    source = str(getattr(clips, "source", "clips"))
    if packed is None or (not isinstance(packed, (str, Path)) and len(packed) == 0):
        return FileClipAudio(clips.ids, clips.paths, source)
    return PackedClipAudio(clips.ids, PackedAudio(packed, datafiles), source)
