"""AudioSet segment lists: parse the official raw CSVs, check every row, write one normalised CSV per split.

Raw layout (as Google publishes it): comment lines starting with `#`, then rows
`YTID, start_seconds, end_seconds, "mid,mid,..."` (a space after each comma, the label list
quoted). The normalised layout that later stages read is a plain CSV with the header
`ytid,start_seconds,end_seconds,positive_labels`. Every problem names the file and line.
About 380 lines: one file format's reader, checker, writer, subset and fetch, kept together
because they share its rules (the label CSV itself is `pipeline.datafile.labels`).
"""

from __future__ import annotations

import csv
import heapq
import io
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from pipeline.core.errors import FatError
from pipeline.core.ids import YTID_PATTERN, is_valid_ytid, split_labels
from pipeline.datafile.labels import LABEL_CSV_NAME, LabelSet, load_label_csv

if TYPE_CHECKING:  # pandas is imported where used, so that `fat --help` stays fast
    import pandas as pd

SPLITS: tuple[str, ...] = ("balanced_train", "eval", "unbalanced_train")
RAW_FILENAMES: dict[str, str] = {split: f"{split}_segments.csv" for split in SPLITS}
COLUMNS: tuple[str, ...] = ("ytid", "start_seconds", "end_seconds", "positive_labels")
# AudioSet windows are at most 10 s; the small tolerance absorbs the 3-decimal rounding of the CSVs.
MAX_WINDOW_SECONDS = 10.0
WINDOW_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SkippedRow:
    """A raw row that `--skip-invalid` left out, with why (written to the skip report)."""

    file: str
    line: int
    ytid: str
    reason: str
    text: str


# --------------------------------------------------------------------------- label CSV


def copy_label_csv(source: str | Path, destination: str | Path) -> LabelSet:
    """Check `source` and copy it byte for byte (its sha256 is provenance for the logits store)."""
    labels = load_label_csv(source)
    write_bytes_atomic(destination, Path(source).read_bytes())
    return labels


# --------------------------------------------------------------------------- raw segment CSVs


def parse_segments_csv(
    path: str | Path,
    known_mids: Iterable[str] | None = None,
    skip_invalid: bool = False,
    allow_empty: bool = False,
) -> tuple[pd.DataFrame, list[SkippedRow]]:
    """Parse an official `*_segments.csv`; return (rows, skipped).

    Each row is checked: 4 fields, a valid YouTube id (unique in the file), finite times with
    0 ≤ start < end and end − start ≤ 10 s, at least one label, every label a known MID.
    A bad row raises a FatError naming file and line, unless `skip_invalid`, when it is
    returned in `skipped` instead (never dropped silently). A file that yields no clip (0 bytes,
    only comments, every row skipped) is a FatError unless `allow_empty`: a truncated download
    would otherwise become a split of 0 clips that every later stage accepts.
    """
    import pandas as pd

    path = Path(path)
    known = frozenset(known_mids) if known_mids is not None else None
    ytids: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    labels: list[str] = []
    skipped: list[SkippedRow] = []
    first_line: dict[str, int] = {}
    data_rows = 0
    for line, text in _data_lines(path):
        data_rows += 1
        if data_rows == 1 and text.lstrip().upper().startswith("YTID"):
            continue  # an uncommented header line, as some copies have
        try:
            ytid, start, end, mids = _check_segment_row(text, known)
            if ytid in first_line:
                raise ValueError(f"id {ytid} repeats line {first_line[ytid]}")
        except ValueError as exc:
            reason = str(exc)
            if not skip_invalid:
                raise FatError(f"{path}:{line}: {reason}") from None
            skipped.append(SkippedRow(str(path), line, _first_field(text), reason, text))
            continue
        first_line[ytid] = line
        ytids.append(ytid)
        starts.append(start)
        ends.append(end)
        labels.append(",".join(mids))
    if not ytids and not allow_empty:
        raise FatError(_no_clips_message(path, skipped))
    frame = pd.DataFrame(
        {"ytid": pd.Series(ytids, dtype=object), "start_seconds": np.asarray(starts, dtype=np.float64),
         "end_seconds": np.asarray(ends, dtype=np.float64), "positive_labels": pd.Series(labels, dtype=object)}
    )
    return frame, skipped


def _no_clips_message(path: Path, skipped: Sequence[SkippedRow]) -> str:
    if skipped:
        first = skipped[0]
        what = f"none of its {len(skipped)} row(s) is valid (first: line {first.line}: {first.reason})"
    else:
        what = "no segment rows (the file is empty or holds only comments)"
    return f"{path}: {what}; pass --allow-empty if a split of 0 clips is meant"


def _data_lines(path: Path) -> Iterable[tuple[int, str]]:
    """(line number, text) of every non-comment, non-blank line."""
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise FatError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        try:
            for line, text in enumerate(handle, start=1):
                stripped = text.strip()
                if stripped and not stripped.startswith("#"):
                    yield line, text.rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise FatError(f"{path}: not UTF-8 text ({exc})") from None


def _check_segment_row(text: str, known: frozenset[str] | None) -> tuple[str, float, float, list[str]]:
    """Split and check one raw row; ValueError with a reason when it is bad."""
    try:
        cells = next(csv.reader([text], skipinitialspace=True, strict=True))
    except (csv.Error, StopIteration) as exc:
        raise ValueError(f"malformed row ({exc})") from None
    if len(cells) != 4:
        raise ValueError(f"expected 4 fields (YTID, start_seconds, end_seconds, positive_labels), found {len(cells)}")
    ytid, start_text, end_text, label_text = (cell.strip() for cell in cells)
    if not is_valid_ytid(ytid):
        raise ValueError(f"invalid YouTube id {ytid!r}")
    start = _parse_seconds(start_text, "start_seconds")
    end = _parse_seconds(end_text, "end_seconds")
    _check_window(start, end)
    mids = list(split_labels(label_text))
    if not mids:
        raise ValueError("no positive labels")
    if known is not None:
        unknown = [mid for mid in mids if mid not in known]
        if unknown:
            raise ValueError(f"unknown label MID(s) {', '.join(unknown)} (not in {LABEL_CSV_NAME})")
    return ytid, start, end, mids


def _parse_seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} {text!r} is not finite")
    return value


def _check_window(start: float, end: float) -> None:
    if start < 0:
        raise ValueError(f"start_seconds {start:g} is negative")
    if start >= end:
        raise ValueError(f"start_seconds {start:g} is not before end_seconds {end:g}")
    if end - start > MAX_WINDOW_SECONDS + WINDOW_TOLERANCE:
        raise ValueError(f"window {start:g}–{end:g} s is {end - start:g} s, longer than {MAX_WINDOW_SECONDS:g} s")


def _first_field(text: str) -> str:
    return text.split(",", 1)[0].strip()


# --------------------------------------------------------------------------- normalised CSVs


def write_metadata_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write the normalised split CSV atomically (labels always quoted, times to the millisecond)."""
    lines = [",".join(COLUMNS)]
    for ytid, start, end, labels in zip(frame["ytid"], frame["start_seconds"], frame["end_seconds"], frame["positive_labels"]):
        lines.append(f'{ytid},{start:.3f},{end:.3f},"{labels}"')
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_metadata_csv(path: str | Path) -> pd.DataFrame:
    """Read a normalised `data/metadata/<split>.csv`.

    Returns a DataFrame with columns ytid (str), start_seconds (float), end_seconds (float),
    positive_labels (str, comma-joined MIDs), in file order. Checks the header, the ids
    (valid and unique), and the windows; a FatError names the file and line of the first problem.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FatError(f"{path}: no such metadata file (run `fat metadata` first)")
    lines, cells = _metadata_records(path)
    frame = pd.DataFrame({name: pd.Series(column, dtype=object) for name, column in zip(COLUMNS, cells, strict=True)})
    for column in ("start_seconds", "end_seconds"):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy())
        if bad.size:
            raise FatError(f"{path}:{lines[bad[0]]}: {column} {frame[column].iloc[bad[0]]!r} is not a number")
        frame[column] = numbers.astype(np.float64)
    ytids = frame["ytid"].astype(str)
    valid = ytids.str.fullmatch(YTID_PATTERN.pattern)
    if not valid.all():
        row = int(np.flatnonzero(~valid.to_numpy())[0])
        raise FatError(f"{path}:{lines[row]}: invalid YouTube id {ytids.iloc[row]!r}")
    duplicated = ytids.duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise FatError(f"{path}:{lines[row]}: id {ytids.iloc[row]} appears twice")
    for row, (start, end, labels) in enumerate(zip(frame["start_seconds"], frame["end_seconds"], frame["positive_labels"])):
        try:
            if not (math.isfinite(start) and math.isfinite(end)):
                raise ValueError("times must be finite")
            _check_window(start, end)
            if not labels.strip():
                raise ValueError("no positive labels")
        except ValueError as exc:
            raise FatError(f"{path}:{lines[row]}: {exc}") from None
    frame["ytid"] = ytids
    frame["positive_labels"] = frame["positive_labels"].astype(str)
    return frame.reset_index(drop=True)


def _metadata_records(path: Path) -> tuple[list[int], tuple[list[str], ...]]:
    """(line of each row, the four columns) of a normalised CSV, header checked; blank lines skipped.

    Python's csv reader rather than pandas': its errors come with the record's line, where pandas'
    tokenizer gave a two-line message without one, and it lets a quote left open (which swallows
    the next rows into one label list) be refused instead of read.
    """
    lines: list[int] = []
    columns: tuple[list[str], ...] = ([], [], [], [])
    appends = [column.append for column in columns]
    start = 1
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, skipinitialspace=True, strict=True)
            header = next(reader, None)
            if header is None or tuple(cell.strip() for cell in header) != COLUMNS:
                found = "nothing (empty file)" if header is None else ",".join(header)
                raise FatError(f"{path}:1: expected the header {','.join(COLUMNS)}, found {found}")
            start = reader.line_num + 1
            for cells in reader:
                if cells:
                    _check_record(path, start, reader.line_num, cells)
                    lines.append(start)
                    for append, cell in zip(appends, cells):
                        append(cell)
                start = reader.line_num + 1
    except csv.Error as exc:
        raise FatError(f"{path}:{start}: malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise FatError(f"{path}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise FatError(f"{path}: cannot read ({exc.strerror})") from None
    return lines, columns


def _check_record(path: Path, start: int, end: int, cells: list[str]) -> None:
    if end != start:
        raise FatError(f"{path}:{start}: a quoted field runs on to line {end} (a quote left open?)")
    if len(cells) != len(COLUMNS):
        raise FatError(f"{path}:{start}: expected {len(COLUMNS)} fields ({','.join(COLUMNS)}), found {len(cells)}")


# --------------------------------------------------------------------------- subsets


def balanced_subset(frame: pd.DataFrame, size: int, seed: int = 0) -> pd.DataFrame:
    """Pick `size` clips covering every class as evenly as the data allows.

    Greedy water-filling: repeatedly take the class with the fewest picked clips so far (ties
    broken at random) and add one random unpicked clip that carries it. Multi-label clips count
    for all their classes, so frequent classes fill up by themselves; rare classes get every
    clip they have. The result keeps the input order and is deterministic for a given seed.
    """
    if size < 0:
        raise FatError(f"--balanced-subset must be ≥ 0, got {size}")
    if size >= len(frame):
        return frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    clip_labels = [split_labels(labels) for labels in frame["positive_labels"]]
    members: dict[str, list[int]] = {}
    for row, mids in enumerate(clip_labels):
        for mid in mids:
            members.setdefault(mid, []).append(row)
    queues = {mid: list(rng.permutation(rows)) for mid, rows in members.items()}
    counts = dict.fromkeys(members, 0)
    tiebreak = dict(zip(members, rng.permutation(len(members)).tolist()))
    heap = [(0, tiebreak[mid], mid) for mid in members]
    heapq.heapify(heap)
    picked = np.zeros(len(frame), dtype=bool)
    taken = 0
    while taken < size and heap:
        count, order, mid = heapq.heappop(heap)
        if count != counts[mid]:
            heapq.heappush(heap, (counts[mid], order, mid))  # stale entry: the class filled up meanwhile
            continue
        queue = queues[mid]
        while queue and picked[queue[-1]]:
            queue.pop()
        if not queue:
            continue  # every clip of this class is in: it drops out
        row = int(queue.pop())
        picked[row] = True
        taken += 1
        for other in clip_labels[row]:
            counts[other] += 1
        heapq.heappush(heap, (counts[mid], order, mid))
    return frame[picked].reset_index(drop=True)


def class_counts(frame: pd.DataFrame, mids: Sequence[str] | None = None) -> pd.Series:
    """Number of clips per MID (all MIDs of `mids` included, with 0 where absent)."""
    import pandas as pd

    counts: dict[str, int] = dict.fromkeys(mids, 0) if mids is not None else {}
    for labels in frame["positive_labels"]:
        for mid in split_labels(labels):
            counts[mid] = counts.get(mid, 0) + 1
    return pd.Series(counts, dtype=np.int64)


def write_skip_report(path: str | Path, skipped: Sequence[SkippedRow]) -> None:
    """CSV of the rows `--skip-invalid` left out: file, line, ytid, reason, text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "line", "ytid", "reason", "text"])
    for row in skipped:
        writer.writerow([row.file, row.line, row.ytid, row.reason, row.text])
    write_text_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- fetching the official files

OFFICIAL_BASE_URL = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/"


def fetch_raw_file(name: str, raw_dir: str | Path, base_url: str = OFFICIAL_BASE_URL, timeout: float = 60.0) -> Path:
    """Download `base_url + name` into `raw_dir` atomically; a file already there is kept as is.

    Returns the local path. Network problems become a FatError naming the URL and suggesting
    `--source` (the way to run offline).
    """
    import urllib.error  # here, not at the top: urllib.request loads ssl and http, and `fat --help` reads this module
    import urllib.request

    target = Path(raw_dir) / name
    if target.is_file() and target.stat().st_size > 0:
        return target
    url = base_url.rstrip("/") + "/" + name
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
            with open(tmp, "wb") as handle:
                shutil.copyfileobj(response, handle, length=1 << 20)
    except urllib.error.HTTPError as exc:
        raise FatError(f"{url}: HTTP {exc.code} {exc.reason} (use --source DIR with local copies)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FatError(f"{url}: cannot download ({reason}); offline? use --source DIR with local copies") from None
    return target
