"""`fat stats DATAFILE`: fbank mean and std of a dataset, for the student's input normalisation."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cli import add_command

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "stats", "compute the fbank mean/std of a datafile's clips (student normalisation)",
        description=("Compute the student's fbank (16 kHz Kaldi, 128 bins, padded/cut to --frames) for the clips\n"
                     "of an AST datafile and print their mean and std: the constants of\n"
                     "normalize(x) = (x - mean) / (2 std). AST's published AudioSet values are -4.2677393 / 4.5689974."),
    )
    parser.add_argument("datafile", type=Path, metavar="DATAFILE", help="AST datafile JSON ({\"data\": [{\"wav\": ...}]})")
    parser.add_argument("--frames", type=int, default=1024,
                        help="frames per clip (10 ms each) as the model sees them, zero padding included as AST "
                             "does; 0 = the clip's own frames, no padding")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use N clips drawn at random with --seed (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of --limit")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here (default: none)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from pipeline.atomic import write_json_atomic
    from pipeline.datafile import load_datafile
    from pipeline.errors import FatError
    from pipeline.stats import fbank_stats

    if args.frames < 0:
        raise FatError(f"--frames must be ≥ 0, got {args.frames}")
    if args.limit is not None and args.limit < 1:
        raise FatError(f"--limit must be ≥ 1, got {args.limit}")
    datafile = load_datafile(args.datafile)
    if len(datafile) == 0:
        raise FatError(f"{args.datafile}: no clips")
    result = fbank_stats(datafile, frames=args.frames or None, limit=args.limit, seed=args.seed,
                         progress=lambda done, total: log.info("%d/%d clips", done, total))
    result["datafile"] = str(args.datafile)
    print(json.dumps(result, indent=2))
    if args.out is not None:
        write_json_atomic(args.out, result)
    return 0
