"""Read clips of packed audio stores by id, from any process.

`PackedAudio(dirs)` reads every store's `index.json` and each shard's ids, offsets and per-clip
columns once, and indexes the ids in the logits store's numpy hash table (`pipeline.core.id_index.
IdIndex`): no Python object per clip, so forked DataLoader workers share it without copying
and a spawned one receives it by pickle. The HDF5 files are opened lazily in whichever process
reads, one handle per shard and process (a forked child never uses its parent's handles).

Every read checks what it can, so a damaged store gives an error naming the shard and clip
instead of a wrong waveform: each shard's seal before HDF5 parses it (`pipeline.packed.seal`),
then per clip the bytes' CRC32, that they decode, their rate and channel count, and (lossless)
the exact sample count.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.audio import fit_length, resample
from pipeline.core.errors import FatError
from pipeline.core.id_index import IdIndex
from pipeline.datafile import file_sha256
from pipeline.packed.codecs import CodecError, decode, to_mono
from pipeline.packed.format import CODECS, FORMAT, INDEX_NAME, LOSSLESS, PER_CLIP, SHARD_NAME
from pipeline.packed.seal import Seal, seal_problem
from pipeline.packed.shard import H5_ERRORS, PER_CLIP_DTYPES, dataset, open_shard, read_attrs

log = logging.getLogger(__name__)


def read_index(folder: Path) -> dict[str, Any]:
    """A store's `index.json`, checked: our format, complete, every shard named as `fat pack` names them."""
    path = folder / INDEX_NAME
    if not folder.is_dir():
        raise FatError(f"{folder}: no packed audio store here (create it with `fat pack`)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FatError(f"{folder}: no {INDEX_NAME}: not a packed audio store, or `fat pack` never finished "
                       "here (rerun it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FatError(f"{path}: not a readable index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise FatError(f"{path}: not a packed audio index (format {found!r}, expected {FORMAT!r})")
    if index.get("complete") is not True:
        raise FatError(f"{folder}: the packed store is incomplete (`fat pack` was interrupted): rerun it to finish")
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and SHARD_NAME.fullmatch(str(s.get("file", ""))) and isinstance(s.get("clips"), int)
            for s in shards):
        raise FatError(f"{path}: the shard list is damaged")
    for entry in shards:
        if "seal" in entry:
            try:
                Seal.from_dict(entry["seal"])
            except ValueError:
                raise FatError(f"{path}: the shard list is damaged (the seal of {entry['file']})") from None
    return index


class PackedAudio:
    """Clips of one or more packed stores by id: `read(id) -> (float32 mono samples, rate)`.

    With `datafiles`, each store must have been packed from one of them (their sha256), so
    clips of an edited or foreign datafile are never read under the same ids.
    """

    def __init__(self, stores: str | Path | Sequence[str | Path], datafiles: Sequence[str | Path] = ()) -> None:
        self.dirs = [Path(stores)] if isinstance(stores, (str, Path)) else [Path(s) for s in stores]
        if not self.dirs:
            raise FatError("no packed audio store given")
        expected = _datafile_hashes(datafiles)
        self.indexes = [read_index(folder) for folder in self.dirs]
        self.shard_paths: list[str] = []
        self.shard_codecs: list[str] = []
        columns: dict[str, list[np.ndarray]] = {name: [] for name in (*PER_CLIP, "start", "end", "shard", "keys")}
        for folder, index in zip(self.dirs, self.indexes, strict=True):
            if expected and index.get("datafile_sha256") not in expected:
                wanted = ", ".join(map(str, expected.values()))
                raise FatError(f"{folder}: packed from another datafile ({index.get('datafile')}, sha256 "
                               f"{str(index.get('datafile_sha256'))[:12]}…) than {wanted}: repack it with `fat pack`")
            unsealed = [entry["file"] for entry in index["shards"] if "seal" not in entry]
            if unsealed:
                log.warning("%s: %d shards were packed without a seal (by an older fat): their HDF5 structure is not "
                            "checked before it is parsed, so damage may show as an h5py error or a crash; pack "
                            "into an empty folder to add seals", folder, len(unsealed))
            for entry in index["shards"]:
                shard = len(self.shard_paths)
                path = folder / entry["file"]
                table = _load_shard(path, index, entry)
                self.shard_paths.append(str(path))
                self.shard_codecs.append(table.pop("codec"))
                table["shard"] = np.full(len(table["keys"]), shard, dtype=np.int32)
                for name, values in table.items():
                    columns[name].append(values)
        joined = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in columns.items()}
        keys = joined.pop("keys")
        keys = keys if keys.size else np.zeros(0, dtype="S1")
        if len(self.dirs) > 1:
            _refuse_shared_ids(keys, joined["shard"], self.shard_paths)
        self._index = IdIndex(keys, source=", ".join(map(str, self.dirs)))
        self.shard_of = joined["shard"].astype(np.int32)
        self.start, self.end = joined["start"].astype(np.int64), joined["end"].astype(np.int64)
        self.sample_rate = joined["sample_rate"].astype(np.int32)
        self.num_samples = joined["num_samples"].astype(np.int64)
        self.channels = joined["channels"].astype(np.int16)
        self.crc32 = joined["crc32"].astype(np.uint32)
        self.shard_lossless = np.array([codec in LOSSLESS for codec in self.shard_codecs], dtype=bool)
        self._ids: np.ndarray | None = None
        self._blobs: dict[int, Any] = {}
        self._handles: dict[int, Any] = {}
        self._pid: int | None = None

    # -- lookup ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, clip_id: str) -> bool:
        return self._index.row_of(clip_id) is not None

    @property
    def ids(self) -> np.ndarray:
        """Every id, store and shard order (decoded on first use)."""
        if self._ids is None:
            self._ids = np.array([k.decode("utf-8") for k in self._index.keys.tolist()], dtype=str)
        return self._ids

    @property
    def lossless(self) -> bool:
        """True when every shard holds the source's exact samples (FLAC)."""
        return bool(self.shard_lossless.all())

    @property
    def codecs(self) -> list[dict[str, Any]]:
        """The codec settings of each store, in store order."""
        return [index["codec"] for index in self.indexes]

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id, −1 where no store holds it (vectorised)."""
        return self._index.rows_of(ids)

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids of `ids` that no store holds, in their order."""
        rows = self.rows_of(ids)
        return [str(ids[i]) for i in np.flatnonzero(rows < 0)]

    def id_at(self, row: int) -> str:
        return self._index.keys[row].decode("utf-8")

    # -- reading ---------------------------------------------------------------------------
    def read(self, clip_id: str, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
        """The clip as float32 mono, at its own rate or resampled to `sample_rate` (as read_audio does)."""
        row = self._index.row_of(clip_id)
        if row is None:
            raise FatError(f"clip {clip_id!r} is in none of the packed stores {', '.join(map(str, self.dirs))}")
        return self.read_row(row, sample_rate)

    def read_row(self, row: int, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
        shard = int(self.shard_of[row])
        path, clip_id = self.shard_paths[shard], self.id_at(row)
        data = self.read_bytes(row)
        try:
            decoded, rate = decode(data)
        except CodecError as exc:
            codec = self.shard_codecs[shard]
            raise FatError(f"{path}: clip {clip_id}: its {codec} bytes do not decode ({exc})") from None
        if rate != int(self.sample_rate[row]) or decoded.shape[1] != int(self.channels[row]):
            raise FatError(f"{path}: clip {clip_id}: decodes to {decoded.shape[1]} channels at {rate} Hz, the shard "
                           f"records {self.channels[row]} at {self.sample_rate[row]} Hz")
        audio = to_mono(decoded)
        frames = int(self.num_samples[row])
        if self.shard_lossless[shard] and audio.shape[0] != frames:
            raise FatError(f"{path}: clip {clip_id}: decodes to {audio.shape[0]} samples, the shard records {frames}")
        if audio.shape[0] != frames:  # lossy codecs may pad or trim the last block: the source's length
            audio = np.ascontiguousarray(fit_length(audio, frames))
        if sample_rate is not None and rate != sample_rate:
            audio = np.ascontiguousarray(resample(audio, rate, sample_rate), dtype=np.float32)
            rate = sample_rate
        return audio, rate

    def read_bytes(self, row: int) -> bytes:
        """A clip's encoded bytes, checked against their CRC32."""
        shard = int(self.shard_of[row])
        try:
            data = self._blob(shard)[int(self.start[row]):int(self.end[row])].tobytes()
        except H5_ERRORS as exc:
            where = f"{self.shard_paths[shard]}: clip {self.id_at(row)}"
            raise FatError(f"{where}: cannot read its bytes ({exc})") from None
        if zlib.crc32(data) != int(self.crc32[row]):
            raise FatError(f"{self.shard_paths[shard]}: clip {self.id_at(row)}: its bytes fail their CRC32 check: the "
                           "shard is corrupt; rewrite it with `fat pack --verify-existing`")
        return data

    # -- per-process handles ---------------------------------------------------------------
    def _blob(self, shard: int) -> Any:
        if self._pid != os.getpid():  # a forked child opens its own handles
            self._blobs, self._handles, self._pid = {}, {}, os.getpid()
        blob = self._blobs.get(shard)
        if blob is None:
            handle = open_shard(Path(self.shard_paths[shard]))
            self._handles[shard] = handle
            blob = self._blobs[shard] = dataset(handle, "audio")  # read_bytes turns an error here into a FatError
        return blob

    def close(self) -> None:
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._blobs, self._handles, self._pid = {}, {}, None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_blobs"], state["_handles"], state["_pid"], state["_ids"] = {}, {}, None, None
        return state

    def __enter__(self) -> PackedAudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _datafile_hashes(datafiles: Sequence[str | Path]) -> dict[str, Path]:
    hashes = {}
    for datafile in datafiles:
        try:
            hashes[file_sha256(datafile)] = Path(datafile)
        except OSError as exc:
            raise FatError(f"{datafile}: cannot read the datafile ({exc.strerror})") from None
    return hashes


def _load_shard(path: Path, index: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A shard's ids (fixed-width utf-8), blob offsets and per-clip columns, after checking it belongs here."""
    if not path.is_file():
        raise FatError(f"{path}: a shard listed in {INDEX_NAME} is missing")
    if "seal" in entry:
        problem = seal_problem(path, Seal.from_dict(entry["seal"]))
        if problem:
            raise FatError(f"{path}: the shard is damaged ({problem}); nothing was read from it: move it away "
                           "and rerun `fat pack` to write it again")
    with open_shard(path) as handle:
        attrs = read_attrs(path, handle)
        if attrs.get("format") != FORMAT or attrs.get("complete") is not True:
            raise FatError(f"{path}: not a complete packed audio shard (rerun `fat pack`)")
        if attrs.get("identity_sha256") != index.get("identity_sha256"):
            theirs = f"datafile sha256 {str(attrs.get('datafile_sha256'))[:12]}…, codec {attrs.get('codec_settings')}"
            ours = f"{str(index.get('datafile_sha256'))[:12]}…, {index.get('codec')}"
            raise FatError(f"{path}: the shard belongs to another pack ({theirs}) than its {INDEX_NAME} ({ours}): "
                           "rerun `fat pack`")
        codec = attrs.get("codec")
        if codec not in CODECS:
            raise FatError(f"{path}: clips are encoded as {codec!r}, which this reader cannot decode "
                           f"(known: {', '.join(CODECS)})")
        try:
            raw_ids = dataset(handle, "ids")[()]
            offsets = np.asarray(dataset(handle, "offsets")[()], dtype=np.int64)
            blob_size = int(dataset(handle, "audio").shape[0])
            table = {name: np.asarray(dataset(handle, name)[()], dtype=PER_CLIP_DTYPES[name]) for name in PER_CLIP}
        except H5_ERRORS as exc:
            raise FatError(f"{path}: the shard cannot be read (corrupt? {exc})") from None
    count = len(raw_ids)
    if count != entry["clips"] or count != attrs.get("clips") or offsets.shape != (count + 1,) \
            or any(column.shape != (count,) for column in table.values()):
        raise FatError(f"{path}: the shard's columns disagree on its clip count ({count} ids, "
                       f"{INDEX_NAME} says {entry['clips']})")
    if count and (offsets[0] != 0 or offsets[-1] != blob_size or (np.diff(offsets) < 0).any()):
        raise FatError(f"{path}: the shard's offsets do not fit its audio ({blob_size} bytes)")
    keys = np.array([i if isinstance(i, bytes) else str(i).encode("utf-8") for i in raw_ids], dtype=bytes) \
        if count else np.zeros(0, dtype="S1")
    try:
        np.char.decode(keys, "utf-8")  # ids are read back as text: a damaged one must fail here, naming the shard
    except UnicodeDecodeError as exc:
        raise FatError(f"{path}: the shard's ids are not utf-8 text (corrupt? {exc})") from None
    return {"keys": keys, "start": offsets[:-1], "end": offsets[1:], **table, "codec": codec}


def _refuse_shared_ids(keys: np.ndarray, shard_of: np.ndarray, paths: list[str]) -> None:
    """Two stores holding one id: which clip to read would be a guess."""
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if same.size:
        first, second = order[same[0]], order[same[0] + 1]
        raise FatError(f"clip {keys[first].decode('utf-8', 'replace')!r} is in both {paths[shard_of[first]]} and "
                       f"{paths[shard_of[second]]}")
