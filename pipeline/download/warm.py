"""Importing this module warms yt-dlp up: the download fork server preloads it once per run.

The first `extract_info` of a process costs about a second of CPU (imports, ~1800 extractor URL
patterns compiled on first use). Done once in the fork server, every worker forked from it
starts warm and no clip pays for it inside its time limit.
"""

from __future__ import annotations

import contextlib

_warm = False


def warm_up() -> None:
    global _warm
    if _warm:
        return
    import yt_dlp

    from pipeline.download.clip import _MessageLog

    params = {"quiet": True, "logger": _MessageLog(), "enable_file_urls": True, "noprogress": True}
    with contextlib.suppress(Exception), yt_dlp.YoutubeDL(params) as ydl:
        ydl.extract_info("file:///nonexistent/fat-warm-up.webm", download=False)
    import ffmpeg  # noqa: F401 - ffmpeg-python builds every clip's command
    import soundfile  # noqa: F401 - used by every clip's verification
    _warm = True


warm_up()
