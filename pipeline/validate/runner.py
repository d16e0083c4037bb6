"""`fat validate`'s run: stream the clips through worker processes, keep input order, write the outputs.

Clips go to the workers in small batches with a bounded number in flight, and the results come
back in input order: the datafile and the rejection report are written as they arrive (both to
temporary names, renamed at the end), so memory stays bounded by the input columns whatever the
corpus size. Nothing is deleted or moved: a rejected clip stays where it is and is listed.
About 390 lines: the run's settings, its ordered worker pool and its reports, which share the
clip source; the checks of one file are `checks.py`.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from pipeline.core.errors import FatError
from pipeline.core.ids import check_split_name, split_labels
from pipeline.core.pool import ordered_map
from pipeline.datafile import (
    LABEL_CSV_NAME, ClipList, DatafileEntry, LabelSet, PackedStrings, label_csv_beside, load_label_csv, read_entries,
    wav_reference, write_datafile,
)
from pipeline.metadata import read_metadata_csv
from pipeline.settings import check_values, nested, option
from pipeline.validate.checks import PASS, REASONS, Thresholds, Verdict, check_file

log = logging.getLogger(__name__)

REPORT_COLUMNS = ("id", "path", "reason", "detail")


@dataclass(frozen=True)
class ClipSource:
    """The clips to check, in input order (the project's clip list, labels as the input spells
    them), and each clip's expected length in seconds (`windows`, NaN: none)."""

    clips: ClipList
    windows: np.ndarray
    ids_unique: bool = False  # already guaranteed by the reader (metadata CSVs)

    @property
    def name(self) -> str:
        return self.clips.source

    @property
    def ids(self) -> PackedStrings:
        return self.clips.ids

    @property
    def paths(self) -> PackedStrings:
        return self.clips.paths

    @property
    def label_strings(self) -> PackedStrings:
        assert self.clips.label_strings is not None  # read without a label set: the MIDs as listed
        return self.clips.label_strings

    def __len__(self) -> int:
        return len(self.clips)


def source_from_metadata(csv_path: str | Path, audio_dir: str | Path) -> ClipSource:
    """A split's metadata CSV: audio at `<audio_dir>/<ytid>.wav`, windows end − start."""
    frame = read_metadata_csv(csv_path)
    ids = frame["ytid"].tolist()
    folder = str(audio_dir)
    clips = ClipList(str(csv_path), PackedStrings(ids), PackedStrings(os.path.join(folder, f"{ytid}.wav") for ytid in ids),
                     PackedStrings(frame["positive_labels"].tolist()))
    windows = (frame["end_seconds"] - frame["start_seconds"]).to_numpy(dtype=np.float64)
    return ClipSource(clips, windows, True)


def source_from_datafile(path: str | Path, window_seconds: float | None = None) -> ClipSource:
    """An AST datafile (repeated ids kept, to be reported); every clip gets `window_seconds` if given."""
    clips = read_entries(path)
    window = math.nan if window_seconds is None else float(window_seconds)
    return ClipSource(clips, np.full(len(clips), window))


@dataclass(kw_only=True)
class ValidateSettings:
    """One validation: the `fat validate` options (params.yaml `validate:` keys), or what `fat prepare`
    asks for one of its splits (it passes the clips as `source`)."""

    split: str = option(help="split name (names the input and output files)")
    metadata_dir: Path = option(Path("data/metadata"),
                                "folder of <split>.csv and class_labels_indices.csv (fat metadata's output)")
    audio_dir: Path = option(Path("data/audio"), "audio root: clips at <audio-dir>/<split>/<ytid>.wav")
    datafile: Path | None = option(
        None, "check the clips of this AST datafile instead of a metadata CSV (default: none)")
    window_seconds: float | None = option(
        None, "with --datafile: the length every clip should have, seconds (default: none, only "
              "--min-seconds/--max-seconds apply)")
    labels: Path | None = option(
        None, "label CSV (default: class_labels_indices.csv beside the metadata CSV or datafile)")
    out_dir: Path = option(Path("data/datafiles"), "folder for the datafile and label CSV")
    report_dir: Path = option(Path("data/reports"), "folder for the report and summary")
    absolute_paths: bool = option(
        False, "write absolute wav paths (default: relative to the datafile's folder, relocatable)")
    workers: int = option(default_factory=lambda: os.cpu_count() or 1, help="worker processes (1 = in this process)",
                          minimum=1)
    batch_size: int = option(64, "clips per task sent to a worker", unit="clips", minimum=1)
    progress: bool | None = option(None, "show a progress bar (default: when stderr is a terminal)")
    thresholds: Thresholds = nested(Thresholds)
    source: ClipSource | None = None  # the clips, when the caller has them; else read from the metadata CSV or --datafile

    def clip_source(self) -> ClipSource:
        """The clips to check: `source`, else <metadata-dir>/<split>.csv with its audio, else --datafile's."""
        if self.source is not None:
            return self.source
        if self.datafile is not None:
            return source_from_datafile(self.datafile, self.window_seconds)
        if self.window_seconds is not None:
            raise FatError("--window-seconds applies to --datafile input (metadata CSVs carry each clip's window)")
        return source_from_metadata(self.metadata_dir / f"{self.split}.csv", self.audio_dir / self.split)

    @property
    def label_csv(self) -> Path:
        if self.labels is not None:
            return self.labels
        return label_csv_beside(self.datafile) if self.datafile is not None else self.metadata_dir / LABEL_CSV_NAME

    @property
    def output(self) -> Path:
        """The datafile written: the clips that pass."""
        return self.out_dir / f"{self.split}.json"

    @property
    def report(self) -> Path:
        return self.report_dir / f"{self.split}.rejected.csv"

    @property
    def summary(self) -> Path:
        return self.report_dir / f"{self.split}.validate.json"

    @property
    def class_report(self) -> Path:
        return self.report_dir / f"{self.split}.classes.csv"


def run_validate(settings: ValidateSettings) -> dict[str, Any]:
    """Check every clip; write the datafile, the label CSV, the rejection report and the summary."""
    check_split_name(settings.split)  # before it names a file to read (--split ../x read <metadata-dir>/../x.csv)
    try:
        settings.thresholds.check()
    except ValueError as exc:
        raise FatError(f"thresholds: {exc}") from None
    check_values(settings)
    if settings.datafile is not None and _same_file(settings.datafile, settings.output):
        raise FatError(f"{settings.datafile}: the input datafile would be overwritten by the output; "
                       "choose another --out-dir or --split")
    source = settings.clip_source()
    labels = load_label_csv(settings.label_csv)
    counts = dict.fromkeys(REASONS, 0)
    coverage = ClassCoverage(labels)
    passed_seconds = 0.0
    started = time.perf_counter()
    progress = _progress_bar(len(source), settings.split,
                             sys.stderr.isatty() if settings.progress is None else settings.progress)
    verdicts = _verdicts(source, labels, settings)

    def accepted_entries(report: Any) -> Iterator[DatafileEntry]:
        nonlocal passed_seconds
        for i, verdict in verdicts:
            progress.update(1)
            mids = split_labels(source.label_strings[i])
            coverage.add(mids, verdict.reason == PASS)
            if verdict.reason == PASS:
                passed_seconds += verdict.seconds
                yield DatafileEntry(source.ids[i], wav_reference(source.paths[i], settings.out_dir, settings.absolute_paths),
                                    mids)
            else:
                counts[verdict.reason] += 1
                report.writerow((source.ids[i], source.paths[i], verdict.reason, verdict.detail))

    try:
        with atomic_path(settings.report) as report_tmp, open(report_tmp, "w", encoding="utf-8", newline="") as handle:
            report = csv.writer(handle, lineterminator="\n")
            report.writerow(REPORT_COLUMNS)
            passed = write_datafile(settings.output, accepted_entries(report))
    finally:
        progress.close()
    _copy_label_csv(settings.label_csv, settings.out_dir / LABEL_CSV_NAME)
    coverage.write_csv(settings.class_report)
    seconds = time.perf_counter() - started
    summary = {
        "split": settings.split,
        "input": source.name,
        "clips": len(source),
        "passed": passed,
        "rejected": len(source) - passed,
        "reasons": counts,
        "passed_audio_hours": round(passed_seconds / 3600, 4),
        "classes": coverage.summary(),
        "seconds": round(seconds, 3),
        "files_per_second": round(len(source) / seconds, 1) if seconds > 0 else None,
        "workers": settings.workers,
        "thresholds": asdict(settings.thresholds),
    }
    write_json_atomic(settings.summary, summary)
    classes = summary["classes"]
    if classes["lost"]:  # here, not in the command, so that fat prepare warns too
        log.warning("%s: %d of %d classes lost every clip (see %s)", settings.split, classes["lost"],
                    classes["listed"], settings.class_report)
    lowest = coverage.lowest()
    if lowest:
        log.info("%s: classes that kept the smallest share of their clips: %s (all: %s)", settings.split,
                 ", ".join(lowest), settings.class_report)
    return summary


class ClassCoverage:
    """Clips listed and kept per class: the "why is my dataset smaller than yours" view.

    A split that loses a rare class loses that class's AP outright, which moves mAP far more than
    the same number of clips spread over common classes; this names such classes.
    """

    COLUMNS = ("index", "mid", "display_name", "listed", "kept", "kept_fraction")

    def __init__(self, labels: LabelSet) -> None:
        self.labels = labels
        self.listed = np.zeros(len(labels), dtype=np.int64)
        self.kept = np.zeros(len(labels), dtype=np.int64)

    def add(self, mids: Iterable[str], kept: bool) -> None:
        for mid in mids:
            if mid in self.labels:  # unknown labels are rejected (and reported) on their own
                index = self.labels.index_of(mid)
                self.listed[index] += 1
                self.kept[index] += kept

    def write_csv(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(self.COLUMNS)
            for i, (mid, name) in enumerate(zip(self.labels.mids, self.labels.names, strict=True)):
                share = f"{self.kept[i] / self.listed[i]:.4f}" if self.listed[i] else ""
                writer.writerow((i, mid, name, int(self.listed[i]), int(self.kept[i]), share))

    def summary(self) -> dict[str, int]:
        """Numbers only (the summary is a DVC metrics file): classes listed, kept, lost entirely."""
        listed = self.listed > 0
        return {"listed": int(listed.sum()), "kept": int((self.kept > 0).sum()),
                "lost": int((listed & (self.kept == 0)).sum())}

    def lowest(self, count: int = 5) -> list[str]:
        """The classes that kept the smallest share of their clips, as 'name (kept/listed)'."""
        listed = np.flatnonzero(self.listed > 0)
        share = self.kept[listed] / self.listed[listed]
        chosen = listed[np.argsort(share, kind="stable")[:count]]
        return [f"{self.labels.names[i]} ({self.kept[i]}/{self.listed[i]})" for i in chosen if self.kept[i] < self.listed[i]]


def _verdicts(source: ClipSource, labels: LabelSet, settings: ValidateSettings) -> Iterator[tuple[int, Verdict]]:
    """(input position, verdict) of every clip, in input order."""
    check = functools.partial(check_batch, limits=settings.thresholds)
    seen: set[str] | None = None if source.ids_unique else set()
    batches = _batches(source, labels, settings.batch_size, seen)
    for (positions, decided), results in ordered_map(check, batches, settings.workers):
        results_iter = iter(results)
        for i in positions:
            yield i, decided[i] if i in decided else next(results_iter)


Batch = tuple[tuple[range, dict[int, Verdict]], list[tuple[str, float]]]


def _batches(source: ClipSource, labels: LabelSet, size: int, seen: set[str] | None) -> Iterator[Batch]:
    """Runs of clips: those decided without opening a file (ids, labels) and the file tasks of the rest."""
    for start in range(0, len(source), size):
        positions = range(start, min(start + size, len(source)))
        decided: dict[int, Verdict] = {}
        tasks: list[tuple[str, float]] = []
        for i in positions:
            verdict = _label_verdict(source, labels, i, seen)
            if verdict is None:
                tasks.append((source.paths[i], float(source.windows[i])))
            else:
                decided[i] = verdict
        yield (positions, decided), tasks


def _label_verdict(source: ClipSource, labels: LabelSet, i: int, seen: set[str] | None) -> Verdict | None:
    if seen is not None:
        clip_id = source.ids[i]
        if clip_id in seen:
            return Verdict("duplicate-id", f"id {clip_id} is listed more than once", 0.0)
        seen.add(clip_id)
    mids = split_labels(source.label_strings[i])
    if not mids:
        return Verdict("no-labels", "empty label list", 0.0)
    unknown = [mid for mid in mids if mid not in labels]
    if unknown:
        return Verdict("unknown-label", f"{','.join(unknown)} not in {labels.path.name if labels.path else 'the label CSV'}", 0.0)
    return None


def check_batch(tasks: list[tuple[str, float]], limits: Thresholds) -> list[Verdict]:
    """Run in a worker: the verdicts of a batch of (path, window seconds)."""
    return [_checked(path, window, limits) for path, window in tasks]


def _checked(path: str, window: float, limits: Thresholds) -> Verdict:
    """One file's verdict; a decoder failing in a way no check foresaw still only rejects that file."""
    try:
        return check_file(path, window, limits)
    except Exception as exc:  # noqa: BLE001 - reported per file, never ends the run
        return Verdict("unreadable", f"unexpected {type(exc).__name__}: {exc}", 0.0)


def _progress_bar(total: int, split: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"validate {split}", unit="clip", disable=not enabled, file=sys.stderr,
                mininterval=0.5, smoothing=0.1)


def _copy_label_csv(source: Path, destination: Path) -> None:
    data = source.read_bytes()
    if _same_file(source, destination) or (destination.is_file() and destination.read_bytes() == data):
        return
    write_bytes_atomic(destination, data)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
