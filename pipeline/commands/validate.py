"""`fat validate`: check a split's clips and write the AST datafile of those that pass."""

from __future__ import annotations

import argparse
import logging

from pipeline.cli import add_command
from pipeline.settings import from_args
from pipeline.validate import ValidateSettings, run_validate

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
        settings=ValidateSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = from_args(ValidateSettings, args)
    summary = run_validate(settings)
    reasons = ", ".join(f"{reason} {n}" for reason, n in summary["reasons"].items() if n) or "none"
    log.info("%s: %d of %d clips pass (%.1f files/s); rejected: %s", settings.split, summary["passed"],
             summary["clips"], summary["files_per_second"] or 0.0, reasons)
    log.info("wrote %s, %s, %s and %s", settings.output, settings.report, settings.class_report, settings.summary)
    return 0
