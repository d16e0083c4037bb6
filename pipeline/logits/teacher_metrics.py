"""The teacher's own scores on the clips it labelled: a check that the right teacher and labels were used."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import write_json_atomic
from pipeline.datafile import ClipList
from pipeline.logits.settings import ImportSettings, LogitsSettings
from pipeline.metrics import multilabel_metrics
from pipeline.store import LogitsStore


def teacher_metrics(settings: LogitsSettings | ImportSettings, clips: ClipList, members: Sequence[Any] = (),
                    published_map: float | None = None) -> dict[str, Any]:
    """The teacher's own mAP / mAUC / d' on the clips, per datafile and over all (JSON, atomic).

    `published_map`: for an imported store, which has no members to ask.
    """
    store = LogitsStore(settings.out, allow_incomplete=True)
    result: dict[str, Any] = {
        "teacher": store.attrs["teacher"], "random_init": bool(store.attrs["random_init"]),
        "published_mAP": members[0].provenance.published_map if len(members) == 1 else published_map,
        "dtype": settings.store_dtype, "splits": {},
    }
    all_targets, all_scores = [], []
    every_target = clips.targets()
    for datafile, start, stop in clips.part_ranges():
        scores, present = store.fetch(clips.ids[start:stop])
        targets = every_target[start:stop]
        values = multilabel_metrics(targets[present], scores[present]) if present.any() else {}
        result["splits"][Path(datafile).stem] = {**values, "clips": int(present.sum()), "missing": int((~present).sum())}
        all_targets.append(targets[present])
        all_scores.append(scores[present])
    targets, scores = np.concatenate(all_targets), np.concatenate(all_scores)
    result["all"] = {**(multilabel_metrics(targets, scores) if len(targets) else {}), "clips": int(len(targets))}
    store.close()
    write_json_atomic(settings.metrics_path, result)
    return result
