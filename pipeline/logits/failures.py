"""`<store>.failed.csv`: the clips a run could not give logits, with their paths and reasons."""

from __future__ import annotations

import csv
import io

from pipeline.core.atomic import write_text_atomic
from pipeline.datafile import ClipList
from pipeline.logits.settings import LogitsSettings


def write_failure_report(settings: LogitsSettings, clips: ClipList, failures: dict[str, str]) -> None:
    if not failures:
        settings.failed_csv.unlink(missing_ok=True)  # a stale list from an earlier run no longer holds
        return
    path_of = dict(zip(clips.ids, clips.paths, strict=True))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "path", "reason"])
    for clip_id, reason in failures.items():
        writer.writerow([clip_id, path_of.get(clip_id, ""), reason])
    write_text_atomic(settings.failed_csv, buffer.getvalue())
