"""The label CSV (`index,mid,display_name`): the one reader and writer of a class list.

Every stage that needs classes reads them here (`load_label_csv`), so the checks (header,
indices 0..C-1 in order, unique MIDs starting with `/`) and the file's sha256 (provenance for
logits stores and checkpoints) are the same everywhere. `LABEL_CSV_NAME` is the file's name
beside a datafile or metadata CSV; `label_csv_beside` is the default every stage uses.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.atomic import write_text_atomic
from pipeline.core.errors import FatError

LABEL_CSV_NAME = "class_labels_indices.csv"
LABEL_CSV_HEADER = ("index", "mid", "display_name")


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


def label_csv_beside(path: str | Path) -> Path:
    """The label CSV a stage uses by default: `class_labels_indices.csv` in the folder of `path`."""
    return Path(path).parent / LABEL_CSV_NAME


def load_label_csv(path: str | Path) -> LabelSet:
    """Read `index,mid,display_name` (indices 0..C-1 in order, unique MIDs); FatError with file:line."""
    path = Path(path)
    if not path.is_file():
        raise FatError(f"{path}: no such label CSV")
    rows = _read_csv_rows(path)
    if not rows or [cell.strip() for cell in rows[0][1]] != list(LABEL_CSV_HEADER):
        raise FatError(f"{path}:1: expected the header 'index,mid,display_name'")
    mids: list[str] = []
    names: list[str] = []
    seen: dict[str, int] = {}
    for line, cells in rows[1:]:
        if len(cells) != 3:
            raise FatError(f"{path}:{line}: expected 3 fields (index,mid,display_name), found {len(cells)}")
        index_text, mid, name = (cell.strip() for cell in cells)
        if index_text != str(len(mids)):
            raise FatError(f"{path}:{line}: index {index_text!r} out of order (expected {len(mids)})")
        if not mid.startswith("/"):
            raise FatError(f"{path}:{line}: {mid!r} is not a label MID (like /m/09x0r)")
        if mid in seen:
            raise FatError(f"{path}:{line}: MID {mid} repeats line {seen[mid]}")
        seen[mid] = line
        mids.append(mid)
        names.append(name)
    if not mids:
        raise FatError(f"{path}: no classes")
    return LabelSet(tuple(mids), tuple(names), file_sha256(path), path)


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank CSV record."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            rows: list[tuple[int, list[str]]] = []
            line = 1
            for cells in reader:
                if cells:
                    rows.append((line, cells))
                line = reader.line_num + 1
            return rows
    except OSError as exc:
        raise FatError(f"{path}: cannot read ({exc.strerror})") from None
    except csv.Error as exc:
        raise FatError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise FatError(f"{path}: not UTF-8 text ({exc})") from None


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
