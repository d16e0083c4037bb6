"""Accuracy: every eval clip through the model at every r, scored as AudioSet papers do (`pipeline.metrics.score`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import FatError
from pipeline.dataset import DeviceInputs
from pipeline.datafile import ClipList
from pipeline.evaluate.settings import TimingSettings
from pipeline.evaluate.timing import precision_of
from pipeline.runtime import Precision
from student.tome import parse_r_spec, set_tome_r


def predict_all_r(
    model: Any, loader: Any, inputs: DeviceInputs, r_settings: Sequence[str], timing: TimingSettings,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Scores (N, C) per r setting for every clip of `loader` (`collate_clips` batches), features by `inputs`."""
    device, precision = torch.device(timing.device), precision_of(timing)
    chunks: dict[str, list[np.ndarray]] = {r: [] for r in r_settings}
    order: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in loader:
            features, index = inputs.evaluation(batch).to(device), batch["index"]
            for r in r_settings:
                set_tome_r(model, parse_r_spec(r))
                chunks[r].append(forward_scores(model, features, precision))
            order.append(np.asarray(index))
    positions = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    scores = {r: _reorder(np.concatenate(c) if c else np.zeros((0, 0)), positions) for r, c in chunks.items()}
    return scores, [str(i) for i in positions]


def forward_scores(model: Any, features: torch.Tensor, precision: Precision) -> np.ndarray:
    """One batch through the model at its current r: float32 logits (N, C) on the CPU."""
    with precision.autocast():
        return model(features).float().cpu().numpy()


def _reorder(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[positions] = values
    return out


def ranks_by_map(metric: str, config: dict[str, Any], targets: np.ndarray, clips: ClipList) -> bool:
    """True when mAP is the main metric, False for top-1 accuracy.

    `metric` auto follows the student: its `main_metric` (fat train --metric), else accuracy for a
    single-label (cross-entropy) student and mAP otherwise. Accuracy needs exactly one label per
    clip (Speech Commands trains with BCE but is scored by accuracy, as AST does).
    """
    if metric == "auto":  # what the student was trained to be scored by, else what its loss implies
        metric = config.get("main_metric") or ("map" if bool(config.get("multi_label", True)) else "accuracy")
    if metric == "accuracy":
        counts = targets.sum(axis=1)
        if not np.all(counts == 1):
            bad = int(np.flatnonzero(counts != 1)[0])
            raise FatError(f"{clips.source}: accuracy needs exactly one label per clip; clip {clips.ids[bad]} has "
                           f"{int(counts[bad])} (use --metric map)")
        return False
    return True


def chance_map(targets: np.ndarray) -> float:
    """The mAP a random ranking scores on average: the mean share of positives per class
    (over the classes that count, those with positives and negatives)."""
    positives = targets.sum(axis=0)
    usable = (positives > 0) & (positives < targets.shape[0])
    return round(float((positives[usable] / targets.shape[0]).mean()), 4) if usable.any() else float("nan")
