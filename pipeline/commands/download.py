"""`fat download`: fetch every clip of a split as mono PCM-16 WAV, resumable and verified."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from pipeline.cli import add_command

log = logging.getLogger(__name__)

def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 ≤ i < n, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


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
    )
    parser.add_argument("--split", required=True, help="split name, e.g. balanced_train or eval (required; default: none)")
    parser.add_argument("--metadata-dir", type=Path, default=Path("data/metadata"),
                        help="folder of the normalised <split>.csv written by `fat metadata`")
    parser.add_argument("--out-dir", type=Path, default=Path("data/audio"), help="audio root; clips go to <out-dir>/<split>/")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"), help="folder for status, summary and per-clip list")
    parser.add_argument("--url-template", default=None,
                        help="clip URL with {id}; default: https://www.youtube.com/watch?v={id}")
    parser.add_argument("--sample-rate", type=_positive_int, default=32000, help="output sample rate, Hz")
    parser.add_argument("--workers", type=_positive_int, default=4, help="parallel worker processes")
    parser.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                        help="take only shard I of N (by a hash of the id), for many machines (default: all clips)")
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                        help="only the first N clips of the (sharded) list (default: all)")
    parser.add_argument("--clip-timeout", type=_positive, default=180.0,
                        help="hard limit per clip, seconds: the worker and its ffmpeg are killed after it")
    parser.add_argument("--socket-timeout", type=_positive, default=20.0, help="network inactivity timeout, seconds")
    parser.add_argument("--http-retries", type=_count, default=2, help="yt-dlp's own retries of a failed request")
    parser.add_argument("--max-retries", type=_count, default=5,
                        help="rate-limit retries per clip, and consecutive rate limits before the run gives up")
    parser.add_argument("--backoff-base", type=_non_negative, default=5.0,
                        help="first global pause after a rate limit, seconds (doubles each time; Retry-After is a floor)")
    parser.add_argument("--max-backoff", type=_non_negative, default=600.0,
                        help="longest global pause, seconds; a longer Retry-After stops the run")
    parser.add_argument("--sleep-between", type=_non_negative, default=0.0,
                        help="minimum time between the starts of two clips (all workers together), seconds")
    parser.add_argument("--retry-unavailable", action="store_true",
                        help="also retry clips recorded as unavailable (removed, private, 404, ...)")
    parser.add_argument("--cookies", type=Path, default=None, help="Netscape cookies.txt for yt-dlp (default: none)")
    parser.add_argument("--proxy", default=None, help="proxy URL for yt-dlp and ffmpeg (default: none)")
    parser.add_argument("--remote-components", nargs="*", default=[], metavar="NAME",
                        help="yt-dlp remote components it may fetch, e.g. ejs:github (default: none)")
    parser.add_argument("--sections", action=argparse.BooleanOptionalAction, default=True,
                        help="read only the window from http(s) sources; --no-sections fetches whole files")
    parser.add_argument("--length-tolerance", type=_non_negative, default=0.02,
                        help="allowed difference between the WAV's length and the window, seconds")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.download.clip import FetchOptions
    from pipeline.download.environment import (
        YOUTUBE_WATCH_TEMPLATE, available_js_runtimes, check_url_template, is_youtube, youtube_warnings,
    )
    from pipeline.download.runner import Clip, DownloadConfig, run_download, select_shard
    from pipeline.errors import FatError
    from pipeline.ffmpeg import ensure_ffmpeg_on_path, ffmpeg_description
    from pipeline.ids import check_split_name
    from pipeline.metadata import read_metadata_csv

    check_split_name(args.split)
    template = args.url_template or YOUTUBE_WATCH_TEMPLATE
    check_url_template(template)
    if args.cookies is not None and not args.cookies.is_file():
        raise FatError(f"--cookies {args.cookies}: no such file")
    # Every id is checked here (read_metadata_csv refuses invalid ones) before any subprocess starts.
    frame = read_metadata_csv(args.metadata_dir / f"{args.split}.csv")
    clips = [Clip(ytid, float(start), float(end)) for ytid, start, end
             in zip(frame["ytid"], frame["start_seconds"], frame["end_seconds"])]
    clips = select_shard(clips, args.shard)
    if args.limit is not None:
        clips = clips[: args.limit]
    ffmpeg = ensure_ffmpeg_on_path()  # a bad FAT_FFMPEG stops here, before any clip
    log.info("ffmpeg: %s", ffmpeg_description())
    runtimes = available_js_runtimes()
    if is_youtube(template):
        log.info("YouTube: JavaScript runtime(s) for yt-dlp: %s", ", ".join(runtimes) or "none")
        for warning in youtube_warnings(runtimes, tuple(args.remote_components), args.cookies):
            log.warning("warning: %s", warning)
    options = FetchOptions(
        socket_timeout=args.socket_timeout, http_retries=args.http_retries, length_tolerance=args.length_tolerance,
        sections=args.sections, cookies=str(args.cookies.absolute()) if args.cookies else None, proxy=args.proxy,
        js_runtimes=runtimes, remote_components=tuple(args.remote_components), ffmpeg=ffmpeg,
    )
    config = DownloadConfig(
        split=args.split, clips=clips, out_dir=args.out_dir / args.split, manifest_dir=args.manifest_dir,
        url_template=template, fetch=options, sample_rate=args.sample_rate, workers=args.workers, shard=args.shard,
        clip_timeout=args.clip_timeout, max_retries=args.max_retries, backoff_base=args.backoff_base,
        max_backoff=args.max_backoff, sleep_between=args.sleep_between, retry_unavailable=args.retry_unavailable,
        progress=args.progress,
    )
    code, _ = run_download(config)
    return code
