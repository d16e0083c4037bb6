"""Run `fat` with one function made to raise, in the main process or in its worker processes only.

    FAT_FAULT=module:attr[.attr] FAT_FAULT_IN=main|worker [FAT_FAULT_AFTER=n] python tests/fault_launcher.py ARGS

The stage runs unchanged except that the named function raises RuntimeError("injected fault")
from its (n+1)-th call in the chosen kind of process; the moment is printed to stderr as
`injected fault at <time.monotonic()>`, so a test can time how long the stage takes to end after
an unexpected error (tests/test_stage_errors.py). The fault is installed at import, not under
`__main__`: forkserver workers (fat validate) import this file as `__mp_main__` and get it too.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

MAIN_PID = "FAT_FAULT_MAIN_PID"


def in_worker() -> bool:
    return os.getpid() != int(os.environ[MAIN_PID])


def faulty(original: Callable[..., Any], role: str, after: int) -> Callable[..., Any]:
    """`original`, except that it raises from its (after+1)-th call in processes of `role`."""
    calls = 0

    def replacement(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if in_worker() == (role == "worker"):
            calls += 1
            if calls > after:
                os.write(2, f"injected fault at {time.monotonic():.3f}\n".encode())  # one write: never split
                raise RuntimeError(f"injected fault in {original.__qualname__} ({role} process {os.getpid()})")
        return original(*args, **kwargs)

    return replacement


def install(spec: str, role: str, after: int) -> None:
    module_name, _, path = spec.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    setattr(owner, name, faulty(getattr(owner, name), role, after))


os.environ.setdefault(MAIN_PID, str(os.getpid()))
install(os.environ["FAT_FAULT"], os.environ["FAT_FAULT_IN"], int(os.environ.get("FAT_FAULT_AFTER", "0")))

if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(sys.argv[1:]))
