"""A shard's seal: where its audio blob lies in the file and a sha256 of every other byte.

HDF5 must parse a file's structure (superblock, object headers, heaps, the small per-clip
columns) before anything in it can be checked, and a damaged structure can make the library
raise almost anything or crash the process. The clips' bytes are checked one by one (CRC32);
everything else is a few hundred kB per shard, outside the one contiguous `audio` extent. So
`fat pack` records the seal in `index.json`, and readers and reruns compare it with plain file
reads before h5py opens the file: a damaged structure becomes one error naming the shard.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class Seal:
    """The shard file's size, its audio extent and the sha256 of the bytes outside that extent."""

    file_bytes: int
    audio_offset: int
    audio_bytes: int
    metadata_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Seal:
        """The seal an index entry records; ValueError when it is not one."""
        if not isinstance(data, dict) or set(data) != {"file_bytes", "audio_offset", "audio_bytes",
                                                       "metadata_sha256"}:
            raise ValueError(f"not a shard seal: {data!r}")
        numbers = [data["file_bytes"], data["audio_offset"], data["audio_bytes"]]
        digest = data["metadata_sha256"]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers) \
                or not (isinstance(digest, str) and len(digest) == 64):
            raise ValueError(f"not a shard seal: {data!r}")
        return cls(*numbers, digest)


def seal_file(path: Path, audio_offset: int, audio_bytes: int) -> Seal:
    """Seal a finished shard whose audio occupies [audio_offset, audio_offset + audio_bytes)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        return Seal(size, audio_offset, audio_bytes, _outside_sha256(handle, size, audio_offset, audio_bytes))


def seal_problem(path: Path, seal: Seal) -> str | None:
    """What differs between the file and its seal (None: they agree); reads only the bytes outside the audio."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size != seal.file_bytes:
                return f"{size} bytes, {seal.file_bytes} when it was written (truncated or replaced?)"
            if seal.audio_offset + seal.audio_bytes > size:
                return f"its recorded audio extent ends past the file's {size} bytes"
            found = _outside_sha256(handle, size, seal.audio_offset, seal.audio_bytes)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if found != seal.metadata_sha256:
        return (f"the sha256 of its HDF5 structure is {found[:12]}…, {seal.metadata_sha256[:12]}… when it was "
                "written (damaged or replaced)")
    return None


def _outside_sha256(handle: BinaryIO, size: int, audio_offset: int, audio_bytes: int) -> str:
    digest = hashlib.sha256()
    for start, stop in ((0, audio_offset), (audio_offset + audio_bytes, size)):
        handle.seek(start)
        left = max(stop - start, 0)
        while left:
            block = handle.read(min(left, READ_BLOCK))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()
