"""`fat pack`: a checked datafile's clips → encoded audio in a few id-keyed HDF5 shards."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.packed.settings import PackSettings
from pipeline.settings import from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "pack", "pack a datafile's clips into a few HDF5 shards of FLAC (or Vorbis) audio",
        description=(
            "Encode every clip of a datafile (what fat validate / fat prepare write) and store the bytes,\n"
            "keyed by clip id, in a few HDF5 files instead of one file per clip:\n"
            "  <out-dir>/shard-<i>-of-<n>.h5   ids, encoded audio, rate, length, channels, CRC32, provenance\n"
            "  <out-dir>/index.json            the store's identity and its shards (what readers open)\n"
            "Every clip is decoded back and checked: FLAC (default) must give the source's samples bit for\n"
            "bit, Vorbis its length and finite samples. Resumable: a killed run (even kill -9) keeps its\n"
            "finished shards; rerun the same command to write the rest. Example:\n"
            "  fat pack --datafile data/datafiles/eval/eval.json --out-dir data/packed/eval"
        ),
        settings=PackSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.packed.writer import run_pack

    outcome = run_pack(from_args(PackSettings, args))
    ratio = f" = {outcome.bytes / outcome.source_bytes:.3f} of the source files" if outcome.source_bytes else ""
    rate = outcome.summary["clips_per_second"]
    print(f"{outcome.out_dir}: {outcome.clips} clips in {outcome.shards} shards ({outcome.kept} kept, "
          f"{outcome.written} written{f', {rate} clips/s' if rate else ''}); {outcome.bytes / 1e6:.1f} MB{ratio}")
    return 0
