"""Worker processes for the stages that fan work out (`fat validate`, `fat pack`): results in
input order, a bounded number of tasks in flight, and workers that end with the run.

forkserver workers start clean (no inherited threads or locks from a busy parent). When the run
is killed outright (kill -9, out of memory), its workers go too. A pool worker blocks on a task queue whose
writing end it holds itself, so it would wait forever; instead each worker watches a pipe whose
only writing end the run holds, and exits the moment that end hangs up.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from pipeline.core.errors import FatError

Meta = TypeVar("Meta")
Result = TypeVar("Result")


def ordered_map(work: Callable[[Any], Result], items: Iterable[tuple[Meta, Any]], workers: int,
                per_worker: int = 4, when_broken: str = "rerun the command") -> Iterator[tuple[Meta, Result]]:
    """(meta, work(payload)) for each (meta, payload), in input order, at most workers·per_worker in flight.

    workers = 1 runs in this process. An exception in a worker is raised here, after the pool is
    shut down (tasks not yet started are cancelled; running ones finish, a batch at most).
    """
    if workers <= 1:
        for meta, payload in items:
            yield meta, work(payload)
        return
    context = multiprocessing.get_context("forkserver")
    watched, held = context.Pipe(duplex=False)  # workers get the reading end; only this process writes
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_exit_with_run,
                               initargs=(watched,))
    pending: deque[tuple[Meta, Future[Result]]] = deque()
    try:
        for meta, payload in items:
            pending.append((meta, pool.submit(work, payload)))
            if len(pending) >= workers * per_worker:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()
    except BrokenProcessPool:
        raise FatError(f"a worker process died (killed, or out of memory?); {when_broken}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        held.close()
        watched.close()


def _exit_with_run(watched: Connection) -> None:
    """In a worker: a thread that ends this process when the run's end of `watched` hangs up."""
    threading.Thread(target=_watch, args=(watched,), name="exit-with-run", daemon=True).start()


def _watch(watched: Connection) -> None:
    poller = select.poll()
    poller.register(watched.fileno(), 0)  # hang-up and errors are always reported
    while True:
        for _, events in poller.poll():
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                os._exit(1)
