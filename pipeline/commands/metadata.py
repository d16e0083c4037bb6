"""`fat metadata`: official AudioSet segment lists → one checked, normalised CSV per split."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import add_command
from pipeline.metadata import OFFICIAL_BASE_URL, SPLITS
from pipeline.settings import check_values, from_args, option

log = logging.getLogger(__name__)

DEFAULT_SPLITS = ("balanced_train", "eval")


@dataclass(kw_only=True)
class MetadataSettings:
    splits: list[str] = option(list(DEFAULT_SPLITS), "splits to write (unbalanced_train is 2 M rows: name it explicitly)",
                               choices=SPLITS)
    source: Path | None = option(
        None, "folder holding local copies of the official CSVs (offline use); default: fetch them")
    raw_dir: Path = option(Path("data/metadata/raw"),
                           "where fetched official CSVs are kept (a file already there is not fetched again)")
    base_url: str = option(OFFICIAL_BASE_URL, "where the official CSVs are fetched from")
    timeout: float = option(60.0, "network timeout per request", unit="s", above=0)
    out_dir: Path = option(Path("data/metadata"), "folder for the normalised CSVs")
    limit: int | None = option(None, "keep only the first N clips of each split (default: all)", minimum=1,
                               metavar="N", exclusive="subset")
    balanced_subset: int | None = option(
        None, "keep N clips per split that cover every class as evenly as possible (default: all)", minimum=1,
        metavar="N", exclusive="subset")
    seed: int = option(0, "random seed of --balanced-subset")
    skip_invalid: bool = option(
        False, "leave bad rows out and list them in <out-dir>/<split>.skipped.csv (default: stop at the first)")
    allow_empty: bool = option(
        False, "accept a segments file that yields no clip and write a split of 0 clips (default: such a file is an "
               "error)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "metadata", "read the AudioSet segment CSVs and write data/metadata/<split>.csv",
        description=(
            "Read the official AudioSet files (<split>_segments.csv and class_labels_indices.csv),\n"
            "check every row (id, window, labels) and write one normalised CSV per split:\n"
            "  <out-dir>/<split>.csv  ytid,start_seconds,end_seconds,positive_labels\n"
            "  <out-dir>/class_labels_indices.csv  (copied byte for byte)\n"
            "Without --source the files are fetched from Google's bucket into --raw-dir (once)."
        ),
        settings=MetadataSettings,
    )
    parser.set_defaults(func=run)


def run(namespace: argparse.Namespace) -> int:
    from pipeline.core.errors import FatError
    from pipeline.datafile import LABEL_CSV_NAME, load_label_csv
    from pipeline.metadata import (
        RAW_FILENAMES, balanced_subset, class_counts, copy_label_csv, fetch_raw_file, parse_segments_csv,
        write_metadata_csv, write_skip_report,
    )

    args = from_args(MetadataSettings, namespace)
    check_values(args)
    splits = list(dict.fromkeys(args.splits))

    def locate(name: str) -> Path:
        if args.source is not None:
            path = args.source / name
            if not path.is_file():
                raise FatError(f"{path}: not found (--source must hold the official {name})")
            return path
        log.info("fetching %s (kept in %s)", name, args.raw_dir)
        return fetch_raw_file(name, args.raw_dir, args.base_url, args.timeout)

    label_source = locate(LABEL_CSV_NAME)
    labels = load_label_csv(label_source)
    # Parse and check every split before writing anything: a bad file leaves the outputs untouched.
    results = {}
    for split in splits:
        source = locate(RAW_FILENAMES[split])
        frame, skipped = parse_segments_csv(source, labels.mids, skip_invalid=args.skip_invalid,
                                            allow_empty=args.allow_empty)
        total = len(frame)
        if not total:
            log.warning("%s: %s yields no clips; writing an empty split (--allow-empty)", split, source)
        if args.balanced_subset is not None:
            frame = balanced_subset(frame, args.balanced_subset, args.seed)
        elif args.limit is not None:
            frame = frame.head(args.limit).reset_index(drop=True)
        results[split] = (frame, skipped, total)

    copy_label_csv(label_source, args.out_dir / LABEL_CSV_NAME)
    for split, (frame, skipped, total) in results.items():
        out = args.out_dir / f"{split}.csv"
        write_metadata_csv(out, frame)
        covered = int((class_counts(frame, labels.mids) > 0).sum())
        log.info("%s: %d clips of %d valid, %d/%d classes present → %s", split, len(frame), total, covered, len(labels), out)
        if args.skip_invalid:
            report = args.out_dir / f"{split}.skipped.csv"
            write_skip_report(report, skipped)
            if skipped:
                log.warning("%s: skipped %d invalid row(s), listed in %s (first: line %d: %s)",
                            split, len(skipped), report, skipped[0].line, skipped[0].reason)
    return 0
