"""Locate ffmpeg: the system binary when present, else the one the imageio-ffmpeg wheel ships.

yt-dlp ignores `ffmpeg_location` for section downloads and looks for a binary named `ffmpeg` on
PATH, so `ensure_ffmpeg_on_path` puts a link named `ffmpeg` in a private folder on this
process's PATH (inherited by its children) when the system has none.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from pipeline.errors import FatError


def cache_dir() -> Path:
    """The user's cache folder: `$FAT_CACHE`, default ~/.cache/fat."""
    return Path(os.environ.get("FAT_CACHE") or Path.home() / ".cache" / "fat")


@functools.cache
def ffmpeg_binary() -> str:
    """Absolute path of the ffmpeg to use (system first, then imageio-ffmpeg's)."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise FatError("ffmpeg not found: install it or `pip install imageio-ffmpeg`") from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise FatError(f"ffmpeg not found on PATH and imageio-ffmpeg has none: {exc}") from exc


def ensure_ffmpeg_on_path() -> str:
    """Make `ffmpeg` resolvable on PATH for this process and its children; return its path."""
    binary = ffmpeg_binary()
    found = shutil.which("ffmpeg")
    if found and Path(found).resolve() == Path(binary).resolve():
        return binary
    link_dir = cache_dir() / "bin"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "ffmpeg"
    if not (link.is_symlink() and os.readlink(link) == binary):
        tmp = link_dir / f".ffmpeg-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(binary)
        os.replace(tmp, link)
    os.environ["PATH"] = f"{link_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return binary
