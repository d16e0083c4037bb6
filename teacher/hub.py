"""Checkpoint files: the cache folder, atomic downloads with sha256 checks, safe loading.

The cache is `$FAT_CACHE/teachers` (default ~/.cache/fat/teachers), the same root the pipeline
uses. A download goes to a temporary name beside the final one and is renamed only once it is
complete (and its sha256 matches, where one is known), so an interrupted download never
passes for a checkpoint. Files are read with `torch.load(weights_only=True)`: a checkpoint can
hold tensors, never code.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from teacher.errors import CheckpointUnavailable, TeacherError

DOWNLOAD_TIMEOUT_S = 60


def cache_dir() -> Path:
    """Where released checkpoints are kept: `$FAT_CACHE/teachers`, default ~/.cache/fat/teachers."""
    root = Path(os.environ.get("FAT_CACHE") or Path.home() / ".cache" / "fat")
    return root / "teachers"


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, destination: Path, sha256: str | None = None,
             progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Fetch `url` to `destination` atomically; verify `sha256` when given."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.part-{os.getpid()}-{secrets.token_hex(4)}")
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "faster-audio-transformers"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
            total = response.length
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            if total is not None and done != total:
                raise CheckpointUnavailable(f"{url}: download ended after {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        if sha256 and digest.hexdigest() != sha256.lower():
            raise CheckpointUnavailable(
                f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256}; the file was not kept"
            )
        os.replace(tmp, destination)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointUnavailable(f"could not download {url} ({reason})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return destination


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict: a plain one, or one wrapped as {"model"|"state_dict": ...}
    (with or without DataParallel's `module.` prefix)."""
    path = Path(path)
    if not path.is_file():
        raise TeacherError(f"{path}: no such checkpoint file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign / pickled-code files
        raise TeacherError(f"{path}: not a readable weights-only checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise TeacherError(f"{path}: does not hold a state dict (a mapping of parameter names to tensors)")
    if all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module."):]: value for key, value in loaded.items()}
    return loaded
