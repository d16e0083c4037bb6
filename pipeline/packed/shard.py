"""One shard file: written whole under a temporary name, read back and checked, then renamed.

The clips' bytes first go to an unnamed scratch file beside the shard (the shard's size is
known only once its last clip is in); then the shard is assembled in a hidden temporary file
(`pipeline.core.atomic`) with `audio` as one contiguous dataset of exactly their size: no
padding after the last clip, and one extent outside which lies everything HDF5 parses, which
the shard's seal covers (`pipeline.packed.seal`). Before `complete` is set, every clip's bytes
are read back from the file and compared with the CRC32 computed when they were encoded, so a
shard that carries its final name has been written and read back in full; a kill at any moment
leaves at most a temporary file, which the next run removes. h5py records no modification times,
so the same clips in the same order give the same file, byte for byte.
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import FatError
from pipeline.packed.codecs import EncodedClip
from pipeline.packed.format import PER_CLIP
from pipeline.packed.seal import Seal, seal_file
from pipeline.store import _plain

PER_CLIP_DTYPES = {"sample_rate": np.int32, "num_samples": np.int64, "channels": np.int16, "crc32": np.uint32}
# What h5py raises on a damaged file, depending on which structure the damage hit.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, OverflowError)
COPY_BLOCK = 64 << 20


def open_shard(path: Path) -> h5py.File:
    """A read-only h5py handle; a FatError naming the shard when HDF5 cannot open it (truncated, not HDF5)."""
    try:
        return h5py.File(path, "r", locking=False)
    except H5_ERRORS as exc:
        raise FatError(f"{path}: not a readable packed audio shard (truncated or corrupt? {exc})") from None


def dataset(handle: h5py.File, name: str) -> h5py.Dataset:
    """`handle[name]`, which must be a dataset: a damaged link can name a group or a datatype (TypeError then)."""
    item = handle[name]
    if not isinstance(item, h5py.Dataset):
        raise TypeError(f"{name!r} is a {type(item).__name__}, not a dataset")
    return item


def read_attrs(path: Path, handle: h5py.File) -> dict[str, Any]:
    """The shard's attributes as plain values; a FatError naming the shard when they cannot be read."""
    try:
        return {key: _plain(value) for key, value in handle.attrs.items()}
    except H5_ERRORS as exc:
        raise FatError(f"{path}: not a readable packed audio shard (its attributes: {exc})") from None


def shard_attrs(path: Path) -> dict[str, Any] | None:
    """The shard's attributes as plain values, or None when the file is not a readable HDF5 file."""
    try:
        with open_shard(path) as handle:
            return read_attrs(path, handle)
    except FatError:
        return None


def seal_of(path: Path) -> Seal | None:
    """Seal a shard that has none recorded; None when its audio is chunked (written before seals)."""
    try:
        with open_shard(path) as handle:
            blob = dataset(handle, "audio")
            offset, stored, shape = blob.id.get_offset(), blob.id.get_storage_size(), blob.shape
    except H5_ERRORS as exc:
        raise FatError(f"{path}: not a readable packed audio shard ({exc})") from None
    if offset is None and stored:
        return None
    if shape != (stored,):
        raise FatError(f"{path}: its audio holds {shape} bytes in {stored} bytes of storage")
    return seal_file(path, offset or 0, stored)


def write_shard(final: Path, ids: Sequence[str], clips: Iterable[EncodedClip],
                attrs: dict[str, Any]) -> dict[str, Any]:
    """Write the clips of `ids` (which `clips` yields in the same order) as a complete shard at `final`.

    Returns the shard's totals (`bytes` of encoded audio, `source_bytes`, `sample_rates`), which
    are also among its attributes, and its `seal` (for index.json).
    """
    count = len(ids)
    offsets = np.zeros(count + 1, dtype=np.int64)
    columns = {name: np.zeros(count, dtype=PER_CLIP_DTYPES[name]) for name in PER_CLIP}
    source_bytes = 0
    with tempfile.TemporaryFile(dir=final.parent, prefix=".fat-spool-") as spool, atomic_path(final) as tmp:
        row = 0
        for row, clip in enumerate(clips, 1):
            if row > count or clip.clip_id != ids[row - 1]:
                raise RuntimeError(f"{final.name}: clip {clip.clip_id} arrived out of order (row {row - 1})")
            spool.write(clip.data)
            offsets[row] = offsets[row - 1] + len(clip.data)
            for name in PER_CLIP:
                columns[name][row - 1] = {"sample_rate": clip.sample_rate, "num_samples": clip.num_samples,
                                          "channels": clip.channels, "crc32": clip.crc32}[name]
            source_bytes += clip.source_bytes
        if row != count:
            raise RuntimeError(f"{final.name}: {row} of {count} clips arrived")
        total = int(offsets[-1])
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=h5py.string_dtype("utf-8"))
            handle.create_dataset("offsets", data=offsets)
            for name in PER_CLIP:
                handle.create_dataset(name, data=columns[name])
            blob = handle.create_dataset("audio", shape=(total,), dtype=np.uint8, fill_time="never")
            _copy_spool(final, spool, blob, total)
            bad = corrupt_rows(blob, offsets, columns["crc32"])
            if bad.size:
                raise FatError(f"{final}: clip {ids[int(bad[0])]} reads back different from what was written "
                               f"({bad.size} clips): the disk or file system is failing")
            audio_offset = blob.id.get_offset() or 0  # None when empty: no extent
            totals = {"bytes": total, "source_bytes": int(source_bytes),
                      "sample_rates": sorted({int(r) for r in columns["sample_rate"]})}
            for key, value in {**attrs, **totals, "clips": count}.items():
                handle.attrs[key] = value if not isinstance(value, list) else np.array(value, dtype=np.int64)
            handle.attrs["complete"] = True  # last: set only once every clip is in and read back
        seal = seal_file(tmp, audio_offset, total)
    return {**totals, "seal": seal.as_dict()}


def _copy_spool(final: Path, spool: BinaryIO, blob: Any, total: int) -> None:
    """The scratch file's bytes into the contiguous `audio` dataset, in slabs."""
    spool.seek(0)
    for low in range(0, total, COPY_BLOCK):
        slab = spool.read(min(COPY_BLOCK, total - low))
        if not slab:
            raise FatError(f"{final}: its scratch file ended after {low} of {total} bytes")
        blob[low:low + len(slab)] = np.frombuffer(slab, dtype=np.uint8)


def corrupt_rows(blob: Any, offsets: np.ndarray, crcs: np.ndarray, block: int = 64 << 20) -> np.ndarray:
    """Rows whose bytes in `blob` do not match their CRC32; read in slabs of about `block` bytes."""
    bad: list[int] = []
    row, count = 0, len(crcs)
    while row < count:
        stop = int(np.searchsorted(offsets, offsets[row] + block, side="right"))
        stop = min(max(stop - 1, row + 1), count)
        low, high = int(offsets[row]), int(offsets[stop])
        slab = blob[low:high].tobytes() if high > low else b""
        for i in range(row, stop):
            if zlib.crc32(slab[offsets[i] - low:offsets[i + 1] - low]) != int(crcs[i]):
                bad.append(i)
        row = stop
    return np.asarray(bad, dtype=np.int64)


def check_shard_bytes(path: Path) -> list[str]:
    """Ids of the clips of a shard whose stored bytes fail their CRC32 (empty: intact)."""
    with open_shard(path) as handle:
        try:
            ids = dataset(handle, "ids").asstr()[()]
            bad = corrupt_rows(dataset(handle, "audio"), dataset(handle, "offsets")[()], dataset(handle, "crc32")[()])
        except H5_ERRORS as exc:
            raise FatError(f"{path}: the shard cannot be read ({exc})") from None
    return [str(ids[i]) for i in bad]
