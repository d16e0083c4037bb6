"""Run a download: plan from metadata + status store, drive the pool, record every outcome.

The runner is the only writer of the status store. It decides what a rerun does (skip intact
ok clips, retry failed and rate-limited ones, skip unavailable ones unless asked), applies the
global back-off, enforces the per-clip time limit through the pool, and stops promptly and
cleanly on SIGINT / SIGTERM: in-flight clips are killed, their temporary files removed, and their
status rows left as they were, so the next run simply picks them up again.

One module, over the ~350-line guide, because planning, dispatching, recording and the stop
sequence share one piece of state (the in-flight table and the status store's single writer);
splitting them would pass that state through every call.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import logging
import resource
import shutil
import signal
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.atomic import TEMP_MARKER, write_json_atomic, write_text_atomic
from pipeline.core.errors import FatError
from pipeline.download.backoff import GlobalBackoff
from pipeline.download.clip import ClipResult, ClipTask, FetchOptions, temp_dir_prefix
from pipeline.download.environment import clip_url
from pipeline.download.failures import FAILED, OK, RATE_LIMITED, STATUSES, UNAVAILABLE
from pipeline.download.pool import KillablePool, wait_for_orphans
from pipeline.download.settings import DownloadSettings
from pipeline.download.status import StatusRow, StatusStore, now_iso

log = logging.getLogger(__name__)

PENDING = "pending"
EXIT_RATE_LIMITED = 3  # the run stopped early because the source keeps rate-limiting


@dataclass(frozen=True)
class Clip:
    ytid: str
    start: float
    end: float


@dataclass
class DownloadConfig:
    """One run: its settings, the clips they select, and what the command resolved from them."""

    settings: DownloadSettings
    clips: list[Clip]
    url_template: str  # --url-template, or YouTube's
    fetch: FetchOptions  # settings.fetch completed (JS runtimes, ffmpeg, absolute cookies path)
    orphan_wait: float = 10.0


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    attempted: int = 0
    outcomes: Counter = field(default_factory=Counter)
    download_bytes: int = 0
    cpu_workers: float = 0.0
    cpu_ffmpeg: float = 0.0
    skipped_intact: int = 0
    skipped_unavailable: int = 0
    found_on_disk: int = 0
    interrupted_by: str = ""
    gave_up: str = ""


def select_shard(clips: list[Clip], shard: tuple[int, int] | None) -> list[Clip]:
    """The clips of shard i of n, by a stable hash of the id (independent of the CSV's order)."""
    if shard is None:
        return clips
    index, count = shard
    return [clip for clip in clips if zlib.crc32(clip.ytid.encode()) % count == index]


def run_download(config: DownloadConfig) -> tuple[int, dict]:
    """Download every clip of `config`; return (exit code, summary)."""
    config.settings.audio_dir.mkdir(parents=True, exist_ok=True)
    config.settings.manifest_dir.mkdir(parents=True, exist_ok=True)
    run_lock = _exclusive_lock(config.settings.manifest_dir / f".{config.settings.stem}.run.lock", config.settings.store_path)
    workers_lock = config.settings.manifest_dir / f".{config.settings.stem}.workers.lock"
    try:
        if not wait_for_orphans(workers_lock, config.orphan_wait):
            raise FatError(f"workers of an earlier run on {config.settings.store_path} are still alive after "
                           f"{config.orphan_wait:g} s; wait for them to end and rerun")
        _remove_stray_temp_files(config.settings.audio_dir, {clip.ytid for clip in config.clips})
        with StatusStore(config.settings.store_path) as store:
            _check_settings(store, config)
            stats = RunStats()
            todo = _plan(config, store, stats)
            if todo:
                _drive(config, store, todo, stats, workers_lock)
            summary = _summarise(config, store, stats)
            _write_table(config, store)
        write_json_atomic(config.settings.summary_path, summary)
    finally:
        run_lock.close()
    _log_summary(config, summary)
    if stats.interrupted_by:
        return 128 + signal.Signals[stats.interrupted_by].value, summary
    if stats.gave_up:
        return EXIT_RATE_LIMITED, summary
    return 0, summary


# ---------------------------------------------------------------------- planning


def _exclusive_lock(path: Path, store: Path):
    handle = open(path, "a+")  # noqa: SIM115 - closed by the caller
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FatError(f"another `fat download` is already writing {store}") from None
    return handle


def _remove_stray_temp_files(out_dir: Path, ytids: set[str]) -> None:
    """Delete work folders and half-written files of clips of this run left by a crash."""
    for entry in out_dir.iterdir():
        name = entry.name
        if not name.startswith(".") or TEMP_MARKER not in name:
            continue
        ytid = name[1:name.index(TEMP_MARKER)]
        if ytid not in ytids:
            continue  # another shard's (possibly live) work: not ours to touch
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _check_settings(store: StatusStore, config: DownloadConfig) -> None:
    recorded = store.setting("sample_rate")
    if recorded is not None and int(recorded) != config.settings.sample_rate:
        raise FatError(f"{config.settings.store_path}: the clips there were written at {recorded} Hz, not "
                       f"--sample-rate {config.settings.sample_rate}; use another --out-dir and --manifest-dir")
    store.set_setting("sample_rate", str(config.settings.sample_rate))
    store.set_setting("split", config.settings.split)


def _plan(config: DownloadConfig, store: StatusStore, stats: RunStats) -> list[Clip]:
    """Which clips this run fetches; ok clips whose file is intact are skipped."""
    rows = store.rows()
    todo: list[Clip] = []
    found: list[StatusRow] = []
    for clip in config.clips:
        row = rows.get(clip.ytid)
        wav = config.settings.audio_dir / f"{clip.ytid}.wav"
        same_window = row is not None and (row.start_seconds, row.end_seconds) == (clip.start, clip.end)
        if row is not None and row.status == OK and same_window and _intact(wav, row.wav_bytes):
            stats.skipped_intact += 1
            continue
        if row is not None and row.status == UNAVAILABLE and same_window and not config.settings.retry_unavailable:
            stats.skipped_unavailable += 1
            continue
        if (row is None or (row.status != OK and same_window)) and wav.is_file():
            # The WAV was renamed into place but the run died before recording it.
            recovered = _recover(wav, clip, config.settings.sample_rate, row, config.fetch.length_tolerance)
            if recovered is not None:
                found.append(recovered)
                continue
        todo.append(clip)
    if found:
        store.record_many(found)
        stats.found_on_disk = len(found)
    return todo


def _intact(wav: Path, expected_bytes: int) -> bool:
    try:
        return wav.stat().st_size == expected_bytes and expected_bytes > 44
    except FileNotFoundError:
        return False


def _recover(wav: Path, clip: Clip, sample_rate: int, row: StatusRow | None, tolerance: float) -> StatusRow | None:
    """An ok row for a WAV that is complete for its window, else None (it will be fetched again).

    Strict: the full window length (a legitimately short end-of-video clip is simply fetched again).
    """
    import soundfile as sf

    try:
        info = sf.info(str(wav))
    except (sf.LibsndfileError, RuntimeError):
        return None
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if info.samplerate != sample_rate or info.channels != 1 or abs(seconds - (clip.end - clip.start)) > tolerance:
        return None
    return StatusRow(clip.ytid, OK, "found-on-disk", "", (row.attempts if row else 0), now_iso(),
                     clip.start, clip.end, seconds, wav.stat().st_size, 0, 0.0)


# ---------------------------------------------------------------------- the loop


class _StopFlag:
    def __init__(self) -> None:
        self.signal_name = ""

    def __call__(self, signum: int, frame) -> None:
        self.signal_name = signal.Signals(signum).name


class DispatchLoop:
    """What is queued and in flight, the global back-off, and what each result does to them.

    Results are always read before clips are started: a result that came back while the runner
    was busy (recording another clip, say) may be a 429, and a clip started before reading it
    would reach the rate-limited source before the pause.
    """

    def __init__(self, config: DownloadConfig, store: StatusStore, todo: list[Clip], stats: RunStats,
                 pool: KillablePool, bar) -> None:  # noqa: ANN001 - a tqdm bar (tqdm is imported by _drive)
        self.config, self.store, self.stats, self.pool, self.bar = config, store, stats, pool, bar
        self.queue: deque[Clip] = deque(todo)
        self.clips = {clip.ytid: clip for clip in todo}
        self.run_attempts: Counter = Counter()
        settings = config.settings
        self.backoff = GlobalBackoff(settings.backoff_base, settings.max_backoff, settings.max_retries)
        self.next_start = 0.0

    @property
    def running(self) -> bool:
        return bool(self.queue or self.pool.busy())

    def dispatch(self) -> None:
        """Start queued clips on idle workers while the back-off and --sleep-between allow it,
        reading the results that already arrived before each start."""
        while self.queue:
            self.settle(self.pool.poll(0.0))
            now = time.monotonic()
            idle = self.pool.idle()
            if not self.queue or not idle or self.backoff.paused(now) or now < self.next_start:
                return
            clip = self.queue.popleft()
            self.run_attempts[clip.ytid] += 1
            self.stats.attempted += 1
            settings = self.config.settings
            self.pool.submit(idle[0], ClipTask(clip.ytid, clip.start, clip.end,
                                               clip_url(self.config.url_template, clip.ytid),
                                               str(settings.audio_dir), settings.sample_rate))
            self.next_start = now + settings.sleep_between

    def wait(self) -> None:
        """Wait for results until a deadline, the end of a pause or the next allowed start (≤ 0.2 s), and record them."""
        self.settle(self.pool.poll(_poll_timeout(self.pool, self.queue, self.backoff, self.next_start)))

    def settle(self, events: list) -> None:
        """Record each result; a rate limit pauses every worker and puts its clip back at the front."""
        settings = self.config.settings
        for event in events:
            clip = self.clips[event.task.ytid]
            result = _result_of(event)
            self.stats.cpu_workers += result.cpu_self
            self.stats.cpu_ffmpeg += result.cpu_children
            self.stats.download_bytes += result.download_bytes
            if event.kind != "done":
                _remove_clip_temp(settings.audio_dir, clip.ytid)
            final = True
            if result.status == RATE_LIMITED:
                pause = self.backoff.hit(time.monotonic(), result.retry_after)
                if self.run_attempts[clip.ytid] <= settings.max_retries and not self.backoff.gave_up:
                    self.queue.appendleft(clip)
                    final = False
                    log.info("%s: rate limited (%s); all workers pause %.1f s", clip.ytid, result.reason, pause)
            elif result.status == OK:
                self.backoff.success()
            _record(self.store, clip, result)
            if final:
                self.stats.outcomes[(result.status, result.reason)] += 1
                self.bar.update(1)
                self.bar.set_postfix(_postfix(self.stats), refresh=False)
        if self.backoff.gave_up and not self.stats.gave_up:
            self.stats.gave_up = self.backoff.gave_up_reason
            log.warning("stopping: %s; %d clip(s) left for a later run (try --cookies, --proxy, "
                        "--sleep-between)", self.backoff.gave_up_reason, len(self.queue))
            self.queue.clear()


def _drive(config: DownloadConfig, store: StatusStore, todo: list[Clip], stats: RunStats, workers_lock: Path) -> None:
    from tqdm import tqdm

    stop = _StopFlag()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=len(todo), unit="clip", desc=f"download {config.settings.split}", dynamic_ncols=True,
               disable=(None if config.settings.progress is None else not config.settings.progress), smoothing=0.05)
    pool = KillablePool(min(config.settings.workers, len(todo)), config.fetch, workers_lock, config.settings.clip_timeout,
                        stopping=lambda: bool(stop.signal_name))
    loop = DispatchLoop(config, store, todo, stats, pool, bar)
    try:
        while loop.running and not stop.signal_name:
            loop.dispatch()
            loop.wait()
        if stop.signal_name:
            stats.interrupted_by = stop.signal_name
            for task in pool.kill_busy():
                _remove_clip_temp(config.settings.audio_dir, task.ytid)
            log.warning("%s: stopped; clips in flight were abandoned and keep their previous status",
                        stop.signal_name)
    finally:
        pool.close()
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _poll_timeout(pool: KillablePool, queue: deque, backoff: GlobalBackoff, next_start: float) -> float:
    """How long to wait for results: until the next deadline, the end of a pause, or the next
    allowed start, whichever comes first (at most 0.2 s, so that signals are seen promptly)."""
    now = time.monotonic()
    wake = pool.next_deadline()
    if queue and pool.idle():
        wake = min(wake, backoff.resume_at if backoff.paused(now) else next_start)
    return min(0.2, max(0.0, wake - now))


def _result_of(event) -> ClipResult:
    if event.kind == "done":
        return event.result
    if event.kind == "timeout":
        return ClipResult(event.task.ytid, FAILED, "timeout", event.detail, elapsed=event.elapsed)
    return ClipResult(event.task.ytid, FAILED, "worker-crash", event.detail, elapsed=event.elapsed)


def _record(store: StatusStore, clip: Clip, result: ClipResult) -> None:
    previous = store.get(clip.ytid)
    store.record(StatusRow(
        clip.ytid, result.status, result.reason, result.message[:4000], (previous.attempts if previous else 0) + 1,
        now_iso(), clip.start, clip.end, result.audio_seconds, result.wav_bytes, result.download_bytes, result.elapsed,
    ))


def _remove_clip_temp(out_dir: Path, ytid: str) -> None:
    for entry in out_dir.glob(f"{temp_dir_prefix(ytid)}*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _postfix(stats: RunStats) -> dict[str, int]:
    by_status = Counter()
    for (status, _), count in stats.outcomes.items():
        by_status[status] += count
    return {"ok": by_status[OK], "unavail": by_status[UNAVAILABLE], "failed": by_status[FAILED], "rate": by_status[RATE_LIMITED]}


# ---------------------------------------------------------------------- reporting


def _summarise(config: DownloadConfig, store: StatusStore, stats: RunStats) -> dict:
    rows = store.rows()
    counts = Counter()
    reasons = Counter()
    wav_bytes = 0
    audio_seconds = 0.0
    for clip in config.clips:
        row = rows.get(clip.ytid)
        if row is None:
            counts[PENDING] += 1
            continue
        counts[row.status] += 1
        if row.status != OK:
            reasons[f"{row.status}/{row.reason}"] += 1
        else:
            wav_bytes += row.wav_bytes
            audio_seconds += row.audio_seconds
    own = resource.getrusage(resource.RUSAGE_SELF)
    this_run = Counter()
    for (status, _), count in stats.outcomes.items():
        this_run[status] += count
    attempted_ok = this_run[OK]
    return {
        "split": config.settings.split,
        "shard": f"{config.settings.shard[0]}/{config.settings.shard[1]}" if config.settings.shard else None,
        "clips": len(config.clips),
        "status": {name: counts[name] for name in (*STATUSES, PENDING)},
        "reasons": dict(sorted(reasons.items())),
        "bytes": wav_bytes,
        "audio_seconds": round(audio_seconds, 3),
        "seconds": round(time.monotonic() - stats.started, 3),
        "run": {
            "attempts": stats.attempted,
            "finished": dict(this_run),
            "skipped_intact": stats.skipped_intact,
            "skipped_unavailable": stats.skipped_unavailable,
            "found_on_disk": stats.found_on_disk,
            "download_bytes": stats.download_bytes,
            "clips_per_second": round(attempted_ok / max(1e-9, time.monotonic() - stats.started), 3),
            "cpu_seconds": {
                "runner": round(own.ru_utime + own.ru_stime, 3),
                "workers": round(stats.cpu_workers, 3),
                "ffmpeg": round(stats.cpu_ffmpeg, 3),
            },
            "interrupted_by": stats.interrupted_by or None,
            "gave_up": stats.gave_up or None,
        },
        "updated": now_iso(),
    }


def _write_table(config: DownloadConfig, store: StatusStore) -> None:
    """Every clip of the run with its status: the exact ids behind each number of the summary."""
    rows = store.rows()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ytid", "status", "reason", "attempts", "updated", "audio_seconds", "message"])
    for clip in config.clips:
        row = rows.get(clip.ytid)
        if row is None:
            writer.writerow([clip.ytid, PENDING, "", 0, "", 0, ""])
        else:
            writer.writerow([clip.ytid, row.status, row.reason, row.attempts, row.updated,
                             f"{row.audio_seconds:.3f}", row.message.replace("\n", " ")[:500]])
    write_text_atomic(config.settings.table_path, buffer.getvalue())


def _log_summary(config: DownloadConfig, summary: dict) -> None:
    status = summary["status"]
    log.info("%s: %d clips: %s; %.1f MB of audio; summary %s",
             config.settings.split, summary["clips"], ", ".join(f"{key} {value}" for key, value in status.items() if value),
             summary["bytes"] / 1e6, config.settings.summary_path)
    for reason, count in summary["reasons"].items():
        log.info("  %-32s %d", reason, count)
    # The per-clip list is next to the summary; say where.
    log.debug("per-clip status: %s (and %s)", config.settings.table_path, config.settings.store_path)
