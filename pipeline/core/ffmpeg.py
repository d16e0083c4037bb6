"""Which ffmpeg fat runs: imageio-ffmpeg's bundled build, or the one `$FAT_FFMPEG` names.

One known build by default, whatever the system has on PATH: ffmpeg versions differ in their
messages, exit codes and defaults (Debian 12's 5.1 and imageio-ffmpeg's 9.0 word the same failure
differently), so a known build keeps every machine alike. `FAT_FFMPEG` chooses another: a path,
or a command name looked up on PATH (`FAT_FFMPEG=ffmpeg` for the system's). Whatever is chosen must
run as ffmpeg (`-version`) or fat stops with an error naming it.

yt-dlp looks for a program named `ffmpeg` on PATH in places where it ignores its
`ffmpeg_location` option, so `ensure_ffmpeg_on_path` puts a link named `ffmpeg` to the chosen
binary in a private folder at the front of this process's PATH (inherited by its children).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from pipeline.core.errors import FatError

ENV_VAR = "FAT_FFMPEG"
_LINK_PREFIX = "fat-ffmpeg-"  # names the PATH folders this module adds (skipped when FAT_FFMPEG is looked up)
_VERSION_TIMEOUT = 30.0


def cache_dir() -> Path:
    """The user's cache folder: `$FAT_CACHE`, default ~/.cache/fat."""
    return Path(os.environ.get("FAT_CACHE") or Path.home() / ".cache" / "fat")


def ffmpeg_binary() -> str:
    """Absolute path of the ffmpeg to use: `$FAT_FFMPEG` when set, else imageio-ffmpeg's build."""
    return _checked(os.environ.get(ENV_VAR, "").strip())[0]


def ffmpeg_description() -> str:
    """`path (ffmpeg version ...)` of the ffmpeg in use, for logs and error reports."""
    path, version = _checked(os.environ.get(ENV_VAR, "").strip())
    return f"{path} ({version})"


@functools.cache
def _checked(choice: str) -> tuple[str, str]:
    """(path, version line) for a FAT_FFMPEG value ('' = the default); checked once per process."""
    if choice:
        path, origin = _chosen(choice), f"{ENV_VAR}={choice}"
    else:
        path, origin = bundled_ffmpeg(), "imageio-ffmpeg's ffmpeg"
    return path, _version_line(path, origin)


def bundled_ffmpeg() -> str:
    """imageio-ffmpeg's own build (not its fallbacks to IMAGEIO_FFMPEG_EXE, conda or PATH)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise FatError(f"imageio-ffmpeg is not installed: `pip install imageio-ffmpeg` or set {ENV_VAR}") from exc
    folder = Path(imageio_ffmpeg.__file__).parent / "binaries"
    builds = sorted(path for path in folder.glob("ffmpeg*") if path.is_file())
    if not builds:
        raise FatError(f"imageio-ffmpeg ships no ffmpeg build for this platform (nothing in {folder}); "
                       f"set {ENV_VAR} to an ffmpeg, e.g. {ENV_VAR}=ffmpeg for the one on PATH")
    return str(builds[0])


def _chosen(choice: str) -> str:
    """The absolute path FAT_FFMPEG names: a path as given, or a command name found on PATH."""
    if os.sep in choice or (os.altsep and os.altsep in choice):
        path = Path(choice).expanduser().absolute()
        if not path.is_file():
            raise FatError(f"{ENV_VAR}={choice}: no such file")
        if not os.access(path, os.X_OK):
            raise FatError(f"{ENV_VAR}={choice}: not executable")
        return str(path)
    found = shutil.which(choice, path=os.pathsep.join(_path_without_links()))
    if found is None:
        raise FatError(f"{ENV_VAR}={choice}: no program of that name on PATH")
    return str(Path(found).absolute())


def _version_line(path: str, origin: str) -> str:
    """The first line of `path -version`; FatError naming `origin` when it does not run as ffmpeg."""
    try:
        process = subprocess.run([path, "-version"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 errors="replace", timeout=_VERSION_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FatError(f"{origin} ({path}): `-version` did not answer within {_VERSION_TIMEOUT:g} s") from None
    except OSError as exc:
        raise FatError(f"{origin} ({path}) does not run: {exc}") from None
    first = process.stdout.splitlines()[0].strip() if process.stdout.strip() else ""
    if process.returncode != 0 or not first.startswith("ffmpeg version"):
        raise FatError(f"{origin} ({path}) is not a working ffmpeg: `-version` exited {process.returncode} "
                       f"and printed {first or process.stderr.strip()[:200] or 'nothing'!r}")
    return first


def _path_without_links() -> list[str]:
    """PATH's folders minus the link folders added by `ensure_ffmpeg_on_path`."""
    entries = os.environ.get("PATH", "").split(os.pathsep)
    return [entry for entry in entries if entry and not Path(entry).name.startswith(_LINK_PREFIX)]


def ensure_ffmpeg_on_path(binary: str | None = None) -> str:
    """Make `ffmpeg` on PATH be `binary` (default: the chosen one) for this process and its children.

    The link folder goes first on PATH, ahead of any system ffmpeg; earlier link folders are dropped.
    """
    binary = binary or ffmpeg_binary()
    rest = _path_without_links()
    found = shutil.which("ffmpeg", path=os.pathsep.join(rest))
    if found and Path(found).resolve() == Path(binary).resolve():
        os.environ["PATH"] = os.pathsep.join(rest)
        return binary
    link_dir = _link_dir(binary)
    os.environ["PATH"] = os.pathsep.join([str(link_dir), *rest])
    return binary


def _link_dir(binary: str) -> Path:
    """A folder holding only a link `ffmpeg` -> `binary` (one folder per binary: runs may differ)."""
    digest = hashlib.sha256(binary.encode()).hexdigest()[:12]
    link_dir = cache_dir() / "bin" / f"{_LINK_PREFIX}{digest}"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "ffmpeg"
    if not (link.is_symlink() and os.readlink(link) == binary):
        tmp = link_dir / f".ffmpeg-{os.getpid()}-{secrets.token_hex(3)}"
        tmp.symlink_to(binary)
        os.replace(tmp, link)
    return link_dir
