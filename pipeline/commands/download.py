"""`fat download`: fetch every clip of a split as mono PCM-16 WAV, resumable and verified."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from pipeline.cli import add_command
from pipeline.download.settings import DownloadSettings
from pipeline.settings import from_args

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "download", "download the clips of a split as mono WAV (yt-dlp + ffmpeg, resumable)",
        description=(
            "Fetch every clip of <metadata-dir>/<split>.csv: yt-dlp resolves --url-template, ffmpeg reads\n"
            "only the [start, end] window (whole file + cut where the source cannot be sectioned, e.g.\n"
            "file:// URLs) and writes <out-dir>/<split>/<ytid>.wav, mono PCM-16 at --sample-rate.\n"
            "Each WAV is decoded and its length checked before it counts as ok. One status row per\n"
            "clip in <manifest-dir>/<split>.download.sqlite; summary in <split>.download.json and the\n"
            "per-clip list in <split>.download.csv (with --shard i/n: <split>.shard-i-of-n.download.*).\n"
            "A rerun skips intact ok clips and retries failed and rate-limited ones.\n"
            "Local folder of media: --url-template 'file:///abs/dir/{id}.webm'.\n"
            "ffmpeg: imageio-ffmpeg's build; FAT_FFMPEG=/path/to/ffmpeg (or a command name) chooses another."
        ),
        settings=DownloadSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.core.ffmpeg import ensure_ffmpeg_on_path, ffmpeg_description
    from pipeline.download.environment import (
        YOUTUBE_WATCH_TEMPLATE, available_js_runtimes, check_url_template, is_youtube, youtube_warnings,
    )
    from pipeline.download.runner import Clip, DownloadConfig, run_download, select_shard
    from pipeline.metadata import read_metadata_csv

    settings: DownloadSettings = from_args(DownloadSettings, args)
    settings.check()  # the split name first: it names the file read next
    template = settings.url_template or YOUTUBE_WATCH_TEMPLATE
    check_url_template(template)
    # Every id is checked here (read_metadata_csv refuses invalid ones) before any subprocess starts.
    frame = read_metadata_csv(settings.metadata_dir / f"{settings.split}.csv")
    clips = [Clip(ytid, float(start), float(end)) for ytid, start, end
             in zip(frame["ytid"], frame["start_seconds"], frame["end_seconds"])]
    clips = select_shard(clips, settings.shard)
    if settings.limit is not None:
        clips = clips[: settings.limit]
    ffmpeg = ensure_ffmpeg_on_path()  # a bad FAT_FFMPEG stops here, before any clip
    log.info("ffmpeg: %s", ffmpeg_description())
    runtimes = available_js_runtimes()
    fetch = settings.fetch
    cookies = Path(fetch.cookies) if fetch.cookies else None
    if is_youtube(template):
        log.info("YouTube: JavaScript runtime(s) for yt-dlp: %s", ", ".join(runtimes) or "none")
        for warning in youtube_warnings(runtimes, tuple(fetch.remote_components), cookies):
            log.warning("warning: %s", warning)
    fetch = dataclasses.replace(fetch, cookies=str(cookies.absolute()) if cookies else None, js_runtimes=runtimes,
                                remote_components=tuple(fetch.remote_components), ffmpeg=ffmpeg)
    code, _ = run_download(DownloadConfig(settings, clips, template, fetch))
    return code
