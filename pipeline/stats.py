"""Fbank statistics of a dataset: the (mean, std) that `student.features.normalize` needs.

Computed exactly (float64 running sums over every cell of every clip's fbank, as the model
sees it: padded or cut to the target frames). AST's published constants were instead averages
of per-batch means and stds with mixup and SpecAugment on, so they differ slightly for the same data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.clip_audio import open_clip_audio
from pipeline.core.errors import FatError
from pipeline.datafile import ClipList
from student import StudentError
from student.features import SAMPLE_RATE
from student.frontend import BatchFbank, fit_frames_batch


def fbank_stats(datafile: ClipList, frames: int | None = 1024, limit: int | None = None, seed: int = 0,
                progress: Callable[[int, int], None] | None = None,
                packed: Sequence[Path] = ()) -> dict[str, Any]:
    """{"mean", "std", "clips", "frames_per_clip", "cells"} over the datafile's clips (or a random `limit` of them).

    The clips are read from their files, or by id from the `packed` stores (pipeline.clip_audio).
    """
    audio = open_clip_audio(datafile, packed)
    indices = np.arange(len(datafile))
    if limit is not None and limit < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))
    frontend = BatchFbank(frames or 1)  # the feature module training and evaluation use
    total = total_sq = 0.0
    cells = 0
    for done, index in enumerate(indices, 1):
        clip_id = datafile.ids[index]
        try:
            wave, _ = audio.read(int(index), SAMPLE_RATE)
            wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]
            logmel, counts = frontend.fbank(wave, torch.tensor([wave.shape[1]]), SAMPLE_RATE)
            fbank = (logmel[0, : int(counts[0])] if frames is None else fit_frames_batch(logmel, frames)[0]).double()
        except (StudentError, OSError, RuntimeError) as exc:
            raise FatError(f"clip {clip_id} of {audio.source}: {exc}") from None
        total += float(fbank.sum())
        total_sq += float(fbank.square().sum())
        cells += fbank.numel()
        if progress and (done % 200 == 0 or done == len(indices)):
            progress(done, len(indices))
    mean = total / cells
    variance = max(total_sq / cells - mean * mean, 0.0)
    return {"mean": mean, "std": math.sqrt(variance), "clips": int(len(indices)),
            "frames_per_clip": frames, "cells": cells}
