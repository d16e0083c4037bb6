"""`fat pack`'s settings: its command line, its params.yaml `pack:` keys (pipeline.settings).

Kept apart from the writer so that building `fat`'s parser imports neither h5py nor soundfile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.packed.format import CodecSettings
from pipeline.settings import check_values, nested, option

DEFAULT_SHARD_CLIPS = 10000  # ≈ 3–4 GB of FLAC for 10-s AudioSet clips: ~175 files for the full set


@dataclass(kw_only=True)
class PackSettings:
    """One `fat pack` run."""

    datafile: Path = option(help="the AST datafile whose clips are packed", metavar="JSON")
    out_dir: Path | None = option(None, "the store's folder (default: data/packed/<datafile stem>)")
    codec: CodecSettings = nested(CodecSettings, group="codec")
    shard_clips: int = option(DEFAULT_SHARD_CLIPS, "clips per shard (10,000 10-s clips ≈ 3–4 GB of FLAC)",
                              unit="clips", minimum=1)
    workers: int = option(default_factory=lambda: os.cpu_count() or 1,
                          help="encoding processes (1 = in this process)", minimum=1)
    batch_size: int = option(8, "clips per task sent to a worker", unit="clips", minimum=1)
    labels: Path | None = option(None, "label CSV whose sha256 is recorded (default: class_labels_indices.csv beside "
                                       "the datafile, if there is one)")
    overwrite: bool = option(False, "replace a pack of another datafile or other settings in the folder "
                                    "(default: refuse)")
    verify_existing: bool = option(False, "check the CRC32 of every clip of the shards a rerun keeps and write any "
                                          "that fail again (reads every kept shard once)")
    summary: Path | None = option(None, "write the run's figures (clips, bytes, bytes vs source, clips/s) to this "
                                        "JSON file, e.g. DVC metrics (default: none)")
    progress_every: float = option(30.0, "seconds between progress lines", unit="s", above=0)

    @property
    def folder(self) -> Path:
        return self.out_dir if self.out_dir is not None else Path("data") / "packed" / self.datafile.stem

    def check(self) -> None:
        """The options' bounds (pipeline.settings) and the codec's own."""
        check_values(self)
        self.codec.check()


def packed_option(group: str | None = None) -> Any:
    """The one `packed` setting of every stage that reads clips (pipeline.clip_audio decides what it means)."""
    return option([], "read the clips by id from these packed audio stores (`fat pack` folders) instead of their "
                      "audio files (default: the files)", metavar="DIR", group=group)
