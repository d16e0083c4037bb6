"""The end of a run: the store assembled from the old store and the work logs, atomically."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import FatError
from pipeline.datafile import ClipList
from pipeline.logits.failures import write_failure_report
from pipeline.logits.settings import LogitsSettings
from pipeline.logits.teacher_metrics import teacher_metrics
from pipeline.logits.teachers import digest, store_attrs
from pipeline.logits.worklog import WorkLog, scan_partial
from pipeline.store import LogitsStore, write_store

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    store: Path
    complete: bool
    computed: int
    reused: int
    failed: dict[str, str]
    metrics: dict[str, Any] | None
    compute_seconds: float = 0.0  # rank 0's time from its first batch request to its last record


def finish(settings: LogitsSettings, clips: ClipList, members: Sequence[Any], identity: dict[str, Any],
           computed: int) -> Outcome:
    """Assemble the store from the old store and the work logs; report failures and metrics."""
    reuse = LogitsStore(settings.out, allow_incomplete=True) if settings.out.exists() else None
    if reuse is not None and reuse.attrs.get("identity_sha256") != digest(identity):
        reuse = None  # replaced (--overwrite checked it)
    done, failures = scan_partial(settings.partial_dir)
    old_ids = list(reuse.ids) if reuse is not None else []
    requested = list(clips.ids)
    old_set = set(old_ids)
    new_ids = [i for i in requested if i not in old_set and i in done]
    order = old_ids + new_ids
    row_of = {clip_id: row for row, clip_id in enumerate(order)}
    missing = [i for i in requested if i not in row_of]
    failures = {i: failures.get(i, "no logits were computed (interrupted?)") for i in missing}
    complete = not failures or settings.skip_undecodable
    attrs = store_attrs(members, identity, settings)
    attrs.update({"requested": len(clips), "missing": len(failures), "dtype": settings.store_dtype})
    if failures and settings.skip_undecodable:
        attrs["excluded"] = json.dumps(sorted(failures))

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        step = 16384
        for start in range(0, len(old_ids), step):
            yield start, reuse.read_rows(np.arange(start, min(start + step, len(old_ids))))
        taken = np.zeros(len(order), dtype=bool)
        taken[:len(old_ids)] = True
        for path in sorted(settings.partial_dir.glob("rank*.log")):
            for record in WorkLog(path).records():
                rows = np.array([row_of.get(i, -1) for i in record.ids], dtype=np.int64)
                keep = rows >= 0
                keep[keep] &= ~taken[rows[keep]]
                if not keep.any():
                    continue
                rows, values = rows[keep], record.logits[keep]
                taken[rows] = True
                cuts = np.flatnonzero(np.diff(rows) != 1) + 1
                for run_rows, run_values in zip(np.split(rows, cuts), np.split(values, cuts), strict=True):
                    if np.all(np.diff(run_rows) == 1):
                        yield int(run_rows[0]), run_values
                    else:  # rows out of order within a record: one at a time
                        yield from ((int(r), v[None]) for r, v in zip(run_rows, run_values, strict=True))

    write_store(settings.out, order, blocks(), members[0].num_classes, attrs, complete=complete, dtype=settings.store_dtype)
    if reuse is not None:
        reuse.close()
    write_failure_report(settings, clips, failures)
    shutil.rmtree(settings.partial_dir, ignore_errors=True)
    metrics = teacher_metrics(settings, clips, members) if clips.label_set is not None else None
    outcome = Outcome(settings.out, complete, computed, len(clips) - computed, failures, metrics)
    log.info("%s: %d rows, %s%s", settings.out, len(order), "complete" if complete else "INCOMPLETE",
             f"; teacher mAP {metrics['all']['mAP']:.4f} over {metrics['all']['clips']} clips" if metrics else "")
    if failures and not settings.skip_undecodable:
        shown = "; ".join(f"{k}: {v}" for k, v in list(failures.items())[:3])
        raise FatError(
            f"{len(failures)} of {len(clips)} clips have no logits (listed in {settings.failed_csv}): {shown}"
            f"{' ...' if len(failures) > 3 else ''}. The store was written but marked incomplete. Fix or remove "
            "these clips (fat validate rejects undecodable ones) and rerun, or pass --skip-undecodable"
        )
    return outcome
