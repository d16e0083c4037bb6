"""Clips for the teacher: every one read at 32 kHz and cut or zero-padded to one length, so batches
stack without padding logic; files or packed stores alike (pipeline.clip_audio). Items hold no
randomness (the batch's augmentation is drawn on the device, pipeline.finetune.augment)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.utils.data

from pipeline.clip_audio import open_clip_audio
from pipeline.core.audio import fit_length, require_finite
from pipeline.core.errors import FatError
from pipeline.core.workers import WorkerFatError
from pipeline.datafile import ClipList

SAMPLE_RATE = 32000  # the teachers' input rate


class TeacherClips(torch.utils.data.Dataset):
    """Key: an index, or (index, seed) from pipeline.sampling.EpochSampler → {"wave" (S,), "target" (C,), "index"}."""

    def __init__(self, clips: ClipList, seconds: float, packed: Any = ()) -> None:
        self.clips = clips
        self.audio = open_clip_audio(clips, packed)
        self.audio.require_all()  # every clip's file (or packed row) is there before training starts
        self.samples = int(round(seconds * SAMPLE_RATE))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index = key[0] if isinstance(key, tuple) else key
        try:
            audio, _ = self.audio.read(index, SAMPLE_RATE)
            audio = require_finite(audio, f"clip {self.clips.ids[index]} of {self.clips.source}")
        except FatError as exc:
            if torch.utils.data.get_worker_info() is None:
                raise
            raise WorkerFatError.carrying(exc) from None  # one line for the user, not a worker traceback
        return {"wave": torch.from_numpy(np.ascontiguousarray(fit_length(audio, self.samples), dtype=np.float32)),
                "target": torch.from_numpy(self.clips.multi_hot(index).astype(np.float32)),
                "index": torch.tensor(index, dtype=torch.int64)}
