"""What a download needs besides yt-dlp, checked once at start so users learn it before 1000 failures."""

from __future__ import annotations

import importlib.util
import shutil
from urllib.parse import urlsplit

from pipeline.core.errors import FatError

YOUTUBE_WATCH_TEMPLATE = "https://www.youtube.com/watch?v={id}"
JS_RUNTIMES: tuple[str, ...] = ("deno", "node", "bun")
_YOUTUBE_HOSTS = ("youtube.com", "youtu.be", "youtube-nocookie.com")


def check_url_template(template: str) -> None:
    """The template must hold `{id}` once and be an http(s) or absolute file:// URL."""
    if template.count("{id}") != 1:
        raise FatError(f"--url-template {template!r} must contain {{id}} exactly once")
    parts = urlsplit(template.replace("{id}", "X"))
    if parts.scheme not in ("http", "https", "file"):
        raise FatError(f"--url-template {template!r}: only http://, https:// and file:// URLs are supported")
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise FatError(f"--url-template {template!r}: a file:// URL needs an absolute path (file:///abs/dir/{{id}}.webm)")


def clip_url(template: str, ytid: str) -> str:
    """The clip's URL (plain substitution: braces elsewhere in the template are left alone)."""
    return template.replace("{id}", ytid)


def is_youtube(template: str) -> bool:
    host = (urlsplit(template.replace("{id}", "X")).hostname or "").lower()
    return any(host == name or host.endswith("." + name) for name in _YOUTUBE_HOSTS)


def available_js_runtimes() -> tuple[str, ...]:
    return tuple(name for name in JS_RUNTIMES if shutil.which(name))


def youtube_warnings(runtimes: tuple[str, ...], remote_components: tuple[str, ...], cookies: str | None) -> list[str]:
    """What is missing for YouTube today (JS runtime, challenge solver scripts, cookies)."""
    warnings: list[str] = []
    if not runtimes:
        warnings.append(
            "no JavaScript runtime found (deno, node or bun): yt-dlp needs one to solve YouTube's "
            "challenges, without it most clips fail with 'Requested format is not available' or "
            "'Only images are available'. Install deno (https://deno.com) or Node.js and rerun."
        )
    if importlib.util.find_spec("yt_dlp_ejs") is None and not remote_components:
        warnings.append(
            "yt-dlp's challenge solver scripts are not installed: `pip install yt-dlp-ejs` "
            "(or allow yt-dlp to fetch them with --remote-components ejs:github)."
        )
    if not cookies:
        warnings.append(
            "no --cookies FILE: YouTube often answers 'Sign in to confirm you're not a bot' to "
            "anonymous clients. Log in to a throw-away account (never your own: a downloading account "
            "may be banned) in a private browser window, export its youtube.com cookies as cookies.txt, "
            "then close that window without logging out (README: YouTube today)."
        )
    return warnings
