"""A two-class corpus for the teacher command tests (tones and noise at 32 kHz), shared by the mn, DyMN
and PaSST end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf


def tone_noise_corpus(folder: Path, seconds: float, clips: int = 4) -> Path:
    """`clips` WAVs alternating a tone (/m/tone) and white noise (/m/noise), their label CSV and datafile."""
    rate = 32000
    classes = [("/m/tone", "Tone"), ("/m/noise", "Noise")]
    (folder / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n" + "".join(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(classes)))
    rng = np.random.default_rng(0)
    entries = []
    for i in range(clips):
        t = np.arange(int(rate * seconds)) / rate
        audio = 0.5 * np.sin(2 * np.pi * (300 + 500 * i) * t) if i % 2 == 0 else 0.3 * rng.standard_normal(t.size)
        sf.write(folder / f"c{i}.wav", audio.astype(np.float32), rate)
        entries.append({"wav": f"c{i}.wav", "labels": classes[i % 2][0], "id": f"c{i}"})
    datafile = folder / "eval.json"
    datafile.write_text(json.dumps({"data": entries}))
    return datafile
