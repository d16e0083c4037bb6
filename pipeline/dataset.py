"""The training/evaluation dataset over a clip list: wav → 16 kHz → kaldi fbank → normalise → augment.

Items follow AST's recipe: optional waveform mixup with a uniformly drawn partner (λ ~ Beta(10, 10),
labels mixed with the same λ), SpecAugment before normalisation, optional noise and time roll
after it. Clips are mixed at their files' own rate and resampled to 16 kHz once: resampling is
linear, so this is the same mix as AST's (which mixes 16 kHz files) for half the resampling work.
Teacher logits are looked up by clip id once, at construction, and held in one shared-memory
tensor; the KD target is mixed in the loss from the clip's and the partner's teacher
probabilities (see student.kd).

Nothing big is copied per DataLoader worker: the clip list (`pipeline.datafile.ClipList`) keeps
paths and ids in numpy byte buffers and labels as CSR integer arrays, and teacher logits live in
shared memory. Item randomness comes from the seed the sampler hands out with each index, so the
same (seed, epoch, position) gives the same item whatever the number of workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from pipeline.core.audio import read_audio, resample
from pipeline.core.errors import FatError
from pipeline.datafile import ClipList, LabelSet
from pipeline.store import LogitsStore
from student.features import kaldi_fbank, normalize, spec_augment

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIXUP_BETA = 10.0  # AST draws the mixup weight from Beta(10, 10)
MISSING_TEACHER_POLICIES = ("error", "mask")


@dataclass(frozen=True)
class TeacherTable:
    """Teacher logits for every clip of a list, row i = clip i; present[i] False where the store has none."""

    logits: torch.Tensor  # (N, C) float16 or float32, in shared memory
    present: torch.Tensor  # (N,) bool

    @property
    def coverage(self) -> float:
        return float(self.present.float().mean()) if len(self.present) else 0.0


def load_teacher_table(store_path: str | Path, clips: ClipList, label_set: LabelSet | None, missing: str = "error",
                       block: int = 4096) -> TeacherTable:
    """Look every clip up in a teacher logits store; apply the missing-teacher policy.

    Checks that the store belongs to the same label set (class count and, when recorded, the
    label CSV's sha256). The rows are read once, in blocks, into one shared-memory tensor.
    """
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
        path = self.clips.paths[index]
        try:
            audio, rate = read_audio(path)
        except FatError as exc:
            raise FatError(f"clip {self.clips.ids[index]} of {self.clips.source}: {exc}") from None
        if audio.size < rate * 0.025:
            raise FatError(f"{path}: clip {self.clips.ids[index]} is shorter than one 25 ms frame")
        return torch.from_numpy(audio), rate

    def fbank(self, wave: torch.Tensor, augment: Augment, rng: np.random.Generator) -> torch.Tensor:
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
    """Band-limited resampling (pipeline.core.audio's), then the mean removed (AST centres every waveform)."""
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
