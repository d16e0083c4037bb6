"""Fetch one clip: yt-dlp resolves the media, ffmpeg reads the window and writes mono PCM WAV.

Runs inside a pool worker process (see `pool`), which the runner kills when the clip overruns
its time limit, so nothing here needs to be interruptible by itself.

Two paths:
- section: the selected format is plain http(s). ffmpeg opens its URL with yt-dlp's headers and
  cookies, seeks to `start` (range requests) and decodes exactly `end - start` seconds straight
  to WAV. yt-dlp's own `download_ranges` would stream-copy the section (cuts on packet
  boundaries, a second decode pass) and ignores `socket_timeout` while ffmpeg reads.
- whole file: anything else (file:// URLs, which yt-dlp cannot section; fragmented
  protocols). yt-dlp downloads the whole file into the clip's temp folder, ffmpeg cuts it.
Either way the WAV is decoded and its length checked against the window before it is renamed
to `<ytid>.wav`; a short result is accepted only when the source itself ends early.

ffmpeg's failures are classified from facts, never from its wording (which changes between
versions): a read that decoded no audio at all means the source could not be opened as audio,
and the whole file is then fetched by yt-dlp, whose HTTP errors carry their status; a fetched
file of zero bytes is `failed/empty`, one ffmpeg decodes nothing from is `failed/not-media`.

One module, over the ~350-line guide, because the two fetch paths, the window cut and the
checks of its result are one procedure whose failure classification needs all of them; the
failure taxonomy itself lives in `failures`.
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

from pipeline.core.atomic import TEMP_MARKER
from pipeline.core.ffmpeg import ffmpeg_binary
from pipeline.core.ids import check_ytid, subprocess_path
from pipeline.download.failures import (
    FAILED, OK, UNAVAILABLE, classify, find_http_error, http_status_in, parse_retry_after,
)
from pipeline.settings import option

SECTION_PROTOCOLS = frozenset({"http", "https"})


@dataclass(frozen=True)
class ClipTask:
    ytid: str
    start: float
    end: float
    url: str
    out_dir: str
    sample_rate: int


@dataclass(frozen=True)
class FetchOptions:
    """Settings shared by every clip of a run (picklable: sent once to each worker). The fields with an
    `option` are `fat download` options; the command fills in the others (and makes --cookies absolute)."""

    socket_timeout: float = option(20.0, "network inactivity timeout", unit="s", above=0)
    http_retries: int = option(2, "yt-dlp's own retries of a failed request", minimum=0)
    length_tolerance: float = option(0.02, "allowed difference between the WAV's length and the window", unit="s",
                                     minimum=0)
    sections: bool = option(True, "read only the window from http(s) sources; --no-sections fetches whole files")
    audio_format: str = "bestaudio/best"
    cookies: str | None = option(None, "Netscape cookies.txt for yt-dlp (default: none)")
    proxy: str | None = option(None, "proxy URL for yt-dlp and ffmpeg (default: none)")
    js_runtimes: tuple[str, ...] = ()
    remote_components: tuple[str, ...] = option(
        (), "yt-dlp remote components it may fetch, e.g. ejs:github (default: none)", nargs="*", metavar="NAME")
    ffmpeg: str = ""  # the runner's choice, absolute; empty: pipeline.core.ffmpeg.ffmpeg_binary() in the worker


@dataclass
class ClipResult:
    ytid: str
    status: str
    reason: str
    message: str = ""
    retry_after: float | None = None
    audio_seconds: float = 0.0
    wav_bytes: int = 0
    download_bytes: int = 0
    elapsed: float = 0.0
    cpu_self: float = 0.0
    cpu_children: float = 0.0
    mode: str = ""
    extra: dict = field(default_factory=dict)


class ClipFailure(Exception):
    """A classified failure of one clip (status, reason, raw message)."""

    def __init__(self, status: str, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.retry_after = status, reason, message, retry_after


def temp_dir_prefix(ytid: str) -> str:
    """Name prefix of a clip's work folder; contains TEMP_MARKER so leftovers are recognised."""
    return f".{ytid}{TEMP_MARKER}"


def fetch_clip(task: ClipTask, options: FetchOptions) -> ClipResult:
    """Download, convert and verify one clip; never raises for a clip-level failure."""
    started = time.monotonic()
    self_before, children_before = _cpu_times()
    work_dir: Path | None = None
    try:
        check_ytid(task.ytid, "clip")  # before the id names any path
        work_dir = Path(task.out_dir) / f"{temp_dir_prefix(task.ytid)}{os.getpid()}-{secrets.token_hex(3)}"
        work_dir.mkdir(parents=True)
        result = _fetch(task, options, work_dir)
    except ClipFailure as failure:
        result = ClipResult(task.ytid, failure.status, failure.reason, failure.message, retry_after=failure.retry_after)
    except Exception as exc:  # a bug or the machine (disk full): record it with its traceback, keep the worker
        import traceback

        trace = "".join(traceback.format_exception(exc)[-6:])
        result = ClipResult(task.ytid, FAILED, "error", f"{type(exc).__name__}: {exc}\n{trace}")
    finally:
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
    self_after, children_after = _cpu_times()
    result.elapsed = time.monotonic() - started
    result.cpu_self = self_after - self_before
    result.cpu_children = children_after - children_before
    return result


def _cpu_times() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _fetch(task: ClipTask, options: FetchOptions, work_dir: Path) -> ClipResult:
    import yt_dlp

    messages = _MessageLog()
    params = _ydl_params(task, options, work_dir, messages)
    try:
        with yt_dlp.YoutubeDL(params) as ydl:
            info = ydl.extract_info(task.url, download=False)
            if info is None:
                raise ClipFailure(FAILED, "error", messages.text() or "yt-dlp returned no information")
            fmt = _selected_format(info)
            duration = info.get("duration") if isinstance(info.get("duration"), (int, float)) else None
            if options.sections and str(fmt.get("protocol") or "") in SECTION_PROTOCOLS:
                try:
                    return _finish(task, options, work_dir, "section", fmt["url"],
                                   _http_input_options(ydl, fmt, info, options), duration, 0)
                except ClipFailure as failure:
                    if failure.reason != "not-media":
                        raise
                    # No audio came out: let yt-dlp fetch the whole file, which tells an HTTP error
                    # (with its status), zero bytes and a body that is not media apart.
            info = ydl.process_ie_result(info, download=True)
            source = _downloaded_file(info, work_dir)
    except yt_dlp.utils.DownloadError as exc:
        raise _failure_from_ytdlp(exc, messages) from None
    size = Path(source).stat().st_size
    if size == 0:
        raise ClipFailure(FAILED, "empty", f"the server sent zero bytes for {task.url}")
    return _finish(task, options, work_dir, "whole", source, {}, duration, size)


def _finish(task: ClipTask, options: FetchOptions, work_dir: Path, mode: str, source: str,
            input_options: dict, duration: float | None, download_bytes: int) -> ClipResult:
    """Cut and convert `source`, verify the WAV, and rename it to its final name."""
    wav = work_dir / "audio.wav"
    claim = _ffmpeg_window_to_wav(options.ffmpeg or ffmpeg_binary(), source, input_options, task, wav)
    duration = claim.length if claim.length is not None else duration
    audio_seconds = _verify_wav(wav, task, duration, options.length_tolerance, claim.overstated_by)
    final = Path(task.out_dir) / f"{task.ytid}.wav"
    with open(wav, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(wav, final)
    return ClipResult(task.ytid, OK, mode, "", audio_seconds=audio_seconds, wav_bytes=final.stat().st_size,
                      download_bytes=download_bytes, mode=mode)


class _MessageLog:
    """A yt-dlp logger that keeps warnings and errors (they are the raw failure message)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.lines.append(msg)

    def error(self, msg: str) -> None:
        self.lines.append(msg)

    def text(self) -> str:
        return "\n".join(self.lines)


def _ydl_params(task: ClipTask, options: FetchOptions, work_dir: Path, log: _MessageLog) -> dict:
    params: dict = {
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "logger": log,
        "format": options.audio_format,
        "outtmpl": {"default": str(work_dir.absolute() / "source.%(ext)s")},
        "paths": {"home": str(work_dir.absolute()), "temp": str(work_dir.absolute())},
        "socket_timeout": options.socket_timeout,
        "retries": options.http_retries,
        "fragment_retries": options.http_retries,
        "noplaylist": True,
        "overwrites": True,
        "updatetime": False,
        "color": {"stderr": "no_color", "stdout": "no_color"},
        # the same ffmpeg (and its own ffprobe, when it has one beside it) for yt-dlp's fix-ups
        "ffmpeg_location": options.ffmpeg or ffmpeg_binary(),
    }
    if task.url.startswith("file:"):
        params["enable_file_urls"] = True  # yt-dlp refuses file:// unless told (security default)
    if options.cookies:
        params["cookiefile"] = options.cookies
    if options.proxy:
        params["proxy"] = options.proxy
    if options.js_runtimes:
        params["js_runtimes"] = {name: {} for name in options.js_runtimes}
    if options.remote_components:
        params["remote_components"] = list(options.remote_components)
    return params


def _selected_format(info: dict) -> dict:
    """The format yt-dlp chose; with a merge of streams, the audio one."""
    requested = info.get("requested_formats")
    if requested:
        audio = [fmt for fmt in requested if fmt.get("acodec") not in (None, "none")]
        return (audio or requested)[0]
    return info


def _http_input_options(ydl, fmt: dict, info: dict, options: FetchOptions) -> dict:
    """ffmpeg input options carrying what yt-dlp would send: headers, cookies, proxy, timeout."""
    input_options: dict = {"rw_timeout": str(int(options.socket_timeout * 1_000_000)), "reconnect": "0"}
    headers = fmt.get("http_headers") or info.get("http_headers") or {}
    if headers:
        input_options["headers"] = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    cookies = ydl.cookiejar.get_cookies_for_url(fmt["url"])
    if cookies:
        input_options["cookies"] = "".join(
            f"{cookie.name}={cookie.value}; path={cookie.path}; domain={cookie.domain};\r\n" for cookie in cookies
        )
    if options.proxy:
        input_options["http_proxy"] = options.proxy
    return input_options


def _downloaded_file(info: dict, work_dir: Path) -> str:
    for download in info.get("requested_downloads") or ():
        path = download.get("filepath")
        if path and Path(path).is_file():
            return subprocess_path(path)
    candidates = [p for p in work_dir.glob("source.*") if p.is_file() and not p.name.endswith(".part")]
    if not candidates:
        raise ClipFailure(FAILED, "empty", "yt-dlp reported success but wrote no file")
    return subprocess_path(candidates[0])


def _failure_from_ytdlp(exc: Exception, messages: _MessageLog) -> ClipFailure:
    message = str(exc).strip() or messages.text()
    status_code, retry_after = find_http_error(exc)
    if status_code is None:
        status_code = http_status_in(message)
    status, reason = classify(message, status_code)
    return ClipFailure(status, reason, message, parse_retry_after(retry_after))


_DURATION = re.compile(r"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)(?:, start: (-?\d+(?:\.\d+)?))?")
_FRAMECRC_TIME_BASE = re.compile(r"^#tb 0: (\d+)/(\d+)\s*$", re.MULTILINE)


SEEK_MARGIN = 1.0  # seconds decoded before the window so that codec priming (AAC, Opus) settles


class FirstFrame(NamedTuple):
    """The first decoded audio frames on the container's clock (see `_first_frame`)."""

    time: float  # s: where the clock puts the first presented sample, the timeline's t = 0
    longest: float  # s: the longest of the first frames, about one codec frame


class Claim(NamedTuple):
    """What the source says about its length, on the timeline (see `_claimed_length`)."""

    length: float | None  # s from the first presented sample to the claimed end; None: no claim
    overstated_by: float  # s the claim may exceed the last presented sample without anything missing


def _ffmpeg_window_to_wav(binary: str, source: str, input_options: dict, task: ClipTask, wav: Path) -> Claim:
    """Decode [start, end) of `source`'s timeline to mono PCM-16 WAV; return the source's claimed length.

    AudioSet's seconds are positions on the player's timeline, whose t = 0 is the first presented
    sample of the audio. Containers put that sample at different times of their own clock: 0 for
    Opus in webm (the decoder drops its 6.5 ms pre-skip), AAC in mp4, Vorbis, FLAC and WAV, but
    25 ms for a LAME MP3 (1105 samples of encoder delay). ffmpeg's re-basing of that clock differs
    between versions (5.1 re-bases webm/Opus on its first packet, -7 ms; 9.0 on its first sample)
    and honours MP3's delay, so none of it is used: both passes run on the container's own clock
    (`-copyts`, `-seek_timestamp`), `_first_frame` measures where it puts the first presented
    sample, and the window is cut from `first + start` for `end - start`.

    The cut: a fast input seek to 1 s before the window, then a sample-exact `atrim` (seeking
    straight to the window drops up to one codec frame, ~21 ms of AAC). Times within the decoded
    stretch are counted in samples from its first frame (`asetpts=STARTPTS+N/SR/TB`), not taken
    from each packet: 5.1 stamps Opus frames with webm's whole-ms packet times, 0.5 ms off the
    samples, where 9.0 counts. So both versions cut the same samples, exactly those of a decode
    from the start for a window starting within 1 s; after a seek, within webm's 1 ms clock.
    The returned length is on the same timeline (`_claimed_length`), for `_verify_wav`.
    """
    import ffmpeg as ffmpeg_python

    first = _first_frame(binary, source, input_options)
    start = first.time + task.start
    seek = max(0.0, start - SEEK_MARGIN)
    input_options = {**input_options, "seek_timestamp": "1"}
    if seek > 0:
        input_options["ss"] = f"{seek:.6f}"
    audio = (
        ffmpeg_python.input(source, **input_options)["a:0"]
        .filter("asetpts", "STARTPTS+N/SR/TB")
        .filter("atrim", start=f"{start:.6f}", duration=f"{task.end - task.start:.6f}")
        .filter("asetpts", "PTS-STARTPTS")
    )
    output = audio.output(subprocess_path(wav), ac=1, ar=task.sample_rate, acodec="pcm_s16le", f="wav", map_metadata=-1)
    command = [binary, "-nostdin", "-hide_banner", "-nostats", "-y", "-copyts", *output.get_args()]
    process = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                             check=False)
    if process.returncode != 0 or not wav.is_file():
        raise _ffmpeg_failure(process.returncode, _decoded_frames(wav), _ffmpeg_error(process.stderr))
    return _claimed_length(process.stderr, first)


def _first_frame(binary: str, source: str, input_options: dict) -> FirstFrame:
    """Where the container's clock puts the first sample a player presents (the timeline's t = 0).

    Measured, not read from ffmpeg's description of the input (whose `start:` is the first
    packet's time in 5.1 and the first sample's in 9.0 for webm/Opus): two audio frames are decoded
    on the container's clock (`-copyts`), so the decoder has already dropped what the codec
    says is not presented (MP3 encoder delay, Opus pre-skip, an mp4 edit list), and its
    timestamps come back through the `framecrc` muxer, ffmpeg's machine-readable frame list
    (its regression-test format: `#tb` time base, then stream, dts, pts, duration, size, CRC).
    No frame decoded means no audio could be read: the same `not-media` as an empty cut.
    The longer frame's duration is about one codec frame (1152 samples of MP3, 1024 of AAC).
    """
    options = [arg for key, value in input_options.items() for arg in (f"-{key}", str(value))]
    command = [binary, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-copyts", *options,
               "-i", source, "-map", "0:a:0", "-frames:a", "2", "-c:a", "pcm_s16le", "-f", "framecrc", "-"]
    process = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                             check=False)
    time_base = _FRAMECRC_TIME_BASE.search(process.stdout)
    frames = [line.split(",") for line in process.stdout.splitlines() if line.strip() and not line.startswith("#")]
    if process.returncode != 0 or time_base is None or not frames or min(len(frame) for frame in frames) < 4:
        raise _ffmpeg_failure(process.returncode, 0, _ffmpeg_error(process.stderr))
    tick = Fraction(int(time_base.group(1)), int(time_base.group(2)))
    return FirstFrame(float(int(frames[0][2]) * tick), float(max(int(frame[3]) for frame in frames) * tick))


def _ffmpeg_failure(returncode: int, frames: int, message: str) -> ClipFailure:
    """Why ffmpeg failed, from what it did (exit status, samples written), never from its wording.

    No audio at all: it could not open the source as audio (an HTTP error, zero bytes, a page that
    is not media, no audio stream); `_fetch` then finds out which by fetching the whole file.
    Killed by a signal, or audio then an error: ffmpeg itself failed.
    """
    text = f"ffmpeg exit {returncode}: {message}"
    if returncode < 0:
        return ClipFailure(FAILED, "ffmpeg", f"ffmpeg was killed by signal {-returncode}: {message}")
    if frames == 0:
        return ClipFailure(FAILED, "not-media", text)
    return ClipFailure(FAILED, "ffmpeg", text)


def _decoded_frames(wav: Path) -> int:
    """Samples in what ffmpeg wrote before it failed (0 when it wrote nothing readable)."""
    import soundfile as sf

    if not wav.is_file():
        return 0
    try:
        return sf.info(str(wav)).frames
    except (sf.LibsndfileError, RuntimeError):
        return 0


def _claimed_length(stderr: str, first: FirstFrame) -> Claim:
    """How long the source says it lasts, measured on the timeline (from its first presented sample).

    The one place ffmpeg's wording is read: its input summary ("Duration: 00:00:12.01, start:
    0.025057") has kept this form across versions, and without it a short end-of-video window is
    only `failed/truncated` (retried), never wrongly accepted. ffmpeg counts that duration from
    the container's earliest timestamp (`start`, the first packet: -7 ms for Opus in 5.1), not
    from the first presented sample, so the claimed end is moved onto the timeline; a summary
    without `start` (WAV) counts from the first sample.

    A claim may count whole codec frames, priming included: 5.1's MP3 demuxer claims 2.80 s for
    a 2.75 s LAME file (its 1105 samples of delay and 884 of padding), which 9.0 claims exactly.
    So the claim is allowed to exceed what is there by the priming (the first sample's time,
    when positive) plus one codec frame; a transfer cut shorter than that is beyond telling.
    """
    overstated_by = max(first.time, 0.0) + first.longest
    match = _DURATION.search(stderr)
    if not match:
        return Claim(None, overstated_by)
    hours, minutes, seconds, start = match.groups()
    duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return Claim(duration if start is None else float(start) + duration - first.time, overstated_by)


def _ffmpeg_error(stderr: str) -> str:
    """The lines of ffmpeg's output that say what went wrong (not its banner)."""
    noise = ("Input #", "Output #", "Stream #", "Duration:", "Metadata:", "Stream mapping:", "Press [q]", "encoder", "handler_name", "  ")
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith(noise)]
    return " | ".join(lines[-4:]) if lines else "no output"


def _verify_wav(wav: Path, task: ClipTask, duration: float | None, tolerance: float,
                overstated_by: float = 0.0) -> float:
    """Decode the written WAV and check format and length; return its length in seconds.

    `duration` is the source's claimed length on the window's timeline; a window reaching past it
    may come out shorter, down to where the claim could really end (`overstated_by` before it).
    """
    import soundfile as sf

    try:
        audio, rate = sf.read(str(wav), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ClipFailure(FAILED, "ffmpeg", f"the written WAV does not decode: {exc}") from None
    if rate != task.sample_rate or audio.shape[1] != 1:
        raise ClipFailure(FAILED, "ffmpeg", f"the written WAV is {rate} Hz with {audio.shape[1]} channels")
    length = audio.shape[0] / rate
    window = task.end - task.start
    if duration is not None and task.start >= duration - tolerance - (overstated_by if length == 0 else 0.0):
        raise ClipFailure(UNAVAILABLE, "window-outside-video",
                          f"the window starts at {task.start:g} s but the video lasts {duration:.3f} s")
    expected = window if duration is None else min(task.end, duration) - task.start
    shortest = window if duration is None else min(task.end, duration - overstated_by) - task.start
    if length == 0:
        known = "duration unknown" if duration is None else f"lasts {duration:.3f} s"
        raise ClipFailure(FAILED, "truncated", f"no audio in the window {task.start:g}–{task.end:g} s (source {known})")
    if length < shortest - tolerance:
        known = "duration unknown" if duration is None else f"the source claims {duration:.3f} s"
        raise ClipFailure(FAILED, "truncated", f"got {length:.3f} s of audio, expected {expected:.3f} s ({known})")
    if length > window + tolerance:
        raise ClipFailure(FAILED, "ffmpeg", f"got {length:.3f} s of audio for a {window:.3f} s window")
    return length
