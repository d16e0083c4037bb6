"""A process pool whose workers can be killed mid-clip, with everything they started.

yt-dlp and ffmpeg can hang in ways their own timeouts do not catch (a server that trickles a
byte now and then, a section read that ignores socket_timeout). So each clip runs in a worker
process that leads its own process group; when a clip overruns its limit, the runner kills
the whole group (worker + ffmpeg) with SIGKILL and starts a fresh worker.

A worker also kills its group as soon as the runner is gone, however it died (SIGKILL, the OOM
killer): its end of the worker's connection hangs up. It holds a shared lock on `lock_path`
while alive, so the next run can wait until no orphan is left writing into the output folder
before it cleans up temporary files.

Once the runner is stopping (SIGINT / SIGTERM), nothing is respawned and no clip is reported
as crashed or timed out: a signal sent to the runner's whole process group also kills the fork
server, and the clips in flight must keep their previous status rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from pipeline.core.errors import FatError
from pipeline.download.clip import ClipResult, ClipTask, FetchOptions

_READY = "ready"


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    task: ClipTask | None = None
    deadline: float = float("inf")
    started: float = 0.0


@dataclass(frozen=True)
class Event:
    """What happened to a dispatched clip: `done` (with result), `timeout` or `crashed`."""

    kind: str
    task: ClipTask
    result: ClipResult | None = None
    detail: str = ""
    elapsed: float = 0.0


def _never() -> bool:
    return False


class KillablePool:
    def __init__(self, size: int, options: FetchOptions, lock_path: Path, clip_timeout: float,
                 stopping: Callable[[], bool] = _never) -> None:
        """`stopping()` turns True once the run is being stopped: from then on, no respawns."""
        # forkserver: one server process imports and warms yt-dlp once; every worker (and every
        # replacement of a killed one) is a cheap fork of it. Plain fork would copy the runner's
        # threads and open store; spawn would pay ~1 s of imports per worker.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["pipeline.download.warm"])
        self._options = options
        self._lock_path = lock_path
        self._clip_timeout = clip_timeout
        self._stopping = stopping
        self._startup_failures = 0
        self._workers: list[Worker] = [self._spawn() for _ in range(size)]

    def _spawn(self) -> Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main, args=(child_conn, self._options, str(self._lock_path)),
            name="fat-download-worker", daemon=True,
        )
        process.start()
        child_conn.close()
        return Worker(process, parent_conn)

    # ------------------------------------------------------------------ dispatch

    def idle(self) -> list[Worker]:
        return [worker for worker in self._workers if worker.ready and worker.task is None]

    def busy(self) -> list[Worker]:
        return [worker for worker in self._workers if worker.task is not None]

    def submit(self, worker: Worker, task: ClipTask) -> None:
        worker.task = task
        worker.started = time.monotonic()
        worker.deadline = worker.started + self._clip_timeout
        worker.conn.send(task)

    def next_deadline(self) -> float:
        return min((worker.deadline for worker in self.busy()), default=float("inf"))

    def poll(self, timeout: float) -> list[Event]:
        """Wait up to `timeout` s for results; kill workers past their deadline."""
        conns = [worker.conn for worker in self._workers
                 if not worker.conn.closed and (worker.process.is_alive() or worker.task is not None)]
        ready = set(wait(conns, timeout=max(0.0, timeout))) if conns else set()
        if not conns:
            time.sleep(max(0.0, timeout))
        events: list[Event] = []
        for index, worker in enumerate(self._workers):
            if worker.conn in ready:
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    worker.process.join(timeout=1.0)
                    detail = f"worker exited with code {worker.process.exitcode}"
                    if not worker.ready:
                        self._startup_failures += 1
                        if self._startup_failures > 3:
                            raise FatError(f"download workers keep dying at start-up ({detail})")
                    events.extend(self._replace(index, "crashed", detail))
                    continue
                if message == _READY:
                    worker.ready = True
                    self._startup_failures = 0
                elif worker.task is not None:
                    task, worker.task, worker.deadline = worker.task, None, float("inf")
                    events.append(Event("done", task, message, elapsed=time.monotonic() - worker.started))
            elif worker.task is not None and time.monotonic() >= worker.deadline:
                events.extend(self._replace(index, "timeout", f"no result after {self._clip_timeout:g} s: killed"))
            elif worker.task is None and not worker.process.is_alive():
                self._replace(index, "crashed", "")
        return events

    def _replace(self, index: int, kind: str, detail: str) -> list[Event]:
        worker = self._workers[index]
        _kill_group(worker.process)
        worker.conn.close()
        if self._stopping():
            # The stop signal may have killed this worker's fork server and so the worker: its clip
            # stays in flight (kill_busy hands it back) and keeps its previous row; no new worker.
            return []
        self._workers[index] = self._spawn()
        if worker.task is None:
            return []
        return [Event(kind, worker.task, detail=detail, elapsed=time.monotonic() - worker.started)]

    # ------------------------------------------------------------------ shutdown

    def kill_busy(self) -> list[ClipTask]:
        """Kill every worker that is working on a clip (Ctrl-C); return their tasks."""
        tasks = []
        for worker in self.busy():
            _kill_group(worker.process)
            tasks.append(worker.task)
            worker.task = None
        return tasks

    def close(self) -> None:
        for worker in self._workers:
            if worker.task is None and not worker.conn.closed and worker.process.is_alive():
                with contextlib.suppress(OSError, BrokenPipeError):
                    worker.conn.send(None)
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                _kill_group(worker.process)
            worker.conn.close()
        self._workers = []


def _kill_group(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL the worker's process group (it and any ffmpeg it started) and reap it."""
    if process.pid is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    process.join(timeout=5.0)


def wait_for_orphans(lock_path: Path, timeout: float) -> bool:
    """Wait until no worker of an earlier run holds `lock_path`; True when none does."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
                continue
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return True


# ---------------------------------------------------------------------- inside the worker


def _worker_main(conn: Connection, options: FetchOptions, lock_path: str) -> None:
    os.setsid()  # lead a process group: the runner kills it whole, and a terminal's Ctrl-C goes to the runner only
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    lock = open(lock_path, "a+")  # noqa: SIM115 - held for the life of the process
    fcntl.flock(lock.fileno(), fcntl.LOCK_SH)
    # A copy of the descriptor: the watch must not see the connection's own closing at exit.
    threading.Thread(target=_die_with_runner, args=(os.dup(conn.fileno()),), daemon=True).start()

    from pipeline.core.ffmpeg import ensure_ffmpeg_on_path
    from pipeline.download.clip import fetch_clip
    from pipeline.download.warm import warm_up

    ensure_ffmpeg_on_path(options.ffmpeg or None)  # yt-dlp finds the runner's ffmpeg as `ffmpeg` on PATH
    warm_up()  # a no-op when the fork server already did it
    conn.send(_READY)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(fetch_clip(task, options))


def _die_with_runner(fd: int) -> None:
    """SIGKILL this worker's group (it and its ffmpeg) when the runner's end of `fd` hangs up.

    Only the runner holds that end, so the hang-up comes the moment it exits, however it dies.
    Neither our parent nor its pid would do: the parent is the fork server, which Python 3.11
    keeps alive while any process it forked lives (each holds its "alive" pipe), and it dies on
    its own when a SIGTERM reaches the runner's process group.
    """
    poller = select.poll()
    poller.register(fd, 0)  # hang-up and errors are always reported; data (a task) is not watched
    while True:
        for _, events in poller.poll():
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                os.killpg(0, signal.SIGKILL)
