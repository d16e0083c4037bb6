"""The clip list: every stage's view of the clips of one or more datafiles.

One class for validate (the entries as listed), logits (the union of its datafiles, labels
optional), train and evaluate (labels encoded, audio checked): ids, absolute paths and labels
as columns. Strings live in numpy byte buffers and classes in one CSR encoding, not in per-clip
Python objects, so a 2 M-clip AudioSet list is a few hundred MB and a forked DataLoader worker
shares it without copy-on-write churn.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.core.errors import FatError
from pipeline.core.ids import split_labels
from pipeline.datafile.labels import LabelSet


class PackedStrings(Sequence[str]):
    """A read-only list of strings in two numpy arrays (utf-8 bytes + offsets).

    A Python list of two million str objects is copied page by page into every forked worker as
    reference counts change; numpy buffers are never touched that way.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [str(s).encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]  # int → str, slice → list[str]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    @classmethod
    def concatenate(cls, parts: Sequence[PackedStrings]) -> PackedStrings:
        """One list holding the strings of `parts` in order, joined as bytes (nothing decoded)."""
        joined = cls.__new__(cls)
        joined.blob = np.concatenate([p.blob for p in parts]) if parts else np.zeros(0, np.uint8)
        joined.offsets = _join_offsets([p.offsets for p in parts])
        return joined


def _join_offsets(parts: Sequence[np.ndarray]) -> np.ndarray:
    """CSR offsets of consecutive parts as the offsets of their concatenation."""
    joined, shift = [np.zeros(1, np.int64)], 0
    for offsets in parts:
        joined.append(offsets[1:] + shift)
        shift += int(offsets[-1])
    return np.concatenate(joined).astype(np.int64)


class MidLists(Sequence[tuple[str, ...]]):
    """Per-clip label MIDs as tuples, computed on access (from the file's strings or the classes)."""

    def __init__(self, clips: ClipList) -> None:
        self._clips = clips

    def __len__(self) -> int:
        return len(self._clips)

    def __getitem__(self, i: int) -> tuple[str, ...]:  # type: ignore[override]
        clips = self._clips
        if clips.label_strings is not None:
            return split_labels(clips.label_strings[i])
        assert clips.label_set is not None
        return tuple(clips.label_set.mids[k] for k in clips.classes_of(i))

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class ClipList:
    """Clips as columns: ids, absolute paths, labels; with a label set, their classes in CSR form.

    `label_strings` (the comma-joined MIDs as the file has them) are kept only while no label set
    encodes them: an encoded list needs just the integers. `parts` records which datafile each
    run of clips came from (name, count), in order.
    """

    source: str  # the datafile(s), for messages
    ids: PackedStrings
    paths: PackedStrings
    label_strings: PackedStrings | None = None
    label_set: LabelSet | None = None
    class_indices: np.ndarray | None = None  # int32, every clip's classes concatenated
    offsets: np.ndarray | None = None  # int64, clip i: class_indices[offsets[i]:offsets[i + 1]]
    parts: tuple[tuple[str, int], ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        if self.label_set is None:
            raise FatError(f"{self.source}: read without a label CSV, so clips have no classes")
        return len(self.label_set)

    @property
    def labels(self) -> MidLists:
        """labels[i] = the MIDs of clip i, as a tuple."""
        return MidLists(self)

    def part_ranges(self) -> list[tuple[str, int, int]]:
        """(datafile, first row, row after the last) of each datafile the list was read from."""
        ranges, start = [], 0
        for name, count in self.parts or ((self.source, len(self)),):
            ranges.append((name, start, start + count))
            start += count
        return ranges

    # -- classes -----------------------------------------------------------------------------
    def classes_of(self, i: int, labels: LabelSet | None = None) -> np.ndarray:
        """Class numbers (int32) of clip i, against `labels` or the set the list was read with."""
        if labels is None or labels is self.label_set:
            if self.class_indices is None or self.offsets is None:
                raise FatError(f"{self.source}: read without a label CSV, so clips have no class numbers")
            return self.class_indices[self.offsets[i]:self.offsets[i + 1]]
        return np.array([self.class_number(labels, mid, i) for mid in self.labels[i]], dtype=np.int32)

    def class_number(self, labels: LabelSet, mid: str, i: int) -> int:
        """The class of `mid` in `labels`, or a FatError naming this clip."""
        if mid not in labels:
            raise FatError(f"{self.source}: entry {i} (id {self.ids[i]}): label {mid!r} is not in "
                           f"{labels.path or 'the label CSV'}")
        return labels.index_of(mid)

    def multi_hot(self, i: int, labels: LabelSet | None = None) -> np.ndarray:
        """float32 (C,) target of clip i: 1 at its classes."""
        labels = labels if labels is not None else self.label_set
        if labels is None:
            raise FatError(f"{self.source}: a label CSV is needed for targets")
        target = np.zeros(len(labels), dtype=np.float32)
        target[self.classes_of(i, labels)] = 1.0
        return target

    def targets(self) -> np.ndarray:
        """Every clip's multi-hot row, float32 (N, C), built from the CSR arrays in one step."""
        if self.class_indices is None or self.offsets is None:
            raise FatError(f"{self.source}: a label CSV is needed for targets")
        rows = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        table = np.zeros((len(self), self.num_classes), dtype=np.float32)
        table[rows, self.class_indices] = 1.0
        return table

    def label_counts(self) -> np.ndarray:
        if self.offsets is None:
            return np.array([len(m) for m in self.labels], dtype=np.int64)
        return np.diff(self.offsets)

    def encoded(self, labels: LabelSet) -> ClipList:
        """The list with every clip's MIDs checked against `labels` and encoded (FatError naming the clip)."""
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        flat: list[int] = []
        for i, mids in enumerate(self.labels):
            flat.extend(self.class_number(labels, mid, i) for mid in mids)
            offsets[i + 1] = len(flat)
        return replace(self, label_strings=None, label_set=labels, class_indices=np.asarray(flat, dtype=np.int32),
                       offsets=offsets)

    def check_single_label(self) -> None:
        """Cross-entropy needs exactly one class per clip: name the first clips that break that."""
        counts = self.label_counts()
        bad = np.flatnonzero(counts != 1)
        if bad.size:
            shown = ", ".join(f"{self.ids[i]} ({counts[i]} labels)" for i in bad[:5])
            raise FatError(
                f"{self.source}: single-label training (--loss ce) needs exactly one label per clip; "
                f"{bad.size} clips do not: {shown}{' ...' if bad.size > 5 else ''}"
            )

    # -- identity and files ------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the ids and their classes in order (not the paths: a moved corpus is the same data)."""
        if self.class_indices is None or self.offsets is None:
            raise FatError(f"{self.source}: a label CSV is needed for the list's fingerprint")
        digest = hashlib.sha256()
        for array in (self.ids.offsets, self.ids.blob, self.offsets, self.class_indices):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def missing_files(self) -> list[int]:
        """Rows whose audio file does not exist (one stat per clip)."""
        return [i for i, path in enumerate(self.paths) if not os.path.isfile(path)]

    def check_files_exist(self, show: int = 10) -> None:
        """FatError naming the clips whose audio is missing (the first `show` of them)."""
        missing = self.missing_files()
        if missing:
            listed = "\n".join(f"  {self.ids[i]}: {self.paths[i]}" for i in missing[:show])
            more = f"\n  ... and {len(missing) - show} more" if len(missing) > show else ""
            raise FatError(f"{self.source}: {len(missing)} of {len(self)} audio files are missing:\n{listed}{more}")

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def from_lists(cls, ids: Sequence[str], paths: Sequence[str], classes: Sequence[Sequence[int]],
                   label_set: LabelSet, source: str) -> ClipList:
        counts = np.fromiter((len(c) for c in classes), dtype=np.int64, count=len(classes))
        offsets = np.zeros(len(classes) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = np.fromiter((k for c in classes for k in c), dtype=np.int32, count=int(offsets[-1]))
        return cls(source, PackedStrings(ids), PackedStrings(paths), None, label_set, flat, offsets)

    def head(self, count: int) -> ClipList:
        """The first `count` clips (all of them when there are fewer)."""
        if count >= len(self):
            return self
        keep = range(count)
        if self.label_set is None:
            return replace(self, ids=PackedStrings(self.ids[:count]), paths=PackedStrings(self.paths[:count]),
                           label_strings=PackedStrings(self.label_strings[:count]) if self.label_strings else None,
                           parts=())
        return ClipList.from_lists(self.ids[:count], self.paths[:count], [self.classes_of(i) for i in keep],
                                   self.label_set, self.source)

    @classmethod
    def concatenate(cls, parts: Sequence[ClipList]) -> ClipList:
        """The clips of `parts` in order, as one list (read against the same label set, or none)."""
        first = parts[0]
        if len(parts) == 1:
            return first
        encoded = first.class_indices is not None
        return cls(
            " + ".join(p.source for p in parts),
            PackedStrings.concatenate([p.ids for p in parts]), PackedStrings.concatenate([p.paths for p in parts]),
            None if encoded else PackedStrings.concatenate([p.label_strings for p in parts]),  # type: ignore[misc]
            first.label_set,
            np.concatenate([p.class_indices for p in parts]) if encoded else None,  # type: ignore[misc]
            _join_offsets([p.offsets for p in parts]) if encoded else None,  # type: ignore[misc]
            tuple(part for p in parts for part in (p.parts or ((p.source, len(p)),))),
        )
