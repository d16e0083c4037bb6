"""The teacher logits store: one HDF5 file of `ids` (N,) and `logits` (N, C) plus provenance.

Reading (`LogitsStore`): ids are indexed once into `pipeline.core.id_index.IdIndex` (numpy arrays,
no Python object per id), so a forked DataLoader worker shares it without copying and a
spawned one receives it cheaply; the HDF5 file itself is opened lazily in whichever process
reads rows, and the operating system's page cache holds its contents once for all of them.

Writing (`write_store`): the final HDF5 file is assembled under a temporary name, fsynced and
renamed; its `complete` attribute is true only when every requested clip is in. While
`fat logits` runs, its progress lives in a work log instead (`pipeline.logits.worklog`), so a
crash never leaves a file that looks finished.

Integrity: every writer goes through `write_store`, which records a CRC-32 per row (`row_crc32`,
over the id's UTF-8 bytes followed by the row's stored little-endian bytes), so a damaged row, or
a row that moved to another id, is caught where rows are read (`read_rows`, hence `fetch` and
training's table) with an error naming the store and the rows, instead of training on it
silently. A store written before the checksums existed is read with one warning line.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import FatError
from pipeline.core.id_index import IdIndex

log = logging.getLogger(__name__)

STORE_DTYPES = ("float16", "float32")
CHUNK_ROWS = 256  # rows per HDF5 chunk: ~270 kB for 527 fp16 columns, one read per batch of neighbours
CHECKSUMS = "row_crc32"  # dataset (N,) uint32: CRC-32 of each row's id (utf-8) followed by its stored bytes
CHECKSUM_METHOD = "crc32(id utf-8 + row little-endian bytes)"
_warned_unchecked: set[str] = set()  # stores without checksums already announced by this process


def row_checksums(ids: Sequence[bytes], rows: np.ndarray) -> np.ndarray:
    """CRC-32 per row over the id's UTF-8 bytes followed by the row's little-endian stored bytes.

    The id is part of it, so a row that reaches another clip (a damaged `ids` entry) fails too.
    """
    data = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<"))
    octets = data.view(np.uint8).reshape(len(data), -1)
    return np.fromiter((zlib.crc32(row, zlib.crc32(clip_id)) for clip_id, row in zip(ids, octets, strict=True)),
                       dtype=np.uint32, count=len(data))


def _plain(value: Any) -> Any:
    """HDF5 attribute → plain Python value (bytes → str, numpy scalars → int/float/bool)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value


def _open_h5(path: Path):
    import h5py  # where used, not at the top: `fat --help` imports this module (STORE_DTYPES), not h5py

    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise FatError(f"{path}: not a readable HDF5 logits store ({exc})") from exc


class LogitsStore:
    """Read a teacher logits store by clip id.

    `LogitsStore(path)` refuses an incomplete store (one that `fat logits` has not finished)
    unless `allow_incomplete=True`. Safe to hand to DataLoader workers (fork or spawn): the
    HDF5 handle is opened per process on first use.
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FatError(f"{self.path}: no such teacher logits store (create it with `fat logits`)")
        with _open_h5(self.path) as handle:
            for name in ("ids", "logits"):
                if name not in handle:
                    raise FatError(f"{self.path}: not a logits store (no `{name}` dataset)")
            logits = handle["logits"]
            if logits.ndim != 2:
                raise FatError(f"{self.path}: `logits` must be 2-D (N, C), found shape {logits.shape}")
            raw_ids = handle["ids"][()]
            self.shape: tuple[int, int] = (int(logits.shape[0]), int(logits.shape[1]))
            self.dtype = np.dtype(logits.dtype)
            self.attrs: dict[str, Any] = {key: _plain(value) for key, value in handle.attrs.items()}
            self.has_checksums = CHECKSUMS in handle
            if self.has_checksums and handle[CHECKSUMS].shape != (self.shape[0],):
                raise FatError(f"{self.path}: `{CHECKSUMS}` has shape {handle[CHECKSUMS].shape}, expected "
                               f"({self.shape[0]},): the store is damaged")
        if len(raw_ids) != self.shape[0]:
            raise FatError(f"{self.path}: {len(raw_ids)} ids but {self.shape[0]} logits rows")
        recorded = self.attrs.get("num_classes")
        if recorded is not None and int(recorded) != self.shape[1]:
            raise FatError(f"{self.path}: attribute num_classes={recorded} but logits have {self.shape[1]} columns")
        self.complete = bool(self.attrs.get("complete", False))
        if not self.complete and not allow_incomplete:
            missing = self.attrs.get("missing")
            detail = f" ({missing} requested clips are missing)" if missing else ""
            remedy = ("the imported predictions lack them (listed in the import's .unmatched.txt)"
                      if self.attrs.get("imported") else "rerun `fat logits` to finish it")
            raise FatError(
                f"{self.path}: the teacher logits store is incomplete{detail}: {remedy}, "
                "or allow an incomplete store explicitly (fat train --missing-teacher mask)"
            )
        if not self.has_checksums and os.path.abspath(self.path) not in _warned_unchecked:
            _warned_unchecked.add(os.path.abspath(self.path))
            log.warning("%s: no row checksums (written before fat stores had them): damaged rows cannot be "
                        "detected; rerun the `fat logits` command that made it to add them (its rows are reused)",
                        self.path)
        keys = np.array([i if isinstance(i, bytes) else str(i).encode("utf-8") for i in raw_ids], dtype=bytes) \
            if len(raw_ids) else np.zeros(0, dtype="S1")
        self._index = IdIndex(keys, source=str(self.path))
        self._ids: np.ndarray | None = None
        self._handle = None
        self._handle_pid: int | None = None

    # -- identity --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.shape[1]

    @property
    def ids(self) -> np.ndarray:
        """All ids, row order (decoded on first use)."""
        if self._ids is None:
            self._ids = np.array([k.decode("utf-8") for k in self._index.keys.tolist()], dtype=str)
        return self._ids

    def __len__(self) -> int:
        return self.shape[0]

    def __contains__(self, clip_id: str) -> bool:
        return self.row_of(clip_id) is not None

    def provenance(self) -> dict[str, Any]:
        """The attributes with the JSON-valued ones (`frontend`, `members`, `excluded`, `sources`) parsed."""
        parsed = dict(self.attrs)
        for key in ("frontend", "members", "excluded", "sources"):
            if isinstance(parsed.get(key), str):
                try:
                    parsed[key] = json.loads(parsed[key])
                except json.JSONDecodeError:
                    pass
        return parsed

    # -- lookup ----------------------------------------------------------------------------
    def row_of(self, clip_id: str) -> int | None:
        """Row of `clip_id`, or None when the store has no logits for it (O(1))."""
        return self._index.row_of(clip_id)

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id, −1 where absent (vectorised)."""
        return self._index.rows_of(ids)

    def fetch(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Logits (float32, [n, C]) for `ids` in their order and a mask of which ones the store holds.

        Rows of absent ids are zeros.
        """
        rows = self.rows_of(ids)
        present = rows >= 0
        out = np.zeros((len(rows), self.num_classes), dtype=np.float32)
        if present.any():
            out[present] = self.read_rows(rows[present])
        return out, present

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows by number (any order, repeats allowed) as float32; a row that fails its checksum is a FatError."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"{self.path}: row out of range 0..{self.shape[0] - 1}")
        wanted, inverse = np.unique(rows, return_inverse=True)
        block, damaged = self._read_checked(wanted)
        if damaged.size:
            raise FatError(self.damage_message(damaged))
        return np.asarray(block, dtype=np.float32)[inverse]

    def damaged_rows(self, block: int = 4096) -> np.ndarray:
        """Every row whose values or id no longer match its checksum (one pass over the store; none without checksums)."""
        found = [self._read_checked(np.arange(low, min(low + block, self.shape[0])))[1]
                 for low in range(0, self.shape[0], block)] if self.has_checksums else []
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def damage_message(self, damaged: np.ndarray, show: int = 10) -> str:
        """One line naming the store and the damaged rows with their ids."""
        shown = ", ".join(f"{row} ({self._index.keys[row].decode('utf-8', 'replace')})" for row in damaged[:show])
        more = f" and {damaged.size - show} more" if damaged.size > show else ""
        return (f"{self.path}: {damaged.size} of {self.shape[0]} teacher logits rows do not match their checksums, "
                f"the store is damaged: rows {shown}{more}; make the store again (`fat logits` into a new --out, "
                "or `fat logits import`), `fat logits verify` lists every damaged row")

    def _read_checked(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored rows `wanted` (sorted, unique) in the store's dtype, and those of them failing their checksum."""
        handle = self._handle_here()
        dataset = handle["logits"]
        low, high = int(wanted[0]), int(wanted[-1]) + 1
        contiguous = high - low <= 4 * wanted.size + CHUNK_ROWS  # one contiguous read beats HDF5 point selection
        block = dataset[low:high][wanted - low] if contiguous else dataset[wanted]
        if not self.has_checksums:
            return block, np.zeros(0, dtype=np.int64)
        sums = handle[CHECKSUMS]
        expected = sums[low:high][wanted - low] if contiguous else sums[wanted]
        found = row_checksums(self._index.keys[wanted].tolist(), block)
        return block, wanted[found != expected]

    # -- per-process handle ----------------------------------------------------------------
    def _handle_here(self):
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = _open_h5(self.path)  # a forked child never uses its parent's handle
            self._handle_pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle, self._handle_pid = None, None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"], state["_handle_pid"], state["_ids"] = None, None, None
        return state

    def __enter__(self) -> LogitsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_store(
    path: str | Path,
    ids: Sequence[str],
    blocks: Iterable[tuple[int, np.ndarray]],
    num_classes: int,
    attrs: dict[str, Any],
    complete: bool,
    dtype: str = "float16",
) -> Path:
    """Write a store atomically: `blocks` yields (first row, logits block) covering rows 0..N−1.

    Every row must be written exactly once; anything less is a bug and nothing is renamed. Each
    row's checksum (`row_checksums`) is computed from the values as stored, beside them.
    """
    import h5py

    if dtype not in STORE_DTYPES:
        raise FatError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    path = Path(path)
    count = len(ids)
    encoded = [str(clip_id).encode("utf-8") for clip_id in ids]
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=h5py.string_dtype("utf-8"))
            logits = handle.create_dataset(
                "logits", shape=(count, num_classes), dtype=dtype,
                chunks=(max(1, min(count, CHUNK_ROWS)), num_classes) if count else None,
            )
            sums = np.zeros(count, dtype=np.uint32)
            written = np.zeros(count, dtype=bool)
            for start, block in blocks:
                block = np.asarray(block)
                if block.ndim != 2 or block.shape[1] != num_classes:
                    raise ValueError(f"block of shape {block.shape} does not have {num_classes} columns")
                stop = start + block.shape[0]
                if written[start:stop].any():
                    raise ValueError(f"rows {start}..{stop - 1} written twice")
                stored = block.astype(dtype, copy=False)
                logits[start:stop] = stored
                sums[start:stop] = row_checksums(encoded[start:stop], stored)
                written[start:stop] = True
            if not written.all():
                raise ValueError(f"{int((~written).sum())} rows of {count} were never written")
            handle.create_dataset(CHECKSUMS, data=sums)
            for key, value in attrs.items():
                handle.attrs[key] = value
            handle.attrs["checksum"] = CHECKSUM_METHOD
            handle.attrs["num_classes"] = int(num_classes)
            handle.attrs["complete"] = bool(complete)
    return path
