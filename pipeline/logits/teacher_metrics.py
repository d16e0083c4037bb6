"""The teacher's own scores on the clips it labelled: a check that the right teacher and labels were used."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.atomic import write_json_atomic
from pipeline.logits.clips import Clips
from pipeline.logits.settings import LogitsSettings
from pipeline.metrics import multilabel_metrics
from pipeline.store import LogitsStore


def teacher_metrics(settings: LogitsSettings, clips: Clips, members: Sequence[Any], labels: Any) -> dict[str, Any]:
    """The teacher's own mAP / mAUC / d' on the clips, per datafile and over all (JSON, atomic)."""
    from pipeline.metrics import multilabel_metrics

    store = LogitsStore(settings.out, allow_incomplete=True)
    result: dict[str, Any] = {
        "teacher": store.attrs["teacher"], "random_init": bool(store.attrs["random_init"]),
        "published_mAP": members[0].provenance.published_map if len(members) == 1 else None,
        "dtype": settings.dtype, "splits": {},
    }
    all_targets, all_scores = [], []
    for datafile, data, positions in clips.sources:
        ids = [clips.ids[p] for p in positions]
        scores, present = store.fetch(ids)
        targets = np.stack([data.multi_hot(i, labels) for i in range(len(ids))]).astype(np.float32)
        values = multilabel_metrics(targets[present], scores[present]) if present.any() else {}
        result["splits"][datafile.stem] = {**values, "clips": int(present.sum()), "missing": int((~present).sum())}
        all_targets.append(targets[present])
        all_scores.append(scores[present])
    targets, scores = np.concatenate(all_targets), np.concatenate(all_scores)
    result["all"] = {**(multilabel_metrics(targets, scores) if len(targets) else {}), "clips": int(len(targets))}
    store.close()
    write_json_atomic(settings.metrics_path, result)
    return result
