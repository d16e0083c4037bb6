"""The teacher's forward passes: clips decoded in DataLoader workers, batches run, each appended to the work log."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline import runtime
from pipeline.clip_audio import ClipAudio, open_clip_audio
from pipeline.core.errors import FatError
from pipeline.datafile import ClipList
from pipeline.logits.settings import SAMPLE_RATE, LogitsSettings
from pipeline.logits.worklog import LogRecord, WorkLog

log = logging.getLogger(__name__)


class ClipWaves:
    """Item i → (i, waveform float32 [samples] or zeros, error message or "")."""

    def __init__(self, audio: ClipAudio, samples: int) -> None:
        self.audio = audio  # files or packed stores: the same samples either way (pipeline.clip_audio)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, str]:
        from pipeline.core.audio import fit_length, require_finite

        clip = f"clip {self.audio.ids[index]} of {self.audio.source}"
        try:
            audio = require_finite(self.audio.read(index, SAMPLE_RATE)[0], clip)
            return index, fit_length(audio, self.samples), ""
        except Exception as exc:  # any decoder failure is reported per clip, never skipped silently
            message = str(exc) if isinstance(exc, FatError) else f"{clip}: {type(exc).__name__}: {exc}"
            return index, np.zeros(self.samples, dtype=np.float32), message


def collate_waves(items: list[tuple[int, np.ndarray, str]]) -> tuple[list[int], torch.Tensor, list[str]]:
    return [i for i, _, _ in items], torch.from_numpy(np.stack([w for _, w, _ in items])), [e for _, _, e in items]


def _quiet_worker(_worker_id: int) -> None:
    runtime.set_threads(1)  # decoding and resampling: one thread per worker, the model keeps the rest


def ensemble_logits(members: Sequence[Any], waves: torch.Tensor, precision: runtime.Precision) -> torch.Tensor:
    """Mean raw logits of the members (float32), computed in `precision`."""
    with torch.inference_mode(), precision.autocast():
        outs = [member(waves).float() for member in members]
    return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)


def compute(members: Sequence[Any], clips: ClipList, batches: list[tuple[int, list[int]]], worklog: WorkLog,
            settings: LogitsSettings, device: torch.device, precision: runtime.Precision,
            audio: ClipAudio | None = None) -> float:
    """Run this rank's batches, appending each to the work log; returns the seconds it took."""
    members = [m.to(device) for m in members]
    samples = int(round(settings.clip_seconds * SAMPLE_RATE))
    audio = audio if audio is not None else open_clip_audio(clips, settings.packed, settings.datafile)
    loader = DataLoader(
        ClipWaves(audio, samples), batch_sampler=[todo for _, todo in batches], num_workers=settings.workers,
        collate_fn=collate_waves, pin_memory=device.type == "cuda", worker_init_fn=_quiet_worker,
        prefetch_factor=4 if settings.workers else None,
    )
    started = last_report = time.monotonic()
    finished = 0
    for (number, _), (indices, waves, errors) in zip(batches, loader, strict=True):
        ok = np.array([not e for e in errors], dtype=bool)
        ids = [clips.ids[i] for i in indices]
        failed = {clip_id: error for clip_id, error, good in zip(ids, errors, ok, strict=True) if not good}
        for clip_id, error in failed.items():
            log.warning("could not decode clip %s: %s", clip_id, error)
        rows = np.zeros((0, members[0].num_classes), dtype=settings.store_dtype)
        if ok.any():
            good = waves if ok.all() else waves[torch.from_numpy(ok)]
            logits = ensemble_logits(members, good.to(device, non_blocking=True), precision)
            bad = ~torch.isfinite(logits).all(dim=1).cpu().numpy()
            if bad.any():
                named = [f"{ids[i]} ({clips.paths[indices[i]]})" for i in np.flatnonzero(ok)[bad]]
                raise FatError(f"the teacher produced NaN or infinite logits for clip(s) {', '.join(named[:5])}"
                               f"{' ...' if len(named) > 5 else ''}")
            rows = logits.cpu().numpy().astype(settings.store_dtype)
            if settings.store_dtype == "float16" and not np.isfinite(rows).all():
                raise FatError(f"logits of clip(s) {', '.join(np.array(ids)[ok][~np.isfinite(rows).all(1)][:5])} "
                               "overflow float16: use --store-dtype float32")
        worklog.append(LogRecord(number, [i for i, good in zip(ids, ok, strict=True) if good], rows, failed,
                                 time.time_ns()))
        finished += len(indices)
        now = time.monotonic()
        if now - last_report >= settings.progress_every:
            log.info("  %d / %d clips of this rank, %.1f clips/s", finished, sum(len(t) for _, t in batches),
                     finished / (now - started))
            last_report = now
    elapsed = time.monotonic() - started
    log.info("  %d clips in %.1f s: %.1f clips/s on %s", finished, elapsed, finished / max(elapsed, 1e-9), device)
    return elapsed
