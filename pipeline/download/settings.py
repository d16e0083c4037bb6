"""What `fat download` is asked to do: its options (params.yaml `download:` keys) and the files they name."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import FatError
from pipeline.core.ids import check_split_name
from pipeline.download.clip import FetchOptions
from pipeline.settings import check_values, nested, option


def shard_spec(text: str) -> tuple[int, int]:
    """argparse type of --shard: `i/n` with 0 ≤ i < n."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected i/n with 0 ≤ i < n, got {text!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(kw_only=True)
class DownloadSettings:
    split: str = option(help="split name, e.g. balanced_train or eval (required; default: none)")
    metadata_dir: Path = option(Path("data/metadata"), "folder of the normalised <split>.csv written by `fat metadata`")
    out_dir: Path = option(Path("data/audio"), "audio root; clips go to <out-dir>/<split>/")
    manifest_dir: Path = option(Path("data/manifests"), "folder for status, summary and per-clip list")
    url_template: str | None = option(None, "clip URL with {id}; default: https://www.youtube.com/watch?v={id}")
    sample_rate: int = option(32000, "output sample rate", unit="Hz", minimum=1)
    workers: int = option(4, "parallel worker processes", minimum=1)
    shard: tuple[int, int] | None = option(
        None, "take only shard I of N (by a hash of the id), for many machines (default: all clips)", parse=shard_spec,
        metavar="I/N")
    limit: int | None = option(None, "only the first N clips of the (sharded) list (default: all)", minimum=1,
                               metavar="N")
    clip_timeout: float = option(180.0, "hard limit per clip: the worker and its ffmpeg are killed after it",
                                 unit="s", above=0)
    max_retries: int = option(5, "rate-limit retries per clip, and consecutive rate limits before the run gives up",
                              minimum=0)
    backoff_base: float = option(
        5.0, "first global pause after a rate limit (doubles each time; Retry-After is a floor)", unit="s", minimum=0)
    max_backoff: float = option(600.0, "longest global pause; a longer Retry-After stops the run", unit="s", minimum=0)
    sleep_between: float = option(0.0, "minimum time between the starts of two clips (all workers together)",
                                  unit="s", minimum=0)
    retry_unavailable: bool = option(False, "also retry clips recorded as unavailable (removed, private, 404, ...)")
    progress: bool | None = option(None, "progress bar (default: when stderr is a terminal)")
    fetch: FetchOptions = nested(FetchOptions)

    def check(self) -> None:
        """The split name before any file is named from it, then the values and the cookies file."""
        check_split_name(self.split)
        check_values(self)
        if self.fetch.cookies is not None and not Path(self.fetch.cookies).is_file():
            raise FatError(f"--cookies {self.fetch.cookies}: no such file")

    @property
    def audio_dir(self) -> Path:
        return self.out_dir / self.split

    @property
    def stem(self) -> str:
        shard = f".shard-{self.shard[0]}-of-{self.shard[1]}" if self.shard else ""
        return f"{self.split}{shard}.download"

    @property
    def store_path(self) -> Path:
        return self.manifest_dir / f"{self.stem}.sqlite"

    @property
    def summary_path(self) -> Path:
        return self.manifest_dir / f"{self.stem}.json"

    @property
    def table_path(self) -> Path:
        return self.manifest_dir / f"{self.stem}.csv"
