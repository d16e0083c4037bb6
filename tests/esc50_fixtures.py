"""A miniature ESC-50 release made on the spot: the real layout (audio/*.wav, meta/esc50.csv with its
columns), a few classes of tones, every class in every fold."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

META_HEADER = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
CATEGORIES = ("dog", "rain", "siren")
TONES = {"dog": 400.0, "rain": 1500.0, "siren": 4000.0}


def clip(category: str, seed: int, seconds: float, rate: int) -> np.ndarray:
    """A tone of the category's pitch, a little detuned per clip, under a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    pitch = TONES.get(category, 300.0 + 200.0 * (seed % 11)) * (1 + 0.03 * rng.standard_normal())
    return (0.3 * np.sin(2 * np.pi * pitch * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def build_release(root: Path, per_fold: int = 2, categories: tuple[str, ...] = CATEGORIES, seconds: float = 0.5,
                  rate: int = 44100) -> list[dict[str, str]]:
    """`per_fold` clips of every category in each of the 5 folds; returns the meta rows written."""
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = []
    for fold in range(1, 6):
        for target, category in enumerate(categories):
            for take in range(per_fold):
                source = 100000 + 1000 * target + 10 * fold + take
                name = f"{fold}-{source}-A-{target}.wav"
                sf.write(root / "audio" / name, clip(category, source, seconds, rate), rate, subtype="PCM_16")
                rows.append({"filename": name, "fold": str(fold), "target": str(target), "category": category,
                             "esc10": "False", "src_file": str(source), "take": "A"})
    write_meta(root, rows)
    return rows


def write_meta(root: Path, rows: list[dict[str, str]], header: tuple[str, ...] = META_HEADER) -> None:
    with open(root / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(header), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
