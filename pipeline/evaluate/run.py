"""`fat evaluate`'s run: the eval set read once, the student at every r, compared checkpoints at
r = 0, the teacher's row, then the reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline import runtime
from pipeline.checkpoint import load_student, student_features
from pipeline.core.errors import FatError
from pipeline.clip_audio import open_clip_audio
from pipeline.datafile import ClipList, LabelSet, label_csv_beside, load_clips, load_label_csv
from pipeline.dataset import ClipDataset, DeviceInputs, collate_clips
from pipeline.evaluate.compiled import compile_and_warm
from pipeline.evaluate.progress import Progress
from pipeline.evaluate.reports import write_reports
from pipeline.evaluate.rows import EvalRow, primary_metric
from pipeline.evaluate.scoring import chance_map, predict_all_r, ranks_by_map
from pipeline.evaluate.settings import EvaluateSettings, TimingSettings
from pipeline.evaluate.teacher import open_teacher_store, teacher_row
from pipeline.evaluate.timing import measure_throughput, timing_batch
from pipeline.metrics import score
from pipeline.settings import check_values
from student.errors import StudentError
from student.flops import analytic_gflops
from student.tome import parse_r_spec, set_tome_r, tokens_per_layer

log = logging.getLogger(__name__)


def load_eval_set(settings: EvaluateSettings) -> tuple[ClipList, LabelSet, np.ndarray]:
    """(clip list, labels, targets (N, C)) of the eval datafile (the first `limit` clips)."""
    labels = load_label_csv(settings.labels or label_csv_beside(settings.datafile))
    clips = load_clips([settings.datafile], labels)
    if settings.limit is not None:
        clips = clips.head(settings.limit)
    open_clip_audio(clips, settings.packed).require_all()  # before any model is loaded
    targets = clips.targets()
    return clips, labels, targets


def _loader(clips: ClipList, config: dict[str, Any], batch_size: int, workers: int,
            packed: Sequence[Path] = ()) -> Any:
    """Evaluation items (no augmentation), features exactly as `fat train` computes them."""
    return DataLoader(ClipDataset(clips, student_features(config), packed=packed), batch_size=batch_size,
                      shuffle=False, num_workers=workers, collate_fn=collate_clips)


def evaluate_student(path: Path, name: str, kind: str, r_settings: Sequence[str], clips: ClipList,
                     targets: np.ndarray, num_classes: int, timing: TimingSettings, workers: int,
                     label_sha256: str | None, metric: str = "auto",
                     packed: Sequence[Path] = (), progress_every: float = 30.0,
                     compile: bool = False) -> tuple[list[EvalRow], dict[str, Any]]:
    """Rows (one per r) for one student checkpoint; also returns its config. Logs each phase as it
    starts (scoring, timing) and the scoring pass's clips every `progress_every` seconds. `compile`:
    torch.compile first, every r's graph built (and timed apart) before scoring."""
    model, config = load_student(path, map_location=timing.device)
    if int(config["num_classes"]) != num_classes:
        raise FatError(f"{path}: the student predicts {config['num_classes']} classes, the eval labels have {num_classes}")
    trained_sha = config.get("label_csv_sha256")
    if label_sha256 and trained_sha and trained_sha != label_sha256:
        raise FatError(f"{path}: trained with another label list (sha256 {str(trained_sha)[:12]}…) than the eval "
                       f"datafile's ({label_sha256[:12]}…)")
    multi_label = ranks_by_map(metric, config, targets, clips)
    for r in r_settings:  # a bad r fails here, before any work
        try:
            set_tome_r(model, parse_r_spec(r))
        except StudentError as exc:
            raise FatError(f"--r {r}: {exc}") from None
    loader = _loader(clips, config, timing.batch_size, workers, packed)
    inputs = DeviceInputs(student_features(config), timing.device)  # the features fat train computes
    batch = timing_batch(loader, inputs, timing.batch_size)
    compile_seconds = compile_and_warm(model, batch, r_settings, timing, name) if compile else {}
    progress = Progress(f"{name}: scoring at r = {' '.join(r_settings)}", len(clips), progress_every)
    scores, _ = predict_all_r(model, loader, inputs, r_settings, timing, progress.update)
    log.info("%s: timing r = %s on %s, %d threads: %d rounds of %d batches of %d clips each", name,
             " ".join(r_settings), timing.device, torch.get_num_threads(), timing.rounds, timing.timed_batches,
             timing.batch_size)
    speeds = measure_throughput(model, batch, r_settings, timing)
    rows = []
    for r in r_settings:
        spec = parse_r_spec(r)
        speed = speeds[r]
        rows.append(EvalRow(
            name=name, kind=kind, r=r, metrics=score(targets, scores[r], multi_label), clips=len(clips),
            clips_per_second=speed, gflops=analytic_gflops(model, spec), tokens_in=model.num_tokens,
            tokens_out=tokens_per_layer(model, spec)[-1], compile_seconds=compile_seconds.get(r),
        ))
        log.info("%s r=%s: %s %.4f, %.1f clips/s, %.3f GFLOPs/clip, %d→%d tokens", name, r, primary_metric(multi_label),
                 rows[-1].metrics.get(primary_metric(multi_label), float("nan")), speed, rows[-1].gflops,
                 rows[-1].tokens_in, rows[-1].tokens_out)
    set_tome_r(model, 0)
    return rows, config


def run_evaluation(settings: EvaluateSettings) -> list[EvalRow]:
    """Evaluate the student at every r, compared checkpoints at r = 0, the teacher; write the reports."""
    check_values(settings)
    runtime.set_threads(settings.threads)
    device = runtime.choose_device(settings.timing.device)
    # From here on the timing settings name what runs: a device, and the precision it gets.
    timing = replace(settings.timing, device=str(device),
                     precision=runtime.choose_precision(settings.timing.precision, device).name)
    clips, labels, targets = load_eval_set(settings)
    count = len(clips)
    ids = list(clips.ids)
    label_sha = labels.sha256
    store = None
    if settings.teacher_logits is not None:
        store = open_teacher_store(settings.teacher_logits, len(labels), settings.allow_incomplete_teacher, label_sha)
    rows, config = evaluate_student(settings.checkpoint, "student", "student", settings.r, clips, targets,
                                    len(labels), timing, settings.workers, label_sha, settings.metric,
                                    settings.packed, settings.progress_every, compile=settings.compile)
    multi_label = ranks_by_map(settings.metric, config, targets, clips)
    for other in settings.compare:
        # Compared students are scored with the main student's metric, whatever they were trained with.
        other_rows, _ = evaluate_student(
            other, _compare_name(other), "compare", ("0",), clips, targets, len(labels), timing, settings.workers,
            label_sha, "map" if multi_label else "accuracy", settings.packed, settings.progress_every,
            compile=settings.compile)
        rows += other_rows
    if store is not None:
        teacher = teacher_row(store, ids, targets, multi_label)
        store.close()
        if teacher is not None:
            rows.append(teacher)
            log.info("%s: %s %.4f on %d clips", teacher.name, primary_metric(multi_label),
                     teacher.metrics.get(primary_metric(multi_label), float("nan")), teacher.clips)
    context = {
        "checkpoint": str(settings.checkpoint), "datafile": str(settings.datafile), "clips": count,
        "classes": len(labels), "device": runtime.describe(torch.device(timing.device)), "batch_size": timing.batch_size,
        "precision": timing.precision, "trained_r": str(config.get("tome_r", "")),
        "chance_mAP": chance_map(targets),
    }
    paths_out = write_reports(rows, multi_label, context, settings.out_dir)
    log.info("reports: %s", ", ".join(str(p) for p in paths_out.values()))
    return rows


def _compare_name(path: Path) -> str:
    """A short label for a compared checkpoint: its folder name when the file has a generic name."""
    return path.parent.name if path.stem in {"student", "best", "last", "model", "final"} else path.stem
