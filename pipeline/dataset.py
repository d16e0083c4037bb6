"""The training/evaluation dataset over an AST datafile: wav → 16 kHz → kaldi fbank → normalise → augment.

Items follow AST's recipe: optional waveform mixup with a uniformly drawn partner (λ ~ Beta(10, 10),
labels mixed with the same λ), SpecAugment before normalisation, optional noise and time roll
after it. Clips are mixed at their files' own rate and resampled to 16 kHz once: resampling is
linear, so this is the same mix as AST's (which mixes 16 kHz files) for half the resampling work. Teacher logits are looked up by clip id once, at construction, and held in one
shared-memory tensor; the KD target is mixed in the loss from the clip's and the partner's
teacher probabilities (see student.kd).

Nothing big is copied per DataLoader worker: paths and ids are packed into numpy byte buffers,
labels are CSR integer arrays, teacher logits live in shared memory. Item randomness comes from
the seed the sampler hands out with each index, so the same (seed, epoch, position) gives the
same item whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from pipeline.errors import FatError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIXUP_BETA = 10.0  # AST draws the mixup weight from Beta(10, 10)
MISSING_TEACHER_POLICIES = ("error", "mask")


class PackedStrings:
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

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @classmethod
    def concatenate(cls, parts: Sequence["PackedStrings"]) -> "PackedStrings":
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


@dataclass(frozen=True)
class ClipList:
    """The clips of one split: ids, absolute wav paths and their classes in CSR form."""

    ids: PackedStrings
    paths: PackedStrings
    class_indices: np.ndarray  # int32, every clip's classes concatenated
    offsets: np.ndarray  # int64, clip i: class_indices[offsets[i]:offsets[i + 1]]
    num_classes: int
    source: str  # the datafile, for messages

    def __len__(self) -> int:
        return len(self.ids)

    def classes_of(self, i: int) -> np.ndarray:
        return self.class_indices[self.offsets[i]:self.offsets[i + 1]]

    def multi_hot(self, i: int) -> np.ndarray:
        target = np.zeros(self.num_classes, dtype=np.float32)
        target[self.classes_of(i)] = 1.0
        return target

    def targets(self) -> np.ndarray:
        """Every clip's multi-hot row, float32 (N, C), built from the CSR arrays in one step."""
        rows = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        table = np.zeros((len(self), self.num_classes), dtype=np.float32)
        table[rows, self.class_indices] = 1.0
        return table

    def label_counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, ids: Sequence[str], paths: Sequence[str], classes: Sequence[Sequence[int]], num_classes: int,
                   source: str) -> "ClipList":
        counts = np.fromiter((len(c) for c in classes), dtype=np.int64, count=len(classes))
        offsets = np.zeros(len(classes) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = np.fromiter((k for c in classes for k in c), dtype=np.int32, count=int(offsets[-1]))
        return cls(PackedStrings(ids), PackedStrings(paths), flat, offsets, num_classes, source)

    def fingerprint(self) -> str:
        """sha256 of the ids and their classes in order (not the paths: a moved corpus is the same data)."""
        digest = hashlib.sha256()
        for array in (self.ids.offsets, self.ids.blob, self.offsets, self.class_indices):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    @classmethod
    def concatenate(cls, parts: Sequence["ClipList"]) -> "ClipList":
        """The clips of `parts` in order, as one list (same label set)."""
        return cls(PackedStrings.concatenate([p.ids for p in parts]), PackedStrings.concatenate([p.paths for p in parts]),
                   np.concatenate([p.class_indices for p in parts]), _join_offsets([p.offsets for p in parts]),
                   parts[0].num_classes, " + ".join(p.source for p in parts))

    def check_single_label(self) -> None:
        """Cross-entropy needs exactly one class per clip: name the first clips that break that."""
        bad = np.flatnonzero(self.label_counts() != 1)
        if bad.size:
            shown = ", ".join(f"{self.ids[i]} ({self.label_counts()[i]} labels)" for i in bad[:5])
            raise FatError(
                f"{self.source}: single-label training (--loss ce) needs exactly one label per clip; "
                f"{bad.size} clips do not: {shown}{' ...' if bad.size > 5 else ''}"
            )


def load_clip_lists(datafiles: Sequence[str | Path], label_set: Any) -> ClipList:
    """Several datafiles as one list (e.g. AudioSet balanced + unbalanced = AST's full training set).

    Each file's relative wav paths resolve against its own folder; an id listed by two files is an
    error naming both, because the clip would be drawn twice as often and its teacher row is one.
    """
    if len(datafiles) == 1:
        return load_clip_list(datafiles[0], label_set)
    parts = [load_clip_list(path, label_set) for path in datafiles]
    first_seen: dict[str, str] = {}
    for part in parts:
        for clip_id in part.ids:
            if clip_id in first_seen:
                raise FatError(f"clip {clip_id} is listed in both {first_seen[clip_id]} and {part.source}")
            first_seen[clip_id] = part.source
    return ClipList.concatenate(parts)


def load_clip_list(datafile: str | Path, label_set: Any) -> ClipList:
    """Read an AST datafile against a label set (pipeline.datafile) into a ClipList; every clip's
    audio must exist (a FatError names the missing ones) before training or evaluation starts."""
    from pipeline.datafile import load_datafile

    data = load_datafile(datafile, label_set)
    if len(data) == 0:
        raise FatError(f"{datafile}: the datafile lists no clips")
    data.check_files_exist()
    return ClipList(PackedStrings(data.ids), PackedStrings(data.paths),
                    np.asarray(data.class_flat, dtype=np.int32), np.asarray(data.class_offsets, dtype=np.int64),
                    len(label_set), str(datafile))


@dataclass(frozen=True)
class TeacherTable:
    """Teacher logits for every clip of a list, row i = clip i; present[i] False where the store has none."""

    logits: torch.Tensor  # (N, C) float16 or float32, in shared memory
    present: torch.Tensor  # (N,) bool

    @property
    def coverage(self) -> float:
        return float(self.present.float().mean()) if len(self.present) else 0.0


def load_teacher_table(store_path: str | Path, clips: ClipList, label_set: Any, missing: str = "error",
                       block: int = 4096) -> TeacherTable:
    """Look every clip up in a teacher logits store; apply the missing-teacher policy.

    Checks that the store belongs to the same label set (class count and, when recorded, the
    label CSV's sha256). The rows are read once, in blocks, into one shared-memory tensor.
    """
    from pipeline.store import LogitsStore

    if missing not in MISSING_TEACHER_POLICIES:
        raise FatError(f"--missing-teacher must be one of {', '.join(MISSING_TEACHER_POLICIES)}, got {missing!r}")
    store = LogitsStore(store_path, allow_incomplete=(missing == "mask"))
    if not store.complete:
        log.warning("%s: the teacher store is incomplete; clips it lacks are masked out of the KD term", store_path)
    if store.num_classes != clips.num_classes:
        raise FatError(
            f"{store_path}: the teacher store has {store.num_classes} classes but the label CSV has {clips.num_classes}"
        )
    store_sha = store.attrs.get("label_csv_sha256")
    label_sha = getattr(label_set, "sha256", None)
    if store_sha and label_sha and store_sha != label_sha:
        raise FatError(
            f"{store_path}: teacher logits were computed for another label CSV (sha256 {str(store_sha)[:12]}…, "
            f"this run's is {str(label_sha)[:12]}…): class columns would not line up"
        )
    dtype = torch.float16 if np.dtype(getattr(store, "dtype", np.float32)) == np.float16 else torch.float32
    rows = np.asarray(store.rows_of(list(clips.ids)), dtype=np.int64)
    present = torch.from_numpy(rows >= 0)
    logits = torch.zeros(len(clips), clips.num_classes, dtype=dtype)
    # One sequential pass over the store in slabs; each slab's rows are scattered to their clips.
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    for low in range(0, len(store), block):
        high = min(low + block, len(store))
        first, last = np.searchsorted(sorted_rows, [low, high])
        if first == last:
            continue
        slab = store.read_rows(np.arange(low, high))
        targets = order[first:last]
        logits[torch.from_numpy(targets)] = torch.from_numpy(slab[sorted_rows[first:last] - low]).to(dtype)
    store.close()
    missing_rows = np.flatnonzero(~present.numpy())
    if missing_rows.size and missing == "error":
        shown = ", ".join(clips.ids[i] for i in missing_rows[:10])
        raise FatError(
            f"{store_path}: {missing_rows.size} of {len(clips)} clips of {clips.source} have no teacher logits: "
            f"{shown}{' ...' if missing_rows.size > 10 else ''} (compute them with `fat logits`, or pass "
            "--missing-teacher mask to leave them out of the KD term)"
        )
    if missing_rows.size:
        log.warning("%d of %d clips have no teacher logits: masked out of the KD term", missing_rows.size, len(clips))
    if not torch.isfinite(logits[present].float()).all():
        raise FatError(f"{store_path}: the teacher logits contain NaN or infinite values")
    return TeacherTable(logits.share_memory_(), present.share_memory_())


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation (AST's recipe); all off = evaluation."""

    mixup: float = 0.0  # fraction of items mixed with a random partner
    freqm: int = 0  # SpecAugment max frequency-mask width (mel bins)
    timem: int = 0  # SpecAugment max time-mask width (frames)
    noise: bool = False  # AST's Speech Commands noise: + U[0,1) · u/10 after normalisation
    time_shift: int = 0  # circular roll by an integer in [-time_shift, time_shift) frames


@dataclass(frozen=True)
class Features:
    """How a clip becomes the student's input."""

    target_frames: int = 1024
    num_mel_bins: int = 128
    mean: float = -4.2677393
    std: float = 4.5689974


class ClipDataset(torch.utils.data.Dataset):
    """Items for training or evaluation; keys are an index, or (index, seed) from EpochSampler.

    Each item: fbank (T, F) float32, target (C,) float32 (mixed under mixup), teacher (C,) and
    partner_teacher (C,) float32 logits, teacher_mask / partner_mask (bool), lam (float32, 1.0
    when unmixed), index (the clip's row, for gathering predictions).
    """

    def __init__(self, clips: ClipList, features: Features, augment: Augment | None = None,
                 teacher: TeacherTable | None = None) -> None:
        self.clips = clips
        self.features = features
        self.augment = augment or Augment()
        self.teacher = teacher
        if teacher is not None and teacher.logits.shape != (len(clips), clips.num_classes):
            raise ValueError("teacher table does not match the clip list")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        augment = self.augment if seed is not None else Augment()
        rng = np.random.default_rng(seed if seed is not None else index)
        wave, rate = self.load_wave(index)
        target = self.clips.multi_hot(index)
        lam, partner = 1.0, index
        if augment.mixup > 0 and rng.random() < augment.mixup:
            partner = int(rng.integers(len(self.clips)))
            lam = float(rng.beta(MIXUP_BETA, MIXUP_BETA))
            other, other_rate = self.load_wave(partner)
            if other_rate != rate:
                other = resample_wave(other, other_rate, rate)
            wave = mix_waves(wave - wave.mean(), other - other.mean(), lam)
            target = lam * target + (1.0 - lam) * self.clips.multi_hot(partner)
        fbank = self.fbank(resample_wave(wave, rate, SAMPLE_RATE), augment, rng)
        return {
            "fbank": fbank,
            "target": torch.from_numpy(target.astype(np.float32)),
            **self.teacher_fields(index, partner),
            "lam": torch.tensor(lam, dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def load_wave(self, index: int) -> tuple[torch.Tensor, int]:
        """The clip as a mono waveform at its file's own rate (resampled once, after any mixing)."""
        from pipeline.audio import read_audio

        path = self.clips.paths[index]
        try:
            audio, rate = read_audio(path)
        except FatError as exc:
            raise FatError(f"clip {self.clips.ids[index]} of {self.clips.source}: {exc}") from None
        if audio.size < rate * 0.025:
            raise FatError(f"{path}: clip {self.clips.ids[index]} is shorter than one 25 ms frame")
        return torch.from_numpy(audio), rate

    def fbank(self, wave: torch.Tensor, augment: Augment, rng: np.random.Generator) -> torch.Tensor:
        from student.features import kaldi_fbank, normalize, spec_augment

        features = self.features
        fbank = kaldi_fbank(wave, features.target_frames, features.num_mel_bins)
        if augment.freqm or augment.timem:
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            fbank = spec_augment(fbank, augment.freqm, augment.timem, generator=generator)
        fbank = normalize(fbank, features.mean, features.std)
        if augment.noise:
            noise = torch.from_numpy(rng.random(fbank.shape, dtype=np.float32))
            fbank = fbank + noise * float(rng.random()) / 10.0
        if augment.time_shift:
            fbank = torch.roll(fbank, int(rng.integers(-augment.time_shift, augment.time_shift)), dims=0)
        return fbank.float().contiguous()

    def teacher_fields(self, index: int, partner: int) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            empty = torch.zeros(self.clips.num_classes, dtype=torch.float32)
            no = torch.tensor(False)
            return {"teacher": empty, "teacher_mask": no, "partner_teacher": empty, "partner_mask": no}
        return {
            "teacher": self.teacher.logits[index].float(),
            "teacher_mask": self.teacher.present[index].clone(),
            "partner_teacher": self.teacher.logits[partner].float(),
            "partner_mask": self.teacher.present[partner].clone(),
        }


def resample_wave(wave: torch.Tensor, rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling (pipeline.audio's), then the mean removed (AST centres every waveform)."""
    from pipeline.audio import resample

    if rate != new_rate:
        wave = torch.from_numpy(np.ascontiguousarray(resample(wave.numpy(), rate, new_rate)))
    return wave - wave.mean()


def mix_waves(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """AST's waveform mixup: the partner fitted to the first clip's length, weighted sum, re-centred."""
    if second.shape[0] < first.shape[0]:
        second = torch.nn.functional.pad(second, (0, first.shape[0] - second.shape[0]))
    else:
        second = second[: first.shape[0]]
    mixed = lam * first + (1.0 - lam) * second
    return mixed - mixed.mean()
