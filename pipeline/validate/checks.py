"""The checks of one audio file: each failure has a reason code, the thresholds are options.

A file is opened once: the header (soundfile) answers rate, channels and length without
reading samples; only files that pass those are read, once, in their stored integer type, and
every content statistic is one vectorised numpy pass over that buffer. The first failing check
names the file's reason; `detail` says what was measured against which threshold.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import soundfile as sf

from pipeline.settings import option

# Reason codes in the order they are checked; the summary lists every one (zeros included).
REASONS: dict[str, str] = {
    "duplicate-id": "the id appeared earlier in the input (the first one is checked)",
    "no-labels": "the clip has no labels",
    "unknown-label": "a label MID is not in the label CSV",
    "missing": "no audio file at the path",
    "unreadable": "not decodable audio: zero bytes, HTML or text, truncated header, unknown format",
    "sample-rate": "the file's sample rate is not --sample-rate",
    "channels": "the file's channel count is not --channels",
    "too-short": "shorter than its window by more than --length-tolerance, or than --min-seconds",
    "too-long": "longer than its window (or --max-seconds) by more than --length-tolerance",
    "non-finite": "NaN or infinite samples (float files)",
    "silent": "digital silence or near-silence: peak below --silence-peak-dbfs or RMS below --silence-rms-dbfs",
    "dc": "a (near) constant level: AC RMS below --silence-rms-dbfs with a DC level above it, or |DC| above --max-dc-offset",
    "clipping": "more than --max-clipped-fraction of the samples at or beyond --clip-level of full scale",
}

# Integer subtypes read in their own width (no float conversion of the whole file); full scale.
_INT16_SUBTYPES = frozenset({"PCM_16", "PCM_S8", "PCM_U8"})
_INT32_SUBTYPES = frozenset({"PCM_24", "PCM_32"})
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})


CHECKS = "thresholds (reason codes: docs/architecture.md)"


@dataclass(frozen=True, kw_only=True)
class SignalChecks:
    """The sample-level thresholds, the same options in `fat validate` and `fat prepare`."""

    silence_peak_dbfs: float = option(-60.0, "a clip whose peak is below this is silent", unit="dBFS", group=CHECKS)
    silence_rms_dbfs: float = option(-70.0, "a clip whose RMS is below this is silent", unit="dBFS", group=CHECKS)
    clip_level: float = option(0.999, "a sample at or beyond this fraction of full scale counts as clipped (0..1]",
                               group=CHECKS)
    max_clipped_fraction: float = option(0.02, "reject when more than this fraction of samples is clipped (0..1)",
                                         group=CHECKS)
    max_dc_offset: float = option(0.25, "reject when |mean| exceeds this fraction of full scale (0..1)", group=CHECKS)


@dataclass(frozen=True, kw_only=True)
class Thresholds(SignalChecks):
    """What a good clip is. Defaults: AudioSet clips as `fat download` writes them (`fat validate`'s options)."""

    sample_rate: int | None = option(32000, "required sample rate", unit="Hz", group=CHECKS)  # None: any
    channels: int | None = option(1, "required channel count", group=CHECKS)  # None: any
    length_tolerance: float = option(
        0.05, "allowed difference from the clip's window (metadata end − start)", unit="s", group=CHECKS)
    min_seconds: float = option(0.5, "absolute minimum length", unit="s", group=CHECKS)
    max_seconds: float = option(10.0, "absolute maximum length (plus --length-tolerance)", unit="s", group=CHECKS)

    def check(self) -> None:
        """ValueError for settings no clip could meet (the CLI turns it into a FatError)."""
        if (self.sample_rate is not None and self.sample_rate <= 0) or (self.channels is not None and self.channels <= 0):
            raise ValueError("sample rate and channels must be positive")
        if not (0 <= self.length_tolerance and 0 <= self.min_seconds <= self.max_seconds):
            raise ValueError("need length_tolerance ≥ 0 and 0 ≤ min_seconds ≤ max_seconds")
        if not (0 < self.clip_level <= 1 and 0 <= self.max_clipped_fraction <= 1 and 0 <= self.max_dc_offset <= 1):
            raise ValueError("clip_level must be in (0, 1], max_clipped_fraction and max_dc_offset in [0, 1]")


class Verdict(NamedTuple):
    """A file's result: reason '' when it passes; seconds of audio when known (else 0)."""

    reason: str
    detail: str
    seconds: float


PASS = ""


def dbfs(value: float) -> float:
    """20·log10 of a full-scale fraction; -inf for 0."""
    return 20.0 * math.log10(value) if value > 0 else -math.inf


def check_file(path: str, window_seconds: float, limits: Thresholds) -> Verdict:
    """Check one file. `window_seconds` is the clip's expected length (NaN: only the absolute bounds)."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return Verdict("missing", "no such file", 0.0)
    except OSError as exc:
        return Verdict("unreadable", f"cannot stat: {exc.strerror}", 0.0)
    if size == 0:
        return Verdict("unreadable", "zero bytes", 0.0)
    try:
        handle = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        return _check_other_format(path, window_seconds, limits, _message(exc))
    with handle:
        rate, channels, frames, subtype = handle.samplerate, handle.channels, handle.frames, handle.subtype
        header = _check_header(rate, channels, frames, window_seconds, limits)
        if header is not None:
            return header
        if subtype in _INT16_SUBTYPES:
            dtype, full_scale = np.int16, 32768.0
        elif subtype in _INT32_SUBTYPES:
            dtype, full_scale = np.int32, 2147483648.0
        else:
            dtype, full_scale = np.float32, 1.0
        buffer = _scratch(dtype, frames * channels).reshape(frames, channels)
        try:
            samples = handle.read(frames, dtype=np.dtype(dtype).name, always_2d=True, out=buffer)
        except (sf.LibsndfileError, RuntimeError) as exc:  # e.g. a FLAC that lost sync mid-stream
            return Verdict("unreadable", f"decoding failed: {_message(exc)}", 0.0)
    seconds = frames / rate
    if len(samples) != frames:
        return Verdict("unreadable", f"truncated: read {len(samples)} of {frames} frames", len(samples) / rate)
    return check_samples(samples, full_scale, seconds, limits, floating=subtype not in _INT16_SUBTYPES | _INT32_SUBTYPES)


def _check_header(rate: int, channels: int, frames: int, window_seconds: float, limits: Thresholds) -> Verdict | None:
    seconds = frames / rate if rate else 0.0
    if limits.sample_rate is not None and rate != limits.sample_rate:
        return Verdict("sample-rate", f"{rate} Hz, expected {limits.sample_rate} Hz", seconds)
    if limits.channels is not None and channels != limits.channels:
        return Verdict("channels", f"{channels} channels, expected {limits.channels}", seconds)
    tolerance = round(limits.length_tolerance * rate)
    if frames < round(limits.min_seconds * rate):
        return Verdict("too-short", f"{seconds:.3f} s, below the minimum of {limits.min_seconds:g} s", seconds)
    if frames > round(limits.max_seconds * rate) + tolerance:
        return Verdict("too-long", f"{seconds:.3f} s, above the maximum of {limits.max_seconds:g} s "
                                   f"(+{limits.length_tolerance:g} s)", seconds)
    if not math.isnan(window_seconds):
        expected = round(window_seconds * rate)
        if frames < expected - tolerance:
            return Verdict("too-short", f"{seconds:.3f} s of a {window_seconds:g} s window "
                                        f"(tolerance {limits.length_tolerance:g} s)", seconds)
        if frames > expected + tolerance:
            return Verdict("too-long", f"{seconds:.3f} s for a {window_seconds:g} s window "
                                       f"(tolerance {limits.length_tolerance:g} s)", seconds)
    return None


def check_samples(samples: np.ndarray, full_scale: float, seconds: float, limits: Thresholds,
                  floating: bool = True) -> Verdict:
    """Content checks on the decoded samples (any shape), scaled by `full_scale`."""
    flat = samples.reshape(-1)
    count = flat.size
    if count == 0:
        return Verdict("too-short", "no samples", 0.0)
    if floating and not np.isfinite(flat).all():
        bad = count - int(np.count_nonzero(np.isfinite(flat)))
        return Verdict("non-finite", f"{bad} of {count} samples are NaN or infinite", seconds)
    low, high = float(flat.min()), float(flat.max())
    peak = max(-low, high) / full_scale
    mean = float(flat.sum(dtype=np.float64 if floating else np.int64)) / count / full_scale
    if flat.dtype == np.float32:
        as_float = flat
    else:
        as_float = _scratch(np.float32, count, slot=1)
        np.copyto(as_float, flat, casting="unsafe")
    mean_square = float(np.dot(as_float, as_float)) / count / (full_scale * full_scale)
    rms = math.sqrt(mean_square)
    ac_rms = math.sqrt(max(mean_square - mean * mean, 0.0))
    if peak < 10 ** (limits.silence_peak_dbfs / 20) or rms < 10 ** (limits.silence_rms_dbfs / 20):
        what = "digital silence" if peak == 0 else f"peak {dbfs(peak):.1f} dBFS, RMS {dbfs(rms):.1f} dBFS"
        return Verdict("silent", f"{what} (thresholds: peak {limits.silence_peak_dbfs:g}, "
                                 f"RMS {limits.silence_rms_dbfs:g} dBFS)", seconds)
    floor = 10 ** (limits.silence_rms_dbfs / 20)
    if (ac_rms < floor <= abs(mean)) or abs(mean) > limits.max_dc_offset:
        return Verdict("dc", f"DC level {mean:+.4f} of full scale, AC RMS {dbfs(ac_rms):.1f} dBFS "
                             f"(max offset {limits.max_dc_offset:g})", seconds)
    level = limits.clip_level * full_scale
    if not floating:
        level = math.ceil(level)
    clipped = 0
    if high >= level:  # most clips never reach the level: no pass needed
        clipped += int(np.count_nonzero(flat >= level))
    if low <= -level:
        clipped += int(np.count_nonzero(flat <= -level))
    if clipped > limits.max_clipped_fraction * count:
        return Verdict("clipping", f"{clipped / count:.2%} of samples at ≥ {limits.clip_level:g} of full scale "
                                   f"(max {limits.max_clipped_fraction:.2%})", seconds)
    return Verdict(PASS, "", seconds)


_SCRATCH: dict[tuple[int, str], np.ndarray] = {}


def _scratch(dtype: type, count: int, slot: int = 0) -> np.ndarray:
    """A reused per-process buffer of at least `count` items: a fresh 640 KB array per file costs
    more in page faults than the checks themselves. Callers never keep it past one file."""
    key = (slot, np.dtype(dtype).name)
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.size < count:
        buffer = np.empty(max(count, 1), dtype=dtype)
        _SCRATCH[key] = buffer
    return buffer[:count]


def _check_other_format(path: str, window_seconds: float, limits: Thresholds, sf_message: str) -> Verdict:
    """Files soundfile cannot open: say what they look like; real media (m4a, webm) go to ffmpeg."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    looks = sniff(head)
    if looks:
        return Verdict("unreadable", looks, 0.0)
    # Only binary non-text files reach ffmpeg: a text playlist could make it open other files or URLs.
    from pipeline.core.audio import read_audio
    from pipeline.core.errors import FatError

    try:
        audio, rate = read_audio(path, mono=False)
    except FatError as exc:
        return Verdict("unreadable", f"{sf_message}; ffmpeg: {str(exc).split(': ', 1)[-1]}", 0.0)
    header = _check_header(rate, audio.shape[1], audio.shape[0], window_seconds, limits)
    if header is not None:
        return header
    return check_samples(audio, 1.0, audio.shape[0] / rate, limits, floating=True)


def sniff(head: bytes) -> str:
    """A plain description of a non-audio file from its first bytes ('' when it may be media)."""
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in lowered[:256]:
        return "an HTML page, not audio"
    if head.startswith(b"RIFF") or head.startswith(b"RIFX"):
        return "truncated or corrupt WAV header" if len(head) < 44 else ""
    if lowered.startswith((b"{", b"[")) and _is_text(head):
        return "JSON text, not audio"
    if _is_text(head):
        return "text, not audio"
    return ""


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
        text = head[:exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _message(exc: BaseException) -> str:
    text = str(exc)
    # libsndfile: "Error opening '<path>': <what>" — keep the what; the path is in the report already.
    return text.split("': ", 1)[-1] if "': " in text else text
