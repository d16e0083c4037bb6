"""The embedded demo: a small AudioSet-shaped corpus that is synthesised locally, so the whole
pipeline runs offline with the real stages.

What it writes under one folder (default data/demo):
- `audioset/class_labels_indices.csv`, `audioset/balanced_train_segments.csv`,
  `audioset/eval_segments.csv`: the official raw layouts (three comment lines, then
  `YTID, start, end, "mid,mid"`), for `fat metadata --source`.
- `media/<ytid>`: one "video" per clip (webm/opus, m4a/aac, ogg/vorbis, mp3 or flac at
  44.1 kHz stereo), longer than its window so that there is something to cut. Like a video URL
  the name has no extension: yt-dlp and ffmpeg tell the container from the bytes, so one URL
  template (`file://<abs>/media/{id}`) serves every clip.
- `clips.csv` (`split,ytid,container,labels,fault`): every clip, with the faults put in on
  purpose, so tests and users can check that download and validate catch each of them.

Each clip mixes one to three sounds that can be synthesised (sine, noises, chirps, beeps,
clicks, hum, siren, dial tone, buzzer), labelled with the real AudioSet MIDs and names.
The label CSV numbers the classes 0..K-1 (the format requires it); the real AudioSet index of
each class is kept in `DEMO_CLASSES` for reference.

Broken clips (about `broken_fraction` of each split), each a failure real AudioSet has:
- `missing`: no media at all (a removed video) → download: unavailable;
- `html`: an HTML page instead of media (a consent or bot-check page) → download: failed;
- `silent`: digital silence → validate: silence;
- `truncated`: the media ends early in the window → validate: too short;
- `clipped`: a hard-clipped square wall → validate: clipping.

About 400 lines, most of them the small synthesisers and the fault list: one self-contained
generator that only `fat demo-corpus` uses.
"""

from __future__ import annotations

import csv
import io
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_path, write_text_atomic
from pipeline.core.errors import FatError
from pipeline.core.ffmpeg import ffmpeg_binary
from pipeline.core.ids import subprocess_path
from pipeline.datafile import LABEL_CSV_NAME, label_csv_text
from pipeline.settings import option

log = logging.getLogger(__name__)

MEDIA_RATE = 44100
TRAIN_SPLIT = "balanced_train"
EVAL_SPLIT = "eval"
FAULTS: tuple[str, ...] = ("missing", "html", "silent", "truncated", "clipped")
# (extension, ffmpeg codec arguments): the containers YouTube and other hosts serve.
MEDIA_FORMATS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("webm", ("-c:a", "libopus", "-b:a", "96k")),
    ("m4a", ("-c:a", "aac", "-b:a", "128k")),
    ("ogg", ("-c:a", "libvorbis", "-q:a", "5")),
    ("mp3", ("-c:a", "libmp3lame", "-b:a", "160k")),
    ("flac", ("-c:a", "flac")),
)
HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>Before you continue</title></head>"
    "<body><p>Sign in to confirm you're not a bot.</p></body></html>\n"
)
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))

Synth = Callable[[np.random.Generator, int, int], np.ndarray]


# --------------------------------------------------------------------------- the sounds


def _sine(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    return np.sin(2 * np.pi * rng.uniform(300, 3000) * t + rng.uniform(0, 2 * np.pi))


def _white_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    return rng.standard_normal(n) / 3.0


def _pink_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """1/f power: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum[1:] /= np.sqrt(freqs[1:] / freqs[1])
    spectrum[0] = 0
    pink = np.fft.irfft(spectrum, n)
    return pink / (3.0 * pink.std())


def _chirp(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Repeated exponential up-sweeps (the 'Chirp tone' of test signals)."""
    period = int(rng.uniform(0.3, 0.8) * sr)
    low, high = rng.uniform(150, 400), rng.uniform(3000, 6000)
    tau = np.arange(period) / period
    freq = low * (high / low) ** tau
    sweep = np.sin(2 * np.pi * np.cumsum(freq) / sr)
    return np.resize(sweep, n)


def _beep(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A tone gated on and off: short beeps with pauses between them."""
    t = np.arange(n) / sr
    tone = np.sin(2 * np.pi * rng.uniform(800, 2500) * t)
    on, off = rng.uniform(0.08, 0.2), rng.uniform(0.15, 0.4)
    gate = (np.mod(t + rng.uniform(0, on + off), on + off) < on).astype(np.float64)
    return tone * _smooth_gate(gate, sr)


def _clicks(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Sparse sharp impulses (decaying 2 ms bursts) at irregular times."""
    out = np.zeros(n)
    click = rng.standard_normal(int(0.002 * sr)) * np.exp(-np.linspace(0, 6, int(0.002 * sr)))
    rate = rng.uniform(4, 12)  # clicks per second
    times = np.cumsum(rng.exponential(1 / rate, size=int(rate * n / sr * 3) + 4))
    for start in (times * sr).astype(int):
        if start + click.size < n:
            out[start:start + click.size] += click
    return out / max(np.abs(out).max(), 1e-9)


def _mains_hum(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """50 or 60 Hz and its odd harmonics."""
    t = np.arange(n) / sr
    base = rng.choice([50.0, 60.0])
    return sum(np.sin(2 * np.pi * base * k * t) / k for k in (1, 3, 5, 7, 9)) / 1.5


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A wail: the pitch glides up and down between two frequencies."""
    t = np.arange(n) / sr
    centre, depth = rng.uniform(700, 1100), rng.uniform(250, 450)
    freq = centre + depth * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _dial_tone(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """The North American dial tone: 350 Hz + 440 Hz."""
    t = np.arange(n) / sr
    return 0.5 * (np.sin(2 * np.pi * 350 * t) + np.sin(2 * np.pi * 440 * t))


def _buzzer(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A harsh square wave (band-limited by summing odd harmonics below Nyquist)."""
    t = np.arange(n) / sr
    base = rng.uniform(150, 400)
    harmonics = [k for k in range(1, 60, 2) if base * k < sr / 2.5]
    return sum(np.sin(2 * np.pi * base * k * t) / k for k in harmonics) * 0.8


def _smooth_gate(gate: np.ndarray, sr: int) -> np.ndarray:
    """Soften on/off edges (5 ms ramps) so beeps do not click."""
    width = max(int(0.005 * sr), 1)
    return np.convolve(gate, np.ones(width) / width, mode="same")


@dataclass(frozen=True)
class DemoClass:
    """One AudioSet class the demo uses: its real MID, name and index in the 527-class list."""

    mid: str
    name: str
    audioset_index: int
    synth: Synth


DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("/m/01v_m0", "Sine wave", 501, _sine),
    DemoClass("/m/0chx_", "White noise", 520, _white_noise),
    DemoClass("/m/0cj0r", "Pink noise", 521, _pink_noise),
    DemoClass("/m/0hdsk", "Chirp tone", 503, _chirp),
    DemoClass("/m/02fs_r", "Beep, bleep", 481, _beep),
    DemoClass("/m/07qc9xj", "Clicking", 491, _clicks),
    DemoClass("/m/06xkwv", "Mains hum", 516, _mains_hum),
    DemoClass("/m/03kmc9", "Siren", 396, _siren),
    DemoClass("/m/015jpf", "Dial tone", 393, _dial_tone),
    DemoClass("/m/030rvx", "Buzzer", 398, _buzzer),
)


# --------------------------------------------------------------------------- the corpus plan


@dataclass(frozen=True)
class DemoClip:
    """One planned row of a segment CSV and the media behind it."""

    split: str
    ytid: str
    start: float
    end: float
    classes: tuple[int, ...]
    fault: str | None
    extension: str
    seed: int

    @property
    def mids(self) -> list[str]:
        return [DEMO_CLASSES[c].mid for c in self.classes]


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """What `fat demo-corpus` makes (params.yaml's demo section sets a smaller corpus: 200 + 60 clips)."""

    out_dir: Path = option(Path("data/demo"), "folder to write the corpus into")
    train_clips: int = option(320, "clips in balanced_train", unit="count")
    eval_clips: int = option(100, "clips in eval", unit="count")
    window_seconds: float = option(2.0, "length of each clip's labelled window (AudioSet: 10)", unit="s")
    broken_fraction: float = option(0.08, "fraction of each split broken on purpose (0..0.5)")
    max_labels: int = option(3, "most sounds mixed into one clip", unit="count")
    seed: int = option(0, "random seed; the corpus is byte-identical per seed")
    workers: int = option(2, "parallel ffmpeg encoders", unit="processes")
    skip: bool = option(False, "make no corpus, only <out-dir>/README.md saying so (the real-AudioSet presets set "
                               "this, so one dvc.yaml serves both)")

    def check(self) -> None:
        if self.train_clips < 1 or self.eval_clips < 1:
            raise FatError(f"--train-clips and --eval-clips must be ≥ 1 (got {self.train_clips}, {self.eval_clips})")
        if not 0.5 <= self.window_seconds <= 10.0:
            raise FatError(f"--window-seconds must be within 0.5..10 (AudioSet windows are ≤ 10 s), got {self.window_seconds}")
        if not 0.0 <= self.broken_fraction < 0.5:
            raise FatError(f"--broken-fraction must be within 0..0.5, got {self.broken_fraction}")
        if not 1 <= self.max_labels <= len(DEMO_CLASSES):
            raise FatError(f"--max-labels must be within 1..{len(DEMO_CLASSES)}, got {self.max_labels}")


def plan_corpus(settings: DemoSettings) -> list[DemoClip]:
    """Every clip of both splits: ids, windows, labels, faults, formats — deterministic per seed.

    Labels cycle through the classes so each appears about equally often in both splits; the
    broken clips are spread over the fault kinds in turn.
    """
    settings.check()
    rng = np.random.default_rng(settings.seed)
    used: set[str] = set()
    clips: list[DemoClip] = []
    fault_cursor = 0
    for split, count in ((TRAIN_SPLIT, settings.train_clips), (EVAL_SPLIT, settings.eval_clips)):
        broken = set(rng.choice(count, size=int(round(count * settings.broken_fraction)), replace=False).tolist())
        for i in range(count):
            ytid = _new_ytid(rng, used, leading_dash=(i % 23 == 5))
            extra = rng.integers(0, settings.max_labels)  # 0..max_labels-1 extra classes
            others = rng.permutation([c for c in range(len(DEMO_CLASSES)) if c != i % len(DEMO_CLASSES)])
            classes = tuple(sorted([i % len(DEMO_CLASSES), *others[:extra].tolist()]))
            fault = None
            if i in broken:
                fault = FAULTS[fault_cursor % len(FAULTS)]
                fault_cursor += 1
            start = float(rng.choice([0.0, 0.5, 1.0, 2.0, 3.5]))
            clips.append(DemoClip(
                split=split, ytid=ytid, start=start, end=round(start + settings.window_seconds, 3),
                classes=classes, fault=fault, extension=MEDIA_FORMATS[i % len(MEDIA_FORMATS)][0],
                seed=int(rng.integers(0, 2**31 - 1)),
            ))
    return clips


def _new_ytid(rng: np.random.Generator, used: set[str], leading_dash: bool) -> str:
    """A fresh 11-character YouTube-style id; some begin with `-`, as 2 % of real ones do."""
    while True:
        ytid = "".join(rng.choice(_ID_ALPHABET, size=11))
        if leading_dash:
            ytid = "-" + ytid[1:]
        elif ytid.startswith("-"):
            continue
        if ytid not in used:
            used.add(ytid)
            return ytid


# --------------------------------------------------------------------------- synthesis


def synthesise(clip: DemoClip, media_seconds: float, sr: int = MEDIA_RATE) -> np.ndarray:
    """The clip's stereo media signal (float32, shape (samples, 2)), faults included."""
    rng = np.random.default_rng(clip.seed)
    n = int(round(media_seconds * sr))
    if clip.fault == "silent":
        return np.zeros((n, 2), dtype=np.float32)
    if clip.fault == "clipped":
        wall = np.sign(_sine(rng, n, sr)) * 1.0  # every sample at full scale
        return np.stack([wall, wall], axis=1).astype(np.float32)
    mix = np.zeros(n)
    for c in clip.classes:
        sound = DEMO_CLASSES[c].synth(rng, n, sr)
        mix += rng.uniform(0.5, 1.0) * sound / max(np.abs(sound).max(), 1e-9)
    mix *= rng.uniform(0.3, 0.8) / max(np.abs(mix).max(), 1e-9)
    # A little independent noise per channel, far below the sounds, as a real recording has.
    left = mix + 0.002 * rng.standard_normal(n)
    right = mix + 0.002 * rng.standard_normal(n)
    return np.clip(np.stack([left, right], axis=1), -1.0, 1.0).astype(np.float32)


def media_seconds(clip: DemoClip) -> float:
    """Length of the clip's "video": its window plus a tail, or cut inside the window if truncated."""
    if clip.fault == "truncated":
        return clip.start + 0.35 * (clip.end - clip.start)
    return clip.end + 0.75


def encode_media(signal: np.ndarray, destination: Path, extension: str, sr: int = MEDIA_RATE) -> None:
    """Encode float32 stereo samples with ffmpeg into `destination` (atomically, bit-exact flags).

    Bit-exact muxing keeps the bytes identical across runs, so DVC sees an unchanged corpus.
    """
    codec = dict(MEDIA_FORMATS)[extension]
    with atomic_path(destination) as tmp:
        command = [
            ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "f32le", "-ar", str(sr), "-ac", "2", "-i", "pipe:0",
            *codec, "-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
            "-f", {"m4a": "mp4"}.get(extension, extension), subprocess_path(tmp),
        ]
        result = subprocess.run(command, input=np.ascontiguousarray(signal, dtype="<f4").tobytes(), capture_output=True, check=False)
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise FatError(f"{destination}: ffmpeg could not encode the demo clip ({message[-1] if message else 'no output'})")


def write_media(clip: DemoClip, media_dir: Path) -> Path | None:
    """Write one clip's media file (or nothing for `missing`); return its path."""
    if clip.fault == "missing":
        return None
    path = media_dir / clip.ytid
    if clip.fault == "html":
        with atomic_path(path) as tmp:
            tmp.write_text(HTML_PAGE, encoding="utf-8")
        return path
    encode_media(synthesise(clip, media_seconds(clip)), path, clip.extension)
    return path


# --------------------------------------------------------------------------- CSVs


def segments_csv_text(clips: list[DemoClip], created: str = "by fat demo-corpus") -> str:
    """A raw segment CSV as Google publishes them: three comment lines, then quoted MID lists."""
    mids = {mid for clip in clips for mid in clip.mids}
    positives = sum(len(clip.classes) for clip in clips)
    lines = [
        f"# Segments csv created {created}",
        f"# num_ytids={len(clips)}, num_segs={len(clips)}, num_unique_labels={len(mids)}, num_positive_labels={positives}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    lines += [f'{clip.ytid}, {clip.start:.3f}, {clip.end:.3f}, "{",".join(clip.mids)}"' for clip in clips]
    return "\n".join(lines) + "\n"


def clips_csv_text(clips: list[DemoClip]) -> str:
    """`clips.csv`: every clip's split, id, container, labels (MIDs) and fault ('' for a good clip)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["split", "ytid", "container", "labels", "fault"])
    writer.writerows([c.split, c.ytid, c.extension, ",".join(c.mids), c.fault or ""] for c in clips)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the whole corpus


def build_corpus(out_dir: str | Path, settings: DemoSettings, workers: int = 2) -> list[DemoClip]:
    """Write the demo corpus under `out_dir` (see the module docstring); return the clips.

    Generation is deterministic per settings, so a rerun rewrites the same bytes.
    """
    from concurrent.futures import ThreadPoolExecutor

    out_dir = Path(out_dir)
    clips = plan_corpus(settings)
    media_dir = out_dir / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lambda clip: write_media(clip, media_dir), clips))
    csv_dir = out_dir / "audioset"
    write_text_atomic(csv_dir / LABEL_CSV_NAME, label_csv_text([c.mid for c in DEMO_CLASSES], [c.name for c in DEMO_CLASSES]))
    for split in (TRAIN_SPLIT, EVAL_SPLIT):
        write_text_atomic(csv_dir / f"{split}_segments.csv", segments_csv_text([c for c in clips if c.split == split]))
    write_text_atomic(out_dir / "clips.csv", clips_csv_text(clips))
    log.info(
        "demo corpus: %d train + %d eval clips (%d broken on purpose, listed in %s), %d classes → %s",
        settings.train_clips, settings.eval_clips, sum(1 for c in clips if c.fault), out_dir / "clips.csv",
        len(DEMO_CLASSES), out_dir,
    )
    return clips


SKIPPED_WHY = ("These params (demo.skip: true) run the pipeline on real AudioSet, so no demo corpus was made.\n"
               "The folder exists because the same dvc.yaml serves the demo and the real presets.")
