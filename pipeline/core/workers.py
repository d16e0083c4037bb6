"""Worker processes that ignore SIGTERM, and the guard that still ends them when their stage fails.

`fat train` saves its state when SIGTERM arrives, also when the signal is sent to the whole process
group or to every process of a job (as batch schedulers do), so its DataLoader workers ignore
SIGTERM and keep serving batches until the main process has saved. The price: at exit,
multiprocessing ends leftover daemon children with SIGTERM and then waits for them. Workers
normally stop when their DataLoader is collected, but the traceback of an error keeps the
DataLoader alive past that wait, and the process hung for good. Code that starts such workers
runs inside `killed_on_error()`, which SIGKILLs and reaps them before the error travels on.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Iterator
from multiprocessing.process import BaseProcess

JOIN_SECONDS = 10.0


def ignore_sigterm() -> None:
    """In a worker: leave SIGTERM to the main process, which stops the workers itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def killed_on_error() -> Iterator[None]:
    """Child processes started inside the block are SIGKILLed and reaped if the block raises."""
    before = {child.pid for child in multiprocessing.active_children()}
    try:
        yield
    except BaseException:
        kill([child for child in multiprocessing.active_children() if child.pid not in before])
        raise


def kill(children: list[BaseProcess]) -> None:
    """SIGKILL and reap `children`, with torch's SIGCHLD check paused meanwhile.

    torch's DataLoader handles SIGCHLD by raising "worker killed by signal" in the main thread;
    that would replace the error being reported by a message about its own clean-up.
    """
    if not children:
        return
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if main_thread else None
    try:
        for child in children:
            child.kill()
        for child in children:
            child.join(JOIN_SECONDS)
    finally:
        if previous is not None:
            signal.signal(signal.SIGCHLD, previous)
