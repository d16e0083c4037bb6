"""Accuracy: every eval clip through the model at every r, scored as AudioSet papers do (`pipeline.metrics.score`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Scores (N, C) per r setting for every clip of `loader` (`collate_clips` batches), features by `inputs`;
    `progress(clips)` after each batch."""
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
            if progress is not None:
                progress(len(index))
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


def expected_random_ap(clips: int, positives: int) -> float:
    """The exact mean AP of a uniformly random ranking of `clips` items, `positives` of them relevant.

    A positive at rank r (uniform over 1..N) has, on average, (r − 1)(P − 1)/(N − 1) other
    positives above it, so its precision averages (1/N) Σ_r [1 + (r − 1)(P − 1)/(N − 1)] / r,
    which sums to ((P − 1)·N + (N − P)·H_N) / (N·(N − 1)), H_N the N-th harmonic number. It is
    more than the share of positives P/N, by a lot for rare classes in a small eval set: a class
    with 2 positives among 55 clips averages 0.100, not 0.036.
    """
    if not 0 < positives <= clips:
        raise ValueError(f"{positives} positives among {clips} clips")
    if clips == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, clips + 1)))
    return ((positives - 1) * clips + (clips - positives) * harmonic) / (clips * (clips - 1))


def chance_map(targets: np.ndarray) -> float:
    """The mAP a random ranking scores on average: the mean over classes of `expected_random_ap`
    (over the classes that count, those with positives and negatives, as `pipeline.metrics`)."""
    clips = targets.shape[0]
    positives = targets.sum(axis=0)
    usable = positives[(positives > 0) & (positives < clips)]
    if not usable.size:
        return float("nan")
    return round(float(np.mean([expected_random_ap(clips, int(p)) for p in usable])), 4)
