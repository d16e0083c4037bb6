"""Worker processes that ignore SIGTERM, and the guard that still ends them when their stage fails.

`fat train` saves its state when SIGTERM arrives, also when the signal is sent to the whole process
group or to every process of a job (as batch schedulers do), so its DataLoader workers ignore
SIGTERM and keep serving batches until the main process has saved. The price: at exit,
multiprocessing ends leftover daemon children with SIGTERM and then waits for them. Workers
normally stop when their DataLoader is collected, but the traceback of an error keeps the
DataLoader alive past that wait, and the process hung for good. Code that starts such workers
runs inside `killed_on_error()`, which SIGKILLs and reaps them before the error travels on.

A FatError raised in a DataLoader worker (a clip that vanished or is corrupt mid-epoch) must still
reach the user as its one line: `WorkerFatError` carries it across (see its docstring).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Iterator
from multiprocessing.process import BaseProcess

from pipeline.core.errors import FatError

JOIN_SECONDS = 10.0
MESSAGE_START, MESSAGE_END = "\x02", "\x03"  # around a worker's message inside torch's traceback text


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


class WorkerFatError(FatError):
    """A FatError raised in a DataLoader worker, re-raised in the main process as its own message only.

    torch sends the main process the error's class and the worker's formatted traceback, and
    rebuilds the error there by calling the class with "Caught … in DataLoader worker process N.
    Original Traceback …" (some 20 lines). `carrying(error)` puts the worker's message between
    two control characters; the constructor, called with torch's text, keeps what lies between
    the last pair, so the CLI prints the one line that names the clip.
    """

    def __init__(self, message: str = "") -> None:
        start = message.rfind(MESSAGE_START)
        end = message.find(MESSAGE_END, start + 1)
        super().__init__(message[start + 1:end] if 0 <= start < end else message)

    @classmethod
    def carrying(cls, error: FatError) -> WorkerFatError:
        """The error to raise in a worker (`raise WorkerFatError.carrying(exc) from None`) for `error`."""
        carrier = cls()
        carrier.args = (f"{MESSAGE_START}{error}{MESSAGE_END}",)  # marked as is: the constructor would unwrap it
        return carrier
