"""`torch.compile` of a student, merging included, with a fallback to eager where it cannot compile.

Why compile: with r fixed every token count in every block is a constant, so the whole forward
(attention, matching, gathers, scatter) is one static graph that a compiler can fuse; ToMe's many
small kernels are what it removes. The model is compiled in place (`nn.Module.compile`), so it stays
an `ASTModel`: `set_tome_r`, `state_dict` and attribute access work as before, and a new r is a new
graph (dynamo guards on `model.tome_r`; the recompile limit is raised so a sweep of r values never
silently drops back to eager).

Compilation happens at the first call, so that is where it can fail (no C++ compiler for inductor on
the CPU, an unsupported platform): the first failure logs one warning line and the model runs eager
from then on. An error the eager model raises too (a wrong input shape) is raised as it is.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKEND_ENV = "FAT_COMPILE_BACKEND"  # e.g. aot_eager: same graph capture, no code generation (debugging, tests)
DEFAULT_BACKEND = "inductor"
RECOMPILE_LIMIT = 64  # one graph per r setting (and per batch-size family): a sweep must not exceed it


def compile_backend() -> str:
    """The backend `compile_student` uses: $FAT_COMPILE_BACKEND, else inductor (torch.compile's default)."""
    return os.environ.get(BACKEND_ENV, "").strip() or DEFAULT_BACKEND


def unavailable_reason(backend: str) -> str | None:
    """Why this process cannot compile with `backend`, or None when it can try."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile is not supported on this platform (Python {sys.version.split()[0]}, {sys.platform})"
    if backend == "inductor" and not _has_cxx_compiler():
        return "inductor needs a C++ compiler on the CPU and none was found (set CXX or install g++/clang++)"
    return None


def _has_cxx_compiler() -> bool:
    wanted = os.environ.get("CXX")
    names = [wanted] if wanted else ["g++", "c++", "clang++"]
    return any(shutil.which(name) for name in names)


def compile_student(model: nn.Module, backend: str | Callable[..., Any] | None = None, **options: Any) -> bool:
    """Compile `model`'s forward in place; False (one warning line, model unchanged) when it cannot.

    `options` go to torch.compile (e.g. mode="max-autotune"). A later failure at the first call also
    falls back to eager with one warning (see `CompiledCall`).
    """
    backend = backend or compile_backend()
    reason = unavailable_reason(backend) if isinstance(backend, str) else None
    if reason is not None:
        log.warning("--compile: %s; running eager", reason)
        return False
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    compiled = torch.compile(model._call_impl, backend=backend, **options)
    model._compiled_call_impl = CompiledCall(model, compiled, backend)
    return True


def is_compiled(model: nn.Module) -> bool:
    """True while `model` runs through torch.compile (False after a fallback to eager)."""
    return isinstance(getattr(model, "_compiled_call_impl", None), CompiledCall)


class CompiledCall:
    """The compiled call of a module; on a compilation failure it warns once and hands the module back to eager."""

    def __init__(self, model: nn.Module, compiled: Callable[..., Any], backend: str | Callable[..., Any]) -> None:
        self.model, self.compiled, self.backend = model, compiled, backend

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - judged by running eager: a failure there is the input's
            out = self.model._call_impl(*args, **kwargs)  # raises the eager error itself (compile stays on)
            self.model._compiled_call_impl = None
            log.warning("--compile: torch.compile (%s) failed, running eager: %s", _name(self.backend), _cause(exc))
            return out


def first_calls(run: Callable[[], object], settings: Iterable[tuple[str, Callable[[], object]]],
                device: torch.device | str) -> dict[str, float]:
    """Seconds of the first call at each setting (`(name, prepare)` pairs; `run` does one batch):
    for a compiled model, the compilation of that setting's graph, reported apart from the
    steady-state timing that follows. The caller chooses the context (inference mode, autocast)."""
    device = torch.device(device)
    seconds: dict[str, float] = {}
    for name, prepare in settings:
        prepare()
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        seconds[name] = time.perf_counter() - start
    return seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _name(backend: str | Callable[..., Any]) -> str:
    return backend if isinstance(backend, str) else getattr(backend, "__name__", repr(backend))


def _cause(exc: BaseException) -> str:
    """The compiler's own error in one line (dynamo wraps it in BackendCompilerFailed)."""
    root = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
    lines = [line for line in str(root).strip().splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0][:200] if lines else ''}"
