"""`fat validate`: check a split's clips and write the AST datafile of those that pass."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pipeline.cli import add_command

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "validate",
        "check every clip of a split and write its AST datafile (pipeline: data/datafiles/<split>/<split>.json)",
        description=(
            "Check every clip of a split (decode, rate, channels, length, finite, silence, DC,\n"
            "clipping, duplicate ids, labels) and write, without deleting or moving anything:\n"
            "  <out-dir>/<split>.json                 AST datafile of the clips that pass (with ids)\n"
            "  <out-dir>/class_labels_indices.csv     the label CSV it refers to (copied)\n"
            "  <report-dir>/<split>.rejected.csv      id,path,reason,detail of every rejected clip\n"
            "  <report-dir>/<split>.validate.json     counts per reason and of classes (DVC metrics)\n"
            "  <report-dir>/<split>.classes.csv       clips listed and kept per class\n"
            "Input: <metadata-dir>/<split>.csv with audio at <audio-dir>/<split>/<ytid>.wav,\n"
            "or an existing datafile (--datafile). A clip fixed later passes on the next run.\n"
            "The pipeline (dvc.yaml) gives each split its own folder, which later stages read:\n"
            "  fat validate --split eval --out-dir data/datafiles/eval   → data/datafiles/eval/eval.json"
        ),
    )
    parser.add_argument("--split", required=True, help="split name (names the input and output files)")
    parser.add_argument("--metadata-dir", type=Path, default=Path("data/metadata"),
                        help="folder of <split>.csv and class_labels_indices.csv (fat metadata's output)")
    parser.add_argument("--audio-dir", type=Path, default=Path("data/audio"),
                        help="audio root: clips at <audio-dir>/<split>/<ytid>.wav")
    parser.add_argument("--datafile", type=Path, default=None,
                        help="check the clips of this AST datafile instead of a metadata CSV (default: none)")
    parser.add_argument("--window-seconds", type=float, default=None,
                        help="with --datafile: the length every clip should have, seconds "
                             "(default: none, only --min-seconds/--max-seconds apply)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label CSV (default: class_labels_indices.csv beside the metadata CSV or datafile)")
    parser.add_argument("--out-dir", type=Path, default=Path("data/datafiles"), help="folder for the datafile and label CSV")
    parser.add_argument("--report-dir", type=Path, default=Path("data/reports"), help="folder for the report and summary")
    parser.add_argument("--absolute-paths", action="store_true",
                        help="write absolute wav paths (default: relative to the datafile's folder, relocatable)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (1 = in this process)")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per task sent to a worker")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar (default: when stderr is a terminal)")
    checks = parser.add_argument_group("thresholds (see docs/architecture.md for the reason codes)")
    checks.add_argument("--sample-rate", type=int, default=32000, help="required sample rate, Hz")
    checks.add_argument("--channels", type=int, default=1, help="required channel count")
    checks.add_argument("--length-tolerance", type=float, default=0.05,
                        help="allowed difference from the clip's window (metadata end − start), seconds")
    checks.add_argument("--min-seconds", type=float, default=0.5, help="absolute minimum length, seconds")
    checks.add_argument("--max-seconds", type=float, default=10.0,
                        help="absolute maximum length (plus --length-tolerance), seconds")
    add_signal_checks(checks)
    parser.set_defaults(func=run)


def add_signal_checks(checks: argparse._ArgumentGroup) -> None:
    """The sample-level thresholds, shared with `fat prepare` so both commands judge clips alike."""
    checks.add_argument("--silence-peak-dbfs", type=float, default=-60.0,
                        help="a clip whose peak is below this is silent, dBFS")
    checks.add_argument("--silence-rms-dbfs", type=float, default=-70.0,
                        help="a clip whose RMS is below this is silent, dBFS")
    checks.add_argument("--clip-level", type=float, default=0.999,
                        help="a sample at or beyond this fraction of full scale counts as clipped (0..1]")
    checks.add_argument("--max-clipped-fraction", type=float, default=0.02,
                        help="reject when more than this fraction of samples is clipped (0..1)")
    checks.add_argument("--max-dc-offset", type=float, default=0.25,
                        help="reject when |mean| exceeds this fraction of full scale (0..1)")


def signal_thresholds(args: argparse.Namespace) -> dict[str, float]:
    """The values of `add_signal_checks`' options, as Thresholds keyword arguments."""
    return {"silence_peak_dbfs": args.silence_peak_dbfs, "silence_rms_dbfs": args.silence_rms_dbfs,
            "clip_level": args.clip_level, "max_clipped_fraction": args.max_clipped_fraction,
            "max_dc_offset": args.max_dc_offset}


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.datafile import LABEL_CSV_NAME, label_csv_beside
    from pipeline.errors import FatError
    from pipeline.ids import check_split_name
    from pipeline.validate import Thresholds, ValidateSettings, run_validate, source_from_datafile, source_from_metadata

    check_split_name(args.split)  # before it names a file to read (--split ../x read <metadata-dir>/../x.csv)
    if args.datafile is not None:
        source = source_from_datafile(args.datafile, args.window_seconds)
        labels = args.labels or label_csv_beside(args.datafile)
    else:
        if args.window_seconds is not None:
            raise FatError("--window-seconds applies to --datafile input (metadata CSVs carry each clip's window)")
        csv_path = args.metadata_dir / f"{args.split}.csv"
        source = source_from_metadata(csv_path, args.audio_dir / args.split)
        labels = args.labels or args.metadata_dir / LABEL_CSV_NAME
    thresholds = Thresholds(
        sample_rate=args.sample_rate, channels=args.channels, length_tolerance=args.length_tolerance,
        min_seconds=args.min_seconds, max_seconds=args.max_seconds, **signal_thresholds(args),
    )
    settings = ValidateSettings(
        split=args.split, source=source, labels=labels, out_dir=args.out_dir, report_dir=args.report_dir,
        thresholds=thresholds, workers=args.workers, batch_size=args.batch_size,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
        absolute_paths=args.absolute_paths, input_path=args.datafile,
    )
    summary = run_validate(settings)
    reasons = ", ".join(f"{reason} {n}" for reason, n in summary["reasons"].items() if n) or "none"
    log.info("%s: %d of %d clips pass (%.1f files/s); rejected: %s", args.split, summary["passed"],
             summary["clips"], summary["files_per_second"] or 0.0, reasons)
    log.info("wrote %s, %s, %s and %s", settings.datafile, settings.report, settings.class_report, settings.summary)
    return 0
