"""`fat prepare`: AST datafiles for Speech Commands or a one-folder-per-class tree, checked like AudioSet's."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pipeline.cli import add_command
from pipeline.commands.validate import add_signal_checks, signal_thresholds

log = logging.getLogger(__name__)

KINDS = ("speechcommands", "folder")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "prepare", "write AST datafiles for Speech Commands v0.02 or a one-folder-per-class tree",
        description=(
            "speechcommands: the v0.02 layout (one folder per word, _background_noise_,\n"
            "  validation_list.txt, testing_list.txt) → train / valid / test and AST's 35-class\n"
            "  label CSV (MIDs /m/spcmd00.., words in alphabetical order).\n"
            "folder: one subfolder per class (audio anywhere below it); valid / test drawn by a\n"
            "  stable hash of each file's path.\n"
            "Writes <out-dir>/<name>_{train,valid,test}.json and <out-dir>/class_labels_indices.csv\n"
            "listing every clip; then (unless --no-validate) runs the checks of `fat validate` over\n"
            "each split: <datafile-dir>/<name>_<split>.json (clips that pass) and\n"
            "<report-dir>/<name>_<split>.rejected.csv / .validate.json. Nothing is deleted."
        ),
    )
    parser.add_argument("kind", choices=KINDS, help="dataset layout")
    parser.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    parser.add_argument("--name", default=None,
                        help="prefix of the output files (default: speechcommands, or the folder's name)")
    parser.add_argument("--out-dir", type=Path, default=Path("data/prepared"),
                        help="folder for the full listings and their label CSV")
    parser.add_argument("--absolute-paths", action="store_true",
                        help="write absolute wav paths (default: relative to the datafile's folder)")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="folder: share of clips in valid (0..1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="folder: share of clips in test (0..1)")
    parser.add_argument("--seed", type=int, default=0, help="folder: seed of the split hash")
    checks = parser.add_argument_group("checks (the same as fat validate)")
    checks.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                        help="check every clip and write the datafiles of those that pass")
    checks.add_argument("--datafile-dir", type=Path, default=Path("data/datafiles"),
                        help="folder for the checked datafiles and their label CSV")
    checks.add_argument("--report-dir", type=Path, default=Path("data/reports"), help="folder for reports and summaries")
    checks.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (1 = in this process)")
    checks.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar (default: when stderr is a terminal)")
    checks.add_argument("--sample-rate", type=int, default=None,
                        help="required sample rate, Hz (default: 16000 for speechcommands, any rate for folder)")
    checks.add_argument("--channels", type=int, default=1, help="required channel count")
    checks.add_argument("--min-seconds", type=float, default=0.0, help="minimum length, seconds")
    checks.add_argument("--max-seconds", type=float, default=None,
                        help="maximum length, seconds (default: 1 for speechcommands, 10 for folder)")
    checks.add_argument("--length-tolerance", type=float, default=0.05, help="allowed excess over --max-seconds, seconds")
    add_signal_checks(checks)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.prepare import prepare_folder, prepare_speechcommands
    from pipeline.validate import Thresholds, ValidateSettings, run_validate, source_from_datafile

    speech = args.kind == "speechcommands"
    if speech:
        prepared = prepare_speechcommands(args.root, args.out_dir, args.name or "speechcommands", args.absolute_paths)
    else:
        prepared = prepare_folder(args.root, args.out_dir, args.name, args.valid_fraction, args.test_fraction,
                                  args.seed, args.absolute_paths)
    for split, path in prepared.datafiles.items():
        log.info("%s: %d clips", path, prepared.counts[split])
    if not args.validate:
        return 0
    thresholds = Thresholds(
        sample_rate=args.sample_rate if args.sample_rate is not None else (16000 if speech else None),
        channels=args.channels, length_tolerance=args.length_tolerance, min_seconds=args.min_seconds,
        max_seconds=args.max_seconds if args.max_seconds is not None else (1.0 if speech else 10.0),
        **signal_thresholds(args),
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    for split, path in prepared.datafiles.items():
        summary = run_validate(ValidateSettings(
            split=path.stem, source=source_from_datafile(path), labels=prepared.labels, out_dir=args.datafile_dir,
            report_dir=args.report_dir, thresholds=thresholds, workers=args.workers, progress=progress,
            absolute_paths=args.absolute_paths, input_path=path,
        ))
        reasons = ", ".join(f"{reason} {n}" for reason, n in summary["reasons"].items() if n) or "none"
        log.info("%s: %d of %d clips pass; rejected: %s", path.stem, summary["passed"], summary["clips"], reasons)
    return 0
