"""A generated multi-label sound task for the dataset and training tests (no files outside tmp).

Each class is a distinct synthetic sound (a tone at its own pitch, a noise band, a click train,
a chirp); a clip holds one or two classes over quiet background noise. Written as real 32 kHz
PCM WAVs with an AST datafile, a label CSV and, on request, a teacher logits store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.audio import write_wav

RATE = 32000
SECONDS = 1.0
CLASS_NAMES = ("low tone", "high tone", "noise band", "clicks", "chirp")


@dataclass
class Task:
    root: Path
    train: Path
    valid: Path
    labels: Path
    train_ids: list[str]
    valid_ids: list[str]
    train_targets: np.ndarray
    valid_targets: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.train_targets.shape[1]


def mid(k: int) -> str:
    return f"/m/syn{k}"


def class_sound(k: int, rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    if k == 0:
        return np.sin(2 * np.pi * 400 * t)
    if k == 1:
        return np.sin(2 * np.pi * 3000 * t)
    if k == 2:
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / RATE)
        spectrum[(freqs < 5000) | (freqs > 7000)] = 0
        band = np.fft.irfft(spectrum, n)
        return band / (np.abs(band).max() + 1e-9)
    if k == 3:
        clicks = np.zeros(n)
        clicks[:: RATE // 20] = 1.0
        return np.convolve(clicks, np.hanning(64), mode="same")
    return np.sin(2 * np.pi * (800 * t + 1200 * t**2))


def make_clip(classes: list[int], rng: np.random.Generator) -> np.ndarray:
    n = int(RATE * SECONDS)
    audio = 0.01 * rng.standard_normal(n)
    for k in classes:
        audio += rng.uniform(0.2, 0.4) * class_sound(k, rng, n)
    return np.clip(audio, -1, 1).astype(np.float32)


def write_label_csv(path: Path, num_classes: int) -> None:
    rows = ["index,mid,display_name"] + [f'{k},{mid(k)},"{CLASS_NAMES[k]}"' for k in range(num_classes)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_split(root: Path, name: str, count: int, num_classes: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    audio_dir = root / "audio" / name
    audio_dir.mkdir(parents=True, exist_ok=True)
    ids, targets, entries = [], np.zeros((count, num_classes), np.float32), []
    for i in range(count):
        first = i % num_classes  # every class appears in every split
        classes = sorted({first, int(rng.integers(num_classes))} if rng.random() < 0.4 else {first})
        clip_id = f"{name}{i:03d}"
        write_wav(audio_dir / f"{clip_id}.wav", make_clip(classes, rng), RATE)
        ids.append(clip_id)
        targets[i, classes] = 1
        entries.append({"wav": f"audio/{name}/{clip_id}.wav", "labels": ",".join(mid(k) for k in classes), "id": clip_id})
    (root / f"{name}.json").write_text(json.dumps({"data": entries}), encoding="utf-8")
    return ids, targets


def make_task(root: Path, n_train: int = 40, n_valid: int = 20, num_classes: int = 4, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_label_csv(root / "class_labels_indices.csv", num_classes)
    train_ids, train_targets = write_split(root, "train", n_train, num_classes, rng)
    valid_ids, valid_targets = write_split(root, "valid", n_valid, num_classes, rng)
    return Task(root, root / "train.json", root / "valid.json", root / "class_labels_indices.csv",
                train_ids, valid_ids, train_targets, valid_targets)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_store(path: Path, ids: list[str], logits: np.ndarray, label_csv: Path | None = None,
                complete: bool = True, dtype: str = "float16") -> Path:
    """A teacher logits store written by the project's own writer (pipeline.store)."""
    from pipeline.store import write_store as write

    attrs = {
        "teacher": "oracle-test-teacher", "checkpoint_sha256": "0" * 64, "random_init": False,
        "sample_rate": RATE, "frontend": json.dumps({}),
        "label_csv_sha256": sha256_of(label_csv) if label_csv else "", "fat_version": "test",
        "created": "2025-01-01T00:00:00Z",
    }
    return write(path, ids, [(0, logits)], logits.shape[1], attrs, complete=complete, dtype=dtype)


def oracle_logits(targets: np.ndarray, confidence: float = 4.0) -> np.ndarray:
    """A good teacher: confident where the label is present."""
    return (confidence * (2 * targets - 1)).astype(np.float32)
