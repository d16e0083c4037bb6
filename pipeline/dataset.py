"""The training/evaluation dataset over a clip list: DataLoader workers only decode.

An item is the clip's waveform at its stored rate (with its length), its multi-hot target, its
teacher logits row and its index; `collate_clips` pads a batch of them. Everything after
decoding runs on the training device per batch (`DeviceInputs`): AST's recipe of waveform
mixup (λ ~ Beta(10, 10), labels and the teacher's KD target mixed with the same partner and λ;
the partner comes from the same batch, `student.augment.MixPlan`), resampling to 16 kHz and
kaldi fbank (`student.frontend.BatchFbank`), SpecAugment before normalisation, then optional
noise and time roll. Training, validation, `fat evaluate` and `fat predict` share that one
feature path, so train and test features cannot drift.

Teacher logits are looked up by clip id once, at construction, and held in one shared-memory
tensor. Nothing big is copied per DataLoader worker: the clip list (`pipeline.datafile.ClipList`)
keeps paths and ids in numpy byte buffers and labels as CSR integer arrays. Items hold no
randomness: a batch's augmentation is drawn from a generator the training loop seeds from
(seed, epoch, batch, rank), so the same seed gives the same batches whatever the number of
workers, and a resumed run continues exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from pipeline.clip_audio import open_clip_audio
from pipeline.core.errors import FatError
from pipeline.core.workers import WorkerFatError
from pipeline.datafile import ClipList, LabelSet
from pipeline.store import LogitsStore
from student import torchaudio_ops
from student.augment import MixPlan
from student.features import NORM_STATS, spec_augment
from student.frontend import BatchFbank
from student.kd import TeacherMix

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
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

    mixup: float = 0.0  # fraction of clips mixed with a partner from the same batch
    freqm: int = 0  # SpecAugment max frequency-mask width (mel bins)
    timem: int = 0  # SpecAugment max time-mask width (frames)
    noise: bool = False  # AST's Speech Commands noise: + U[0,1) · u/10 after normalisation
    time_shift: int = 0  # circular roll by an integer in [-time_shift, time_shift) frames


@dataclass(frozen=True)
class Features:
    """How a clip becomes the student's input."""

    target_frames: int = 1024
    num_mel_bins: int = 128
    mean: float = NORM_STATS["audioset"][0]
    std: float = NORM_STATS["audioset"][1]


class ClipDataset(torch.utils.data.Dataset):
    """Items for training or evaluation; keys are an index, or (index, seed) from EpochSampler.

    Each item: wave (S,) float32 at the file's rate, length and rate (int64), target (C,)
    float32, teacher (C,) float32 logits and teacher_mask (bool), index (the clip's row, for
    gathering predictions). Features and augmentation are computed per batch by `DeviceInputs`.
    """

    def __init__(self, clips: ClipList, features: Features, augment: Augment | None = None,
                 teacher: TeacherTable | None = None, packed: Sequence[Path] = ()) -> None:
        self.clips = clips
        # One reader for files or packed stores (the `packed` setting); every clip's audio must be there.
        self.audio = open_clip_audio(clips, packed)
        self.audio.require_all()
        self.features = features
        self.augment = augment or Augment()
        self.teacher = teacher
        if teacher is not None and teacher.logits.shape != (len(clips), clips.num_classes):
            raise ValueError("teacher table does not match the clip list")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key[0] if isinstance(key, tuple) else key
        try:
            wave, rate = self.load_wave(index)
        except FatError as exc:
            if torch.utils.data.get_worker_info() is None:
                raise
            raise WorkerFatError.carrying(exc) from None  # the main process prints its one line, not a traceback
        return {
            "wave": wave.float(),
            "length": torch.tensor(wave.shape[0], dtype=torch.int64),
            "rate": torch.tensor(rate, dtype=torch.int64),
            "target": torch.from_numpy(self.clips.multi_hot(index).astype(np.float32)),
            **self.teacher_fields(index),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def load_wave(self, index: int) -> tuple[torch.Tensor, int]:
        """The clip as a mono waveform at its file's own rate (resampled once, after any mixing)."""
        audio, rate = self.audio.read(index)  # errors name the clip and its file or shard
        if audio.size < rate * 0.025:
            raise FatError(f"clip {self.clips.ids[index]} of {self.clips.source} is shorter than one 25 ms frame")
        return torch.from_numpy(audio), rate

    def teacher_fields(self, index: int) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return {"teacher": torch.zeros(self.clips.num_classes, dtype=torch.float32),
                    "teacher_mask": torch.tensor(False)}
        return {"teacher": self.teacher.logits[index].float(), "teacher_mask": self.teacher.present[index].clone()}


def collate_clips(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Waves zero-padded to the longest clip (B, S) with lengths (B,) and one rate; the rest stacked.

    A batch whose files have different rates is resampled to 16 kHz here (the resampler
    `BatchFbank` uses), so a batch always has one rate; lists of one rate pass through untouched.
    """
    rates = {int(item["rate"]) for item in items}
    waves = [item["wave"] for item in items]
    rate = rates.pop() if len(rates) == 1 else SAMPLE_RATE
    if rate == SAMPLE_RATE and any(int(item["rate"]) != SAMPLE_RATE for item in items):
        waves = [w if int(item["rate"]) == SAMPLE_RATE else torchaudio_ops.resample(w, int(item["rate"]), SAMPLE_RATE)
                 for w, item in zip(waves, items)]
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.int64)
    padded = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for row, wave in enumerate(waves):
        padded[row, : wave.shape[0]] = wave
    batch = {key: torch.stack([item[key] for item in items]) for key in ("target", "teacher", "teacher_mask", "index")}
    return {"wave": padded, "length": lengths, "rate": torch.tensor(rate, dtype=torch.int64), **batch}


def batch_generator(*seeds: int) -> torch.Generator:
    """A CPU generator for one batch's augmentation, seeded from e.g. (seed, epoch, batch, rank)."""
    state = np.random.SeedSequence([int(s) for s in seeds]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


@dataclass(frozen=True)
class TrainInputs:
    """One training batch on the device: model input, mixed targets, and the KD target's mix."""

    features: torch.Tensor  # (B, T, F)
    target: torch.Tensor  # (B, C), mixed as the audio
    plan: MixPlan

    def teacher_mix(self, teacher: torch.Tensor, mask: torch.Tensor | None) -> TeacherMix:
        return self.plan.teacher_mix(teacher, mask)


class DeviceInputs:
    """The one feature path from a `collate_clips` batch to the model's input, on the model's device."""

    def __init__(self, features: Features, device: torch.device | str = "cpu") -> None:
        self.features = features
        self.device = torch.device(device)
        self.frontend = BatchFbank(features.target_frames, features.num_mel_bins, features.mean,
                                   features.std).to(self.device)

    def evaluation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised features (B, T, F), no augmentation."""
        waves, lengths = self._waves(batch)
        return self.frontend(waves, lengths, int(batch["rate"]))

    def training(self, batch: dict[str, torch.Tensor], augment: Augment, generator: torch.Generator) -> TrainInputs:
        """AST's training recipe on the batch: mixup → fbank → SpecAugment → normalise → noise → time roll.

        All random numbers come from `generator` (CPU), so a seed gives the same batch on every device.
        """
        waves, lengths = self._waves(batch)
        count = waves.shape[0]
        plan = (MixPlan.draw(count, augment.mixup, generator, self.device) if augment.mixup > 0
                else MixPlan.none(count, self.device))
        fbank, _ = self.frontend.fbank(waves, lengths, int(batch["rate"]), frames=self.features.target_frames,
                                       mix=plan if augment.mixup > 0 else None)  # mixed chunk by chunk
        if augment.freqm or augment.timem:
            fbank = spec_augment(fbank, augment.freqm, augment.timem, generator=generator)
        fbank = fbank.sub_(self.features.mean).div_(2 * self.features.std)  # in place: fbank is this batch's own
        if augment.noise:  # AST's Speech Commands noise: + U[0,1) · u/10 per clip
            scale = torch.rand(count, generator=generator)[:, None, None] / 10
            noise = torch.rand(fbank.shape, generator=generator) * scale
            fbank = fbank + noise.to(self.device)
        if augment.time_shift:  # a circular roll per clip, as torch.roll(fbank, k, dims=0) per item
            shifts = torch.randint(-augment.time_shift, augment.time_shift, (count,), generator=generator)
            frames = fbank.shape[1]
            source = (torch.arange(frames)[None] - shifts[:, None]) % frames
            fbank = fbank.gather(1, source.to(self.device)[..., None].expand(-1, -1, fbank.shape[2]))
        target = plan.mix_targets(batch["target"].to(self.device, non_blocking=True))
        return TrainInputs(fbank.contiguous(), target, plan)

    def _waves(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["wave"].to(self.device, non_blocking=True), batch["length"].to(self.device, non_blocking=True)
