"""AST-format datafiles and label CSVs: the one place that reads and writes them.

A datafile is AST's JSON, `{"data": [{"wav": "<path>", "labels": "<mid>,<mid>"}, ...]}`, so
files made for AST load unchanged; `fat validate` and `fat prepare` also write an `id` per
entry. Paths are relative to the datafile's folder or absolute. An entry's id is its `id`
field when present, else its wav path relative to the datafile's folder without extension.

The reader keeps columns (numpy object arrays and one CSR label encoding), not per-entry
objects, so a 2 M-clip AudioSet datafile stays a few hundred MB.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.errors import FatError
from pipeline.ids import split_labels

LABEL_CSV_NAME = "class_labels_indices.csv"
LABEL_CSV_HEADER = ("index", "mid", "display_name")


# --------------------------------------------------------------------------- label CSV


@dataclass(frozen=True)
class LabelSet:
    """The classes of a label CSV, in index order, with the file's sha256 (provenance for stores)."""

    mids: tuple[str, ...]
    names: tuple[str, ...]
    sha256: str
    path: Path | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._index:
            self._index.update({mid: i for i, mid in enumerate(self.mids)})

    def __len__(self) -> int:
        return len(self.mids)

    def __contains__(self, mid: object) -> bool:
        return mid in self._index

    def index_of(self, mid: str) -> int:
        """Class number of `mid`; a FatError naming the label CSV when it has no such class."""
        try:
            return self._index[mid]
        except KeyError:
            raise FatError(f"{self.path or 'label CSV'}: no class {mid!r}") from None


def load_label_csv(path: str | Path) -> LabelSet:
    """Read `index,mid,display_name` (indices 0..C-1 in order, unique MIDs); FatError with file:line."""
    from pipeline.metadata import parse_label_csv

    path = Path(path)
    if not path.is_file():
        raise FatError(f"{path}: no such label CSV")
    table = parse_label_csv(path)
    return LabelSet(table.mids, table.names, file_sha256(path), path)


def label_csv_text(mids: Sequence[str], names: Sequence[str]) -> str:
    """The text of a label CSV (display names always quoted, as AudioSet's own file has them)."""
    if len(mids) != len(names):
        raise ValueError("mids and names differ in length")
    lines = [",".join(LABEL_CSV_HEADER)]
    for index, (mid, name) in enumerate(zip(mids, names, strict=True)):
        if not mid.startswith("/") or any(c in mid for c in ',"') or mid.strip() != mid:
            raise FatError(f"label MID {mid!r} must start with '/' and hold no comma, quote or outer spaces")
        lines.append(f'{index},{mid},"{name.replace(chr(34), chr(34) * 2)}"')
    return "\n".join(lines) + "\n"


def write_label_csv(path: str | Path, mids: Sequence[str], names: Sequence[str]) -> LabelSet:
    """Write a label CSV atomically and return it as read back."""
    write_text_atomic(path, label_csv_text(mids, names))
    return load_label_csv(path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading


class MidLists(Sequence[tuple[str, ...]]):
    """Per-entry label MIDs as tuples, computed on access from the comma-joined strings."""

    def __init__(self, joined: np.ndarray) -> None:
        self._joined = joined

    def __len__(self) -> int:
        return len(self._joined)

    def __getitem__(self, i: int) -> tuple[str, ...]:  # type: ignore[override]
        return split_labels(self._joined[i])

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return (split_labels(text) for text in self._joined)


@dataclass
class Datafile:
    """The entries of one datafile as columns: ids, absolute paths, labels."""

    source: Path
    ids: np.ndarray  # (N,) object array of str
    paths: np.ndarray  # (N,) object array of absolute path str
    label_strings: np.ndarray  # (N,) object array of the raw comma-joined MIDs
    label_set: LabelSet | None = None
    # CSR encoding of the class numbers, present when read against a label set:
    # entry i has classes flat[offsets[i]:offsets[i+1]].
    class_flat: np.ndarray | None = None
    class_offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> MidLists:
        """labels[i] = the MIDs of entry i, as a tuple."""
        return MidLists(self.label_strings)

    def class_indices(self, i: int, labels: LabelSet | None = None) -> np.ndarray:
        """Class numbers (int32) of entry i, against `labels` or the set the file was read with."""
        if labels is None or labels is self.label_set:
            if self.class_flat is None or self.class_offsets is None:
                raise FatError(f"{self.source}: read without a label CSV, so entries have no class numbers")
            return self.class_flat[self.class_offsets[i]:self.class_offsets[i + 1]]
        return np.array([self._index_in(labels, mid, i) for mid in self.labels[i]], dtype=np.int32)

    def multi_hot(self, i: int, labels: LabelSet | None = None) -> np.ndarray:
        """float32 (C,) target of entry i: 1 at its classes."""
        labels = labels if labels is not None else self.label_set
        if labels is None:
            raise FatError(f"{self.source}: a label CSV is needed for targets")
        target = np.zeros(len(labels), dtype=np.float32)
        target[self.class_indices(i, labels)] = 1.0
        return target

    def index_of_id(self) -> dict[str, int]:
        """id → row (built on demand; ids are unique)."""
        return {clip_id: i for i, clip_id in enumerate(self.ids)}

    def missing_files(self) -> list[int]:
        """Rows whose audio file does not exist (one stat per entry)."""
        return [i for i, path in enumerate(self.paths) if not os.path.isfile(path)]

    def check_files_exist(self, show: int = 10) -> None:
        """FatError naming the entries whose audio is missing (the first `show` of them)."""
        missing = self.missing_files()
        if missing:
            listed = "\n".join(f"  {self.ids[i]}: {self.paths[i]}" for i in missing[:show])
            more = f"\n  ... and {len(missing) - show} more" if len(missing) > show else ""
            raise FatError(f"{self.source}: {len(missing)} of {len(self)} audio files are missing:\n{listed}{more}")

    def _index_in(self, labels: LabelSet, mid: str, i: int) -> int:
        if mid not in labels:
            raise FatError(f"{self.source}: entry {i} (id {self.ids[i]}): label {mid!r} is not in {labels.path or 'the label CSV'}")
        return labels.index_of(mid)


@dataclass
class RawEntries:
    """A datafile's entries exactly as listed (repeated ids kept): for `fat validate`, which reports them."""

    source: Path
    ids: np.ndarray  # (N,) object array of str
    paths: np.ndarray  # (N,) object array of absolute path str
    label_strings: np.ndarray  # (N,) object array of str

    def __len__(self) -> int:
        return len(self.ids)


def read_entries(path: str | Path) -> RawEntries:
    """Parse an AST datafile into columns without judging ids or labels (see load_datafile)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FatError(f"{path}: no such datafile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FatError(f"{path}: cannot read the datafile ({exc})") from None
    try:
        document = json.loads(_strip_comment_lines(text))
    except json.JSONDecodeError as exc:
        raise FatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FatError(f'{path}: expected an AST datafile {{"data": [{{"wav": ..., "labels": ...}}, ...]}}')
    folder = os.path.abspath(path.parent)
    count = len(entries)
    ids = np.empty(count, dtype=object)
    paths = np.empty(count, dtype=object)
    joined = np.empty(count, dtype=object)
    for i, entry in enumerate(entries):
        wav, label_text, clip_id = _entry_fields(path, i, entry)
        absolute = os.path.normpath(os.path.join(folder, wav))
        if clip_id is None:
            clip_id = os.path.splitext(os.path.relpath(absolute, folder))[0]
        ids[i], paths[i], joined[i] = clip_id, absolute, label_text
    return RawEntries(path, ids, paths, joined)


def load_datafile(path: str | Path, labels: LabelSet | None = None) -> Datafile:
    """Read an AST datafile; with `labels`, every MID is checked against them and encoded.

    FatErrors name the datafile and the entry (number and id): not JSON, no "data" list, an entry
    without a "wav" string or "labels" string, an empty or repeated id, an unknown MID.
    Leading `#` comment lines (as in AST's shipped sample file) are tolerated.
    """
    raw = read_entries(path)
    seen: dict[str, int] = {}
    for i, clip_id in enumerate(raw.ids):
        if clip_id in seen:
            raise FatError(f"{raw.source}: entry {i}: id {clip_id!r} repeats entry {seen[clip_id]}")
        seen[clip_id] = i
    data = Datafile(raw.source, raw.ids, raw.paths, raw.label_strings, labels)
    if labels is not None:
        data.class_flat, data.class_offsets = _encode_classes(data, labels)
    return data


def _strip_comment_lines(text: str) -> str:
    if not text.lstrip().startswith("#"):
        return text
    lines = text.splitlines(keepends=True)
    # Blank out (not drop) comment lines so JSON error line numbers still match the file.
    return "".join("\n" if line.lstrip().startswith("#") else line for line in lines)


def _entry_fields(path: Path, i: int, entry: Any) -> tuple[str, str, str | None]:
    if not isinstance(entry, dict):
        raise FatError(f"{path}: entry {i} is not an object with \"wav\" and \"labels\"")
    wav, label_text, clip_id = entry.get("wav"), entry.get("labels"), entry.get("id")
    name = f"entry {i}" + (f" (id {clip_id})" if isinstance(clip_id, str) else "")
    if not isinstance(wav, str) or not wav.strip():
        raise FatError(f'{path}: {name} has no "wav" path')
    if not isinstance(label_text, str):
        raise FatError(f'{path}: {name} has no "labels" string (comma-joined MIDs)')
    if clip_id is not None and (not isinstance(clip_id, str) or not clip_id or not clip_id.isprintable()):
        raise FatError(f'{path}: entry {i}: "id" must be a non-empty printable string, got {clip_id!r}')
    return wav, label_text, clip_id


def _encode_classes(data: Datafile, labels: LabelSet) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    flat: list[int] = []
    for i, text in enumerate(data.label_strings):
        flat.extend(data._index_in(labels, mid, i) for mid in split_labels(text))
        offsets[i + 1] = len(flat)
    return np.asarray(flat, dtype=np.int32), offsets


# --------------------------------------------------------------------------- writing


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
