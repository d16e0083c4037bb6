"""Prediction files made elsewhere, read for `fat logits import`: arrays, id lists, EfficientAT's name index.

These files come from other people, so every reader treats them as untrusted: numpy files are
read without pickle, and EfficientAT's `fname_to_index.pkl` (a pickled dict clip name → row)
through an unpickler that refuses every global, so nothing in the file can run; what loads must
be a plain dict of str → int. Every problem is a FatError naming the file and the row, line or key.

Upstream's clip names (EfficientAT's AudioSet loader, datasets/audioset.py): the HDF5 `audio_name`
is `Y<YouTube id>.mp3`, and the loader drops ".mp3" and everything up to the first "Y", so the
keys are bare 11-character YouTube ids, this project's AudioSet clip ids. `clip_id_of_name` also
accepts the undecoded forms (`Y<id>`, `Y<id>.mp3`) and, for other datasets, any name that is a
clip id itself.
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import FatError
from pipeline.core.ids import is_valid_ytid

MATRIX_SUFFIXES = (".npy", ".npz", ".csv")


def read_matrix(path: Path) -> np.ndarray:
    """The (rows, classes) predictions of `path`; a .npy stays on disk (memory-mapped) until rows are taken."""
    if not path.is_file():
        raise FatError(f"{path}: no such predictions file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise FatError(f"{path}: not a readable .npy array of numbers ({exc})") from exc
    elif suffix == ".npz":
        matrix = _npz_array(path)
    elif suffix == ".csv":
        matrix = _csv_matrix(path)
    else:
        raise FatError(f"{path}: predictions must be {', '.join(MATRIX_SUFFIXES)}, not {path.suffix or 'no suffix'!r}")
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise FatError(f"{path}: predictions of shape {matrix.shape}, expected (clips, classes)")
    if matrix.dtype.kind not in "fiu":
        raise FatError(f"{path}: predictions of type {matrix.dtype}, expected numbers")
    return matrix


def _npz_array(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            name = names[0] if len(names) == 1 else "logits" if "logits" in names else None
            if name is None:
                raise FatError(f"{path}: holds arrays {', '.join(names) or '(none)'}: keep one, or name the "
                               "predictions `logits`")
            return archive[name]
    except (ValueError, OSError, EOFError) as exc:  # zip or array headers that do not parse
        raise FatError(f"{path}: not a readable .npz of number arrays ({exc})") from exc


def _csv_matrix(path: Path) -> np.ndarray:
    rows: list[list[float]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line, fields in enumerate(csv.reader(handle), start=1):
            try:
                row = [float(value) for value in fields]
            except ValueError:
                bad = next(v for v in fields if not _is_number(v))
                raise FatError(f"{path}: line {line}: {bad!r} is not a number (the CSV holds numbers only: one row "
                               "per clip, no header)") from None
            if rows and len(row) != len(rows[0]):
                raise FatError(f"{path}: line {line} has {len(row)} values, line 1 has {len(rows[0])}")
            rows.append(row)
    return np.array(rows, dtype=np.float64) if rows else np.zeros((0, 0))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_id_list(path: Path, rows: int) -> list[str]:
    """One id per line, line i naming row i; as many lines as the predictions have rows, no id twice."""
    if not path.is_file():
        raise FatError(f"{path}: no such id list")
    ids = path.read_text(encoding="utf-8").splitlines()
    first_line: dict[str, int] = {}
    for line, clip_id in enumerate(ids, start=1):
        if not clip_id:
            raise FatError(f"{path}: line {line} is empty (one id per line, line i = row i)")
        if clip_id in first_line:
            raise FatError(f"{path}: id {clip_id!r} on line {line} already named row {first_line[clip_id] - 1} "
                           f"on line {first_line[clip_id]}")
        first_line[clip_id] = line
    if len(ids) != rows:
        raise FatError(f"{path}: {len(ids)} ids for {rows} rows of predictions: line i must name row i")
    return ids


class _Refused(pickle.UnpicklingError):
    """The pickle asked for something to run (as opposed to bytes that are no pickle at all)."""


def _integer_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """numpy.dtype as a pickle of numpy integers names it, for integer kinds only."""
    if not isinstance(spec, str):
        raise _Refused(f"it asks for numpy.dtype({spec!r})")
    try:
        dtype = np.dtype(spec)
    except TypeError:
        raise _Refused(f"it asks for numpy.dtype({spec!r})") from None
    if dtype.kind not in "iu":
        raise _Refused(f"it asks for numpy.dtype({spec!r}), not an integer type")
    return dtype


def _integer_scalar(dtype: Any, data: Any = b"") -> np.integer:
    """A numpy integer from its raw bytes, as a pickle of numpy.int64 spells one."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "iu" or not isinstance(data, bytes) \
            or len(data) != dtype.itemsize:
        raise _Refused("it asks for a numpy scalar that is not an integer")
    return np.frombuffer(data, dtype=dtype)[0]


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocol 2 writes bytes as _codecs.encode(str, 'latin1'); nothing else of _codecs is allowed."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("it asks for _codecs.encode with other arguments than a pickle's own bytes")
    return text.encode("latin1")


# The only globals a dict of name -> numpy integer needs (numpy 1.x and 2.x spell the module apart);
# each stands for a checking function of ours, never for the real callable.
_ALLOWED_GLOBALS = {
    ("numpy", "dtype"): _integer_dtype,
    ("numpy.core.multiarray", "scalar"): _integer_scalar,
    ("numpy._core.multiarray", "scalar"): _integer_scalar,
    ("_codecs", "encode"): _latin1_bytes,
}


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Loads only what a pickle can build without naming code: str, int, dict, list, and numpy integers
    (a row index may have been pickled as numpy.int64) through checking stand-ins, never a real callable.

    Every way a pickle reaches code (a class, a function to call, an extension code) goes through
    `find_class`, which refuses all but `_ALLOWED_GLOBALS`; `persistent_load` refuses too.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _Refused(f"it asks for {module}.{name}")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it holds a persistent reference")


def read_name_index(path: Path, rows: int) -> dict[str, int]:
    """EfficientAT's fname_to_index.pkl: clip name → row, checked to be a dict of str → int in 0..rows−1."""
    if not path.is_file():
        raise FatError(f"{path}: no such name index")
    try:
        with open(path, "rb") as handle:
            loaded = _NoGlobalsUnpickler(handle).load()
    except _Refused as exc:
        raise FatError(f"{path}: refused, {exc}: only a plain dict of clip name → row number is read, and nothing "
                       "in the file is run") from None
    except Exception as exc:  # truncated or garbage bytes raise many kinds; all mean "not a pickle"
        raise FatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if type(loaded) is not dict:
        raise FatError(f"{path}: holds a {type(loaded).__name__}, expected a dict of clip name → row number")
    for name, row in loaded.items():
        if type(name) is not str:
            raise FatError(f"{path}: key {name!r} is a {type(name).__name__}, expected a clip name (str)")
        if isinstance(row, np.integer):
            row = loaded[name] = int(row)
        if type(row) is not int:
            raise FatError(f"{path}: {name!r} → {row!r}, a {type(row).__name__}, expected a row number (int)")
        if not 0 <= row < rows:
            raise FatError(f"{path}: {name!r} → row {row}, outside the predictions' rows 0..{rows - 1}")
    return loaded


def clip_id_of_name(name: str, clip_ids: set[str] | frozenset[str]) -> str | None:
    """The clip id an upstream name stands for: the name itself when it is a clip id, else the YouTube
    id of an AudioSet name as upstream's HDF5 spells it (`Y<id>` or `Y<id>.mp3`); None otherwise."""
    if name in clip_ids:
        return name
    stem = name[: -len(".mp3")] if name.endswith(".mp3") else name
    if len(stem) == 12 and stem[0] == "Y" and is_valid_ytid(stem[1:]):
        return stem[1:]
    return stem if stem != name and is_valid_ytid(stem) else None


def rows_by_clip(names: dict[str, int], clip_ids: Sequence[str], source: Path) -> dict[str, int]:
    """clip id → row for the names that stand for one of `clip_ids`; two names for one clip are an error."""
    wanted = frozenset(clip_ids)
    found: dict[str, int] = {}
    named_by: dict[str, str] = {}
    for name, row in names.items():
        clip_id = clip_id_of_name(name, wanted)
        if clip_id is None or clip_id not in wanted:
            continue
        if clip_id in found:
            raise FatError(f"{source}: names {named_by[clip_id]!r} and {name!r} both stand for clip {clip_id} "
                           f"(rows {found[clip_id]} and {row})")
        found[clip_id], named_by[clip_id] = row, name
    return found
