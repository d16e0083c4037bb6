"""ESC-50's release layout (`audio/*.wav`, `meta/esc50.csv`) → per-fold AST datafiles.

ESC-50 is scored by 5-fold cross-validation over the folds its authors fixed (clips cut from one
recording share a fold): for each k the model trains on the other four folds and is tested on
fold k, and the accuracy is averaged over the five. Both sides of every split are written, so a
pipeline names two files per fold instead of computing "the other four":

    <name>_fold<k>.json          fold k's clips (the test set when fold k is held out)
    <name>_except_fold<k>.json   the other four folds' clips (its training set)

Ids are the file names without extension (`1-100032-A-0`), unique in the release. Classes are
the `target` numbers in order, with MIDs `/m/esc00` … and the `category` as display name.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import FatError
from pipeline.datafile import (
    LABEL_CSV_NAME, DatafileEntry, LabelSet, load_datafile, load_label_csv, wav_reference, write_datafile,
    write_label_csv,
)

log = logging.getLogger(__name__)

FOLDS = (1, 2, 3, 4, 5)
RELEASE_CLASSES = 50
META_CSV = Path("meta") / "esc50.csv"
AUDIO_DIR = "audio"
COLUMNS = ("filename", "fold", "target", "category")


@dataclass(frozen=True)
class Esc50Clip:
    filename: str
    fold: int
    target: int
    line: int  # in meta/esc50.csv, for messages


def fold_name(name: str, fold: int) -> str:
    """The datafile stem of fold k's clips."""
    return f"{name}_fold{fold}"


def except_fold_name(name: str, fold: int) -> str:
    """The datafile stem of the training set when fold k is held out."""
    return f"{name}_except_fold{fold}"


def read_meta(root: Path) -> tuple[list[Esc50Clip], list[str]]:
    """The rows of meta/esc50.csv and the category of each target; every problem names the file and line."""
    meta = root / META_CSV
    if not meta.is_file():
        raise FatError(f"{root}: not an ESC-50 release (no {META_CSV})")
    clips: list[Esc50Clip] = []
    categories: dict[int, tuple[str, int]] = {}
    seen: dict[str, int] = {}
    with open(meta, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise FatError(f"{meta}: empty file (expected the header {','.join(COLUMNS)},...)")
        header = [name.strip() for name in header]
        absent = [name for name in COLUMNS if name not in header]
        if absent:
            raise FatError(f"{meta}:1: no {', '.join(absent)} column (header: {','.join(header)})")
        where = {name: header.index(name) for name in COLUMNS}
        for row in reader:
            line = reader.line_num
            if not any(field.strip() for field in row):
                continue
            if len(row) < len(header):
                raise FatError(f"{meta}:{line}: {len(row)} fields, the header has {len(header)}")
            filename, fold_text, target_text, category = (row[where[name]].strip() for name in COLUMNS)
            if not filename or "/" in filename or "\\" in filename or filename.startswith("."):
                raise FatError(f"{meta}:{line}: filename {filename!r} is not a plain file name in {AUDIO_DIR}/")
            if filename in seen:
                raise FatError(f"{meta}:{line}: {filename} is listed again (first on line {seen[filename]})")
            seen[filename] = line
            fold = _integer(meta, line, "fold", fold_text)
            if fold not in FOLDS:
                raise FatError(f"{meta}:{line}: fold {fold} of {filename} is outside 1..{FOLDS[-1]}")
            target = _integer(meta, line, "target", target_text)
            if target < 0:
                raise FatError(f"{meta}:{line}: target {target} of {filename} is negative")
            if any(ch in category for ch in ',"\n\r') or not category:
                raise FatError(f"{meta}:{line}: category {category!r} must be non-empty, without comma or quote")
            known = categories.setdefault(target, (category, line))
            if known[0] != category:
                raise FatError(f"{meta}:{line}: target {target} is {category!r} here but {known[0]!r} on line "
                               f"{known[1]}: one target, one category")
            clips.append(Esc50Clip(filename, fold, target, line))
    if not clips:
        raise FatError(f"{meta}: no clips listed")
    unknown = [t for t in range(max(categories) + 1) if t not in categories]
    if unknown:
        raise FatError(f"{meta}: targets must be 0..{max(categories)} without gaps; no clip has target "
                       f"{', '.join(map(str, unknown[:10]))} (so target {max(categories)} is unknown to the "
                       "class list)")
    return clips, [categories[t][0] for t in range(len(categories))]


def _integer(meta: Path, line: int, column: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FatError(f"{meta}:{line}: {column} {text!r} is not a whole number") from None


def prepare_esc50(root: str | Path, out_dir: str | Path, name: str = "esc50", absolute: bool = False) -> dict[str, Path]:
    """List the release into `<out_dir>/<name>_fold<k>.json`, `<name>_except_fold<k>.json` and the label
    CSV; returns the fold datafiles by stem (the files `fat prepare` then checks, each clip once)."""
    root = Path(root)
    if not root.is_dir():
        raise FatError(f"{root}: no such folder")
    out_dir = Path(out_dir)
    if not name or os.sep in name or name.startswith("."):
        raise FatError(f"--name {name!r}: must be a plain name (it prefixes the output files)")
    clips, categories = read_meta(root)
    if len(categories) != RELEASE_CLASSES:
        log.warning("%s: %d classes; the ESC-50 release has %d", root / META_CSV, len(categories), RELEASE_CLASSES)
    missing = [c for c in clips if not (root / AUDIO_DIR / c.filename).is_file()]
    if missing:
        shown = "\n  ".join(f"{root / META_CSV}:{c.line}: {root / AUDIO_DIR / c.filename}" for c in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FatError(f"{root / META_CSV}: {len(missing)} listed clips have no audio file:\n  {shown}{more}")
    mids = [f"/m/esc{t:02d}" for t in range(len(categories))]
    for fold in FOLDS:  # the whole protocol is checked before anything is written
        if not any(c.fold == fold for c in clips):
            raise FatError(f"{root / META_CSV}: fold {fold} has no clips: ESC-50's protocol needs all of folds 1..5")
    check_training_classes(root / META_CSV, {fold: {c.target for c in clips if c.fold == fold} for fold in FOLDS},
                           mids, categories)
    labels = write_label_csv(out_dir / LABEL_CSV_NAME, mids, categories)
    folds: dict[str, Path] = {}
    for fold in FOLDS:
        entries = [DatafileEntry(os.path.splitext(c.filename)[0],
                                 wav_reference(root / AUDIO_DIR / c.filename, out_dir, absolute), (mids[c.target],))
                   for c in clips if c.fold == fold]
        path = out_dir / f"{fold_name(name, fold)}.json"
        write_datafile(path, entries)
        folds[path.stem] = path
    write_training_sets(out_dir, name, labels, absolute)
    counts = {fold: sum(c.fold == fold for c in clips) for fold in FOLDS}
    log.info("%s: %d classes, %d clips; per fold %s", root, len(categories), len(clips),
             ", ".join(f"{k}: {n}" for k, n in counts.items()))
    return folds


def check_training_classes(source: Path, classes_of_fold: dict[int, set[int]], mids: Sequence[str],
                           names: Sequence[str]) -> None:
    """Every class keeps a training clip in every split: a model cannot learn a class it never sees,
    and its fold's accuracy would silently count a class that was never taught."""
    for held_out in FOLDS:
        others = [fold for fold in FOLDS if fold != held_out]
        covered = set().union(*(classes_of_fold[fold] for fold in others))
        absent = [i for i in range(len(mids)) if i not in covered]
        if absent:
            named = ", ".join(f"{mids[i]} ({names[i]})" for i in absent[:5])
            raise FatError(f"{source}: with fold {held_out} held out, class {named}{' ...' if len(absent) > 5 else ''} "
                           f"has no training clip in folds {', '.join(map(str, others))}")


def write_training_sets(folder: Path, name: str, labels: LabelSet | None = None, absolute: bool = False) -> list[Path]:
    """`<name>_except_fold<k>.json` from the fold datafiles in `folder`: the clips of the other four folds
    (after `fat prepare`'s checks a class may have lost its training clips: refused the same way)."""
    labels = labels or load_label_csv(folder / LABEL_CSV_NAME)
    folds = {fold: load_datafile(folder / f"{fold_name(name, fold)}.json", labels) for fold in FOLDS}
    check_training_classes(folder, {fold: {int(c) for c in part.class_indices} for fold, part in folds.items()},
                           labels.mids, labels.names)
    written = []
    for held_out in FOLDS:
        path = folder / f"{except_fold_name(name, held_out)}.json"
        write_datafile(path, _entries([folds[fold] for fold in FOLDS if fold != held_out], folder, absolute))
        written.append(path)
    return written


def _entries(parts: Sequence, folder: Path, absolute: bool) -> Iterable[DatafileEntry]:
    for part in parts:
        for i in range(len(part)):
            yield DatafileEntry(part.ids[i], wav_reference(part.paths[i], folder, absolute), tuple(part.labels[i]))
