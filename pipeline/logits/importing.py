"""`fat logits import`: a teacher store from predictions someone else computed; no model runs.

The rows reach the datafiles' clips by id, as a computed store's do: EfficientAT's released PaSST
ensemble predictions (`--index fname_to_index.pkl`, upstream's clip names) or any teacher's array
with a list of ids (`--ids`). The store holds the clips that matched, in datafile order; the
others are listed in `<out stem>.unmatched.txt` and the store is complete only when none is
missing (`fat train --missing-teacher mask` trains with a partial one). Too low a coverage, rows
that are not finite, numbers that look like probabilities but were not declared so, and a
column count other than the label CSV's are refused before anything is written.

Provenance attributes (beside the contract's): `imported` true, `sources` (JSON: each file's name,
role, bytes and sha256), `values` (what the input held), `published_map` when given, `source_rows`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.core.atomic import write_text_atomic
from pipeline.core.errors import FatError
from pipeline.datafile import ClipList, file_sha256, load_clips, load_label_csv
from pipeline.logits.foreign import read_id_list, read_matrix, read_name_index, rows_by_clip
from pipeline.logits.settings import ImportSettings
from pipeline.logits.teacher_metrics import teacher_metrics
from pipeline.logits.teachers import digest
from pipeline.store import write_store

log = logging.getLogger(__name__)

PROBABILITY_CLIP = 1e-6  # probabilities are clipped to [ε, 1 − ε] before the logit: ±13.8 at most
FLOAT16_MAX = 65504.0
BLOCK_ROWS = 16384  # rows gathered, checked and written at a time: a full AudioSet import never sits in memory


@dataclass
class ImportOutcome:
    store: Path
    complete: bool
    matched: int
    requested: int
    unmatched_list: Path | None
    metrics: dict[str, Any] | None


def import_store(settings: ImportSettings) -> ImportOutcome:
    """Check the predictions against the datafiles and label CSV, then write the store (atomically)."""
    from pipeline.logits.run import find_label_csv  # the same default label CSV as `fat logits`

    settings.check()
    if settings.out.exists() and not settings.overwrite:
        raise FatError(f"{settings.out}: exists; choose another --out, or pass --overwrite to replace it")
    label_csv = find_label_csv(settings)
    if label_csv is None:
        raise FatError(f"no label CSV beside {settings.datafile[0]}: pass --labels (the classes the columns are)")
    labels = load_label_csv(label_csv)
    clips = load_clips(settings.datafile, labels)
    matrix = read_matrix(settings.logits)
    if matrix.shape[1] != len(labels):
        raise FatError(f"{settings.logits}: {matrix.shape[1]} columns, but {label_csv} has {len(labels)} classes: "
                       "the columns must be the label CSV's classes")
    index_file = settings.index or settings.ids
    if settings.index is not None:
        names = read_name_index(settings.index, matrix.shape[0])
        row_of = rows_by_clip(names, list(clips.ids), settings.index)
    else:
        names = {clip_id: row for row, clip_id in enumerate(read_id_list(settings.ids, matrix.shape[0]))}
        row_of = names
    matched = [clip_id for clip_id in clips.ids if clip_id in row_of]
    unmatched = [clip_id for clip_id in clips.ids if clip_id not in row_of]
    check_coverage(settings, clips, matched, unmatched, list(names)[:3], index_file)

    source_rows = np.array([row_of[clip_id] for clip_id in matched], dtype=np.int64)
    attrs = provenance(settings, labels.sha256, clips, matrix.shape[0])
    attrs.update({"requested": len(clips), "missing": len(unmatched), "dtype": settings.store_dtype})
    write_store(settings.out, matched, checked_blocks(settings, matrix, source_rows, matched), len(labels), attrs,
                complete=not unmatched, dtype=settings.store_dtype)
    if unmatched:
        write_text_atomic(settings.unmatched_list, "".join(f"{clip_id}\n" for clip_id in unmatched))
        log.warning("%d of %d clips of %s have no row in %s: listed in %s; the store is incomplete "
                    "(fat train --missing-teacher mask trains with the others)", len(unmatched), len(clips),
                    clips.source, index_file, settings.unmatched_list)
    else:
        settings.unmatched_list.unlink(missing_ok=True)  # a stale list from an earlier import no longer holds
    metrics = teacher_metrics(settings, clips, published_map=settings.published_map)
    return ImportOutcome(settings.out, not unmatched, len(matched), len(clips),
                         settings.unmatched_list if unmatched else None, metrics)


def check_coverage(settings: ImportSettings, clips: ClipList, matched: list[str], unmatched: list[str],
                   their_names: list[str], index_file: Path) -> None:
    """Refuse when too few of the datafiles' clips have a row: the files and datafiles do not belong together."""
    share = len(matched) / len(clips)
    if matched and share >= settings.min_coverage:
        log.info("%d of %d clips of %s (%.1f %%) have a row in %s", len(matched), len(clips), clips.source,
                 100 * share, index_file)
        return
    theirs = ", ".join(repr(name) for name in their_names) or "none"
    ours = ", ".join(repr(clip_id) for clip_id in unmatched[:3])
    counted = "none" if not matched else f"only {len(matched)} ({100 * share:.1f} %)"
    raise FatError(f"{index_file}: {counted} of the {len(clips)} clips of {clips.source} have a row (--min-coverage "
                   f"{settings.min_coverage}); clip ids such as {ours} are not among its names (e.g. {theirs}): check "
                   "that the predictions belong to these datafiles; nothing was written")


def checked_blocks(settings: ImportSettings, matrix: np.ndarray, source_rows: np.ndarray,
                   ids: list[str]) -> Iterator[tuple[int, np.ndarray]]:
    """The store's rows in blocks, each checked (finite, in range for what they are) and made logits.

    Undeclared input whose values all lie in [0, 1] is refused after the last block, before the
    store is renamed into place: write_store then leaves nothing behind.
    """
    low, high = np.inf, -np.inf
    for start in range(0, len(source_rows), BLOCK_ROWS):
        rows = source_rows[start:start + BLOCK_ROWS]
        values = np.asarray(matrix[rows], dtype=np.float64)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            count = int((~finite).sum())
            raise FatError(f"{settings.logits}: row {int(rows[first])} (clip {ids[start + first]}) holds NaN or "
                           f"infinite values{f', as do {count - 1} more imported rows of this block' if count > 1 else ''}"
                           "; nothing was written")
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        if settings.values == "probabilities":
            outside = np.flatnonzero(((values < 0) | (values > 1)).any(axis=1))
            if outside.size:
                row = int(outside[0])
                raise FatError(f"{settings.logits}: row {int(rows[row])} (clip {ids[start + row]}) holds "
                               f"{values[row][(values[row] < 0) | (values[row] > 1)][0]:g}, not a probability; "
                               "nothing was written")
            clipped = np.clip(values, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
            values = np.log(clipped) - np.log1p(-clipped)
        elif settings.store_dtype == "float16" and np.abs(values).max() > FLOAT16_MAX:
            row = int(np.flatnonzero(np.abs(values).max(axis=1) > FLOAT16_MAX)[0])
            raise FatError(f"{settings.logits}: row {int(rows[row])} (clip {ids[start + row]}) holds a logit beyond "
                           f"±{FLOAT16_MAX:g}, which float16 cannot store: pass --store-dtype float32")
        yield start, values
    if settings.values is None and 0.0 <= low and high <= 1.0:
        raise FatError(f"{settings.logits}: every value of the {len(source_rows)} imported rows lies in [0, 1]: they "
                       "look like probabilities, not logits; say which they are with --values probabilities (stored "
                       "as logits) or --values logits; nothing was written")


def provenance(settings: ImportSettings, label_sha: str, clips: ClipList, source_rows: int) -> dict[str, Any]:
    """Where the rows came from: the files and their sha256, the teacher's name, what the numbers were."""
    sources = [{"role": "predictions", "file": settings.logits.name, "bytes": settings.logits.stat().st_size,
                "sha256": file_sha256(settings.logits)}]
    index_file = settings.index or settings.ids
    sources.append({"role": "name index" if settings.index is not None else "id list", "file": index_file.name,
                    "bytes": index_file.stat().st_size, "sha256": file_sha256(index_file)})
    values = settings.values or "logits"
    identity = {"imported": sources, "values": values, "clips": clips.fingerprint(), "label_csv_sha256": label_sha,
                "dtype": settings.store_dtype}
    attrs: dict[str, Any] = {
        "teacher": settings.teacher, "imported": True, "sources": json.dumps(sources), "values": values,
        "checkpoint_sha256": "", "random_init": False, "frontend": "{}", "label_csv_sha256": label_sha,
        "source_rows": int(source_rows), "identity_sha256": digest(identity), "fat_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if settings.values == "probabilities":
        attrs["converted"] = f"logit(p), p clipped to [{PROBABILITY_CLIP:g}, 1 - {PROBABILITY_CLIP:g}]"
    if settings.published_map is not None:
        attrs["published_map"] = float(settings.published_map)
    return attrs
