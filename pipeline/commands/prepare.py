"""`fat prepare`: AST datafiles for Speech Commands, ESC-50 or a one-folder-per-class tree, checked like AudioSet's."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path

from pipeline.cli import add_command
from pipeline.datafile import LABEL_CSV_NAME
from pipeline.prepare import PrepareSettings, prepare_folder, prepare_speechcommands
from pipeline.settings import from_args
from pipeline.validate import ValidateSettings, run_validate, source_from_datafile

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "prepare", "write AST datafiles for Speech Commands v0.02, ESC-50 or a one-folder-per-class tree",
        description=(
            "speechcommands: the v0.02 layout (one folder per word, _background_noise_,\n"
            "  validation_list.txt, testing_list.txt) → train / valid / test and AST's 35-class\n"
            "  label CSV (MIDs /m/spcmd00.., words in alphabetical order).\n"
            "esc50: the release (audio/*.wav, meta/esc50.csv) → <name>_fold<k>.json (fold k's clips,\n"
            "  its test set) and <name>_except_fold<k>.json (the other four folds, its training set)\n"
            "  for k = 1..5, classes = the target numbers (MIDs /m/esc00.., category as name); each\n"
            "  fold is checked once and the training sets are made from the checked folds.\n"
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
    if settings.kind == "esc50":
        return run_esc50(settings)
    if settings.kind == "speechcommands":
        prepared = prepare_speechcommands(settings.root, settings.out_dir, settings.name or "speechcommands",
                                          settings.absolute_paths, settings.allow_empty)
    else:
        prepared = prepare_folder(settings.root, settings.out_dir, settings.name, settings.valid_fraction,
                                  settings.test_fraction, settings.seed, settings.absolute_paths, settings.allow_empty)
    for split, path in prepared.datafiles.items():
        log.info("%s: %d clips", path, prepared.counts[split])
    if settings.validate:
        _check_splits(settings, prepared.datafiles.values(), prepared.labels)
    return 0


def _check_splits(settings: PrepareSettings, datafiles: Iterable[Path], labels: Path) -> None:
    """The checks of `fat validate` over each listing: <datafile-dir>/<stem>.json holds the clips that pass."""
    thresholds = settings.thresholds()
    for path in datafiles:
        summary = run_validate(ValidateSettings(
            split=path.stem, source=source_from_datafile(path), labels=labels, datafile=path,
            out_dir=settings.datafile_dir, report_dir=settings.report_dir, thresholds=thresholds,
            workers=settings.workers, progress=settings.progress, absolute_paths=settings.absolute_paths,
        ))
        reasons = ", ".join(f"{reason} {n}" for reason, n in summary["reasons"].items() if n) or "none"
        log.info("%s: %d of %d clips pass; rejected: %s", path.stem, summary["passed"], summary["clips"], reasons)


def run_esc50(settings: PrepareSettings) -> int:
    """The five folds are listed and checked once each; the training sets are made from what passed."""
    from pipeline.esc50 import prepare_esc50, write_training_sets

    name = settings.name or "esc50"
    folds = prepare_esc50(settings.root, settings.out_dir, name, settings.absolute_paths)
    if settings.validate:
        _check_splits(settings, folds.values(), settings.out_dir / LABEL_CSV_NAME)
        write_training_sets(settings.datafile_dir, name, absolute=settings.absolute_paths)
    return 0
