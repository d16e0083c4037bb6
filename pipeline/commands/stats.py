"""`fat stats DATAFILE`: fbank mean and std of a dataset, for the student's input normalisation."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import add_command
from pipeline.packed.settings import packed_option
from pipeline.settings import check_values, from_args, option

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StatsSettings:
    """The `fat stats` options."""

    datafile: Path = option(help='AST datafile JSON ({"data": [{"wav": ...}]})', positional=True, metavar="DATAFILE")
    packed: list[Path] = packed_option()
    frames: int = option(1024, "frames per clip as the model sees them, zero padding included as AST does; 0 = the "
                               "clip's own frames, no padding", unit="10 ms frames", minimum=0)
    limit: int | None = option(None, "use N clips drawn at random with --seed (default: all)", minimum=1, metavar="N")
    seed: int = option(0, "random seed of --limit")
    out: Path | None = option(None, "also write the result as JSON here (default: none)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "stats", "compute the fbank mean/std of a datafile's clips (student normalisation)",
        description=("Compute the student's fbank (16 kHz Kaldi, 128 bins, padded/cut to --frames) for the clips\n"
                     "of an AST datafile and print their mean and std: the constants of\n"
                     "normalize(x) = (x - mean) / (2 std). AST's published values: student.features.NORM_STATS."),
        settings=StatsSettings,
    )
    parser.set_defaults(func=run)


def run(namespace: argparse.Namespace) -> int:
    import json

    from pipeline.core.atomic import write_json_atomic
    from pipeline.core.errors import FatError
    from pipeline.datafile import load_datafile
    from pipeline.stats import fbank_stats

    args = from_args(StatsSettings, namespace)
    check_values(args)
    datafile = load_datafile(args.datafile)
    if len(datafile) == 0:
        raise FatError(f"{args.datafile}: no clips")
    result = fbank_stats(datafile, frames=args.frames or None, limit=args.limit, seed=args.seed,
                         progress=lambda done, total: log.info("%d/%d clips", done, total),
                         packed=[Path(p) for p in args.packed])
    result["datafile"] = str(args.datafile)
    print(json.dumps(result, indent=2))
    if args.out is not None:
        write_json_atomic(args.out, result)
    return 0
