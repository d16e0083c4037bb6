"""Audio I/O shared by every stage: decode any file to float32 mono at a chosen rate.

WAV/FLAC/OGG are read with soundfile (fast, no subprocess); anything else ffmpeg decodes
(m4a, webm, mp3, ...). torchaudio.load is not used: it needs torchcodec.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import FatError
from pipeline.core.ffmpeg import ffmpeg_binary
from pipeline.core.ids import subprocess_path


def read_audio(path: str | Path, sample_rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode `path` to float32 in [-1, 1]: shape (samples,) if mono else (samples, channels).

    With `sample_rate`, the audio is resampled to it; returns (audio, rate).
    """
    path = Path(path)
    if not path.is_file():
        raise FatError(f"{path}: no such audio file")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        audio, rate = _decode_with_ffmpeg(path)
    if audio.shape[0] == 0:  # nothing to score: padding it would pass silence off as the clip
        raise FatError(f"{path}: decodes to no samples")
    if mono:
        audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if sample_rate is not None and rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return np.ascontiguousarray(audio, dtype=np.float32), rate


def require_finite(audio: np.ndarray, path: str | Path) -> np.ndarray:
    """`audio` if every sample is finite; else a FatError naming the file."""
    if not np.isfinite(audio).all():
        raise FatError(f"{path}: the audio holds NaN or infinite samples")
    return audio


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode with ffmpeg to interleaved float32 at the file's own rate and channel count.

    The output is asked for with exactly the channel count read from the banner (`-ac`), so an
    unusual layout is mixed to that count rather than reshaped with the wrong width.
    """
    probe = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", subprocess_path(path)],
        capture_output=True, text=True, errors="replace", check=False,
    )
    rate, channels = _stream_format(probe.stderr)
    if rate is None:
        raise FatError(f"{path}: not a decodable audio file ({_last_line(probe.stderr)})")
    decoded = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", subprocess_path(path),
         "-map", "0:a:0", "-ac", str(channels), "-f", "f32le", "-acodec", "pcm_f32le", "-"],
        capture_output=True, check=False,
    )
    if decoded.returncode != 0:
        raise FatError(f"{path}: ffmpeg could not decode it ({_last_line(decoded.stderr.decode(errors='replace'))})")
    samples = np.frombuffer(decoded.stdout, dtype=np.float32).copy()
    return samples.reshape(-1, channels), rate


def _stream_format(ffmpeg_stderr: str) -> tuple[int | None, int]:
    """Sample rate and channel count of the first audio stream from ffmpeg's banner."""
    for line in ffmpeg_stderr.splitlines():
        if "Audio:" not in line:
            continue
        rate = re.search(r"(\d+) Hz", line)
        layout = re.search(r"Hz, ([^,]+)", line)
        if not rate:
            continue
        channels = _channels_from_layout(layout.group(1).strip() if layout else "mono")
        return int(rate.group(1)), channels
    return None, 1


def _channels_from_layout(layout: str) -> int:
    """ffmpeg's layout name → channel count ("5.1(side)" = 5 + 1); unknown names → 2 (ffmpeg mixes to it)."""
    named = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6, "octagonal": 8}
    if layout in named:
        return named[layout]
    if layout.endswith(" channels"):
        return int(layout.split()[0])
    numbered = re.match(r"(\d+)\.(\d)", layout)
    return int(numbered.group(1)) + int(numbered.group(2)) if numbered else 2


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited (sinc) resampling along the first axis with torchaudio's functional kernel."""
    if orig_rate == new_rate:
        return audio
    # torch is imported here, not at the top: `fat validate`'s workers decode audio with this
    # module and never resample, and should not pay torch's import time and memory.
    import torch

    from student.torchaudio_ops import resample as sinc_resample

    tensor = torch.from_numpy(np.ascontiguousarray(audio.T if audio.ndim == 2 else audio))
    out = sinc_resample(tensor, orig_rate, new_rate).numpy()
    return out.T if audio.ndim == 2 else out


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad or cut a mono waveform to exactly `length` samples."""
    if audio.shape[0] >= length:
        return audio[:length]
    return np.pad(audio, (0, length - audio.shape[0]))


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM WAV atomically (temp name + rename)."""
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
