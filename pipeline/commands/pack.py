"""`fat pack`: a checked datafile's clips → encoded audio in a few id-keyed HDF5 shards."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.cli import add_command


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
    )
    parser.add_argument("--datafile", type=Path, required=True, metavar="JSON",
                        help="the AST datafile whose clips are packed (required)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="the store's folder (default: data/packed/<datafile stem>)")
    parser.add_argument("--codec", choices=("flac", "vorbis"), default="flac",
                        help="flac: lossless, the source's samples exactly; vorbis: about a quarter of FLAC's bytes, "
                             "not bit-exact")
    parser.add_argument("--flac-level", type=int, default=8, help="FLAC compression level 0..8 (flac -0..-8)")
    parser.add_argument("--vorbis-quality", type=float, default=4.0, help="Vorbis quality -1..10 (oggenc -q)")
    parser.add_argument("--shard-clips", type=int, default=10000,
                        help="clips per shard (10,000 10-s clips ≈ 3.5 GB of FLAC)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="encoding processes (1 = in this process)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per task sent to a worker")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label CSV whose sha256 is recorded (default: class_labels_indices.csv beside the "
                             "datafile, if there is one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a pack of another datafile or other settings in --out-dir (default: refuse)")
    parser.add_argument("--verify-existing", action="store_true",
                        help="check the CRC32 of every clip of the shards a rerun keeps, and write any that fail "
                             "again (reads every kept shard once) (default: off)")
    parser.add_argument("--summary", type=Path, default=None,
                        help="write the run's figures (clips, bytes, bytes vs source, clips/s) to this JSON file, "
                             "e.g. for DVC metrics (default: none)")
    parser.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.packed.format import CodecSettings
    from pipeline.packed.writer import PackSettings, run_pack

    out_dir = args.out_dir or Path("data") / "packed" / args.datafile.stem
    settings = PackSettings(
        datafile=args.datafile, out_dir=out_dir,
        codec=CodecSettings(args.codec, level=args.flac_level, quality=args.vorbis_quality),
        shard_clips=args.shard_clips, workers=args.workers, batch_size=args.batch_size, labels=args.labels,
        overwrite=args.overwrite, verify_existing=args.verify_existing, summary=args.summary,
        progress_every=args.progress_every,
    )
    outcome = run_pack(settings)
    ratio = f" = {outcome.bytes / outcome.source_bytes:.3f} of the source files" if outcome.source_bytes else ""
    rate = outcome.summary["clips_per_second"]
    print(f"{outcome.out_dir}: {outcome.clips} clips in {outcome.shards} shards ({outcome.kept} kept, "
          f"{outcome.written} written{f', {rate} clips/s' if rate else ''}); {outcome.bytes / 1e6:.1f} MB{ratio}")
    return 0
