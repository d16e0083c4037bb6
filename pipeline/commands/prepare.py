"""`fat prepare`: AST datafiles for Speech Commands or a one-folder-per-class tree, checked like AudioSet's."""

from __future__ import annotations

import argparse
import logging

from pipeline.cli import add_command
from pipeline.prepare import PrepareSettings, prepare_folder, prepare_speechcommands
from pipeline.settings import from_args
from pipeline.validate import ValidateSettings, run_validate, source_from_datafile

log = logging.getLogger(__name__)


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
        settings=PrepareSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings: PrepareSettings = from_args(PrepareSettings, args)
    if settings.kind == "speechcommands":
        prepared = prepare_speechcommands(settings.root, settings.out_dir, settings.name or "speechcommands",
                                          settings.absolute_paths)
    else:
        prepared = prepare_folder(settings.root, settings.out_dir, settings.name, settings.valid_fraction,
                                  settings.test_fraction, settings.seed, settings.absolute_paths)
    for split, path in prepared.datafiles.items():
        log.info("%s: %d clips", path, prepared.counts[split])
    if not settings.validate:
        return 0
    thresholds = settings.thresholds()
    for path in prepared.datafiles.values():
        summary = run_validate(ValidateSettings(
            split=path.stem, source=source_from_datafile(path), labels=prepared.labels, datafile=path,
            out_dir=settings.datafile_dir, report_dir=settings.report_dir, thresholds=thresholds,
            workers=settings.workers, progress=settings.progress, absolute_paths=settings.absolute_paths,
        ))
        reasons = ", ".join(f"{reason} {n}" for reason, n in summary["reasons"].items() if n) or "none"
        log.info("%s: %d of %d clips pass; rejected: %s", path.stem, summary["passed"], summary["clips"], reasons)
    return 0
