"""`fat tune-r`'s run: the student and the validation features once, the search, the reports."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch.utils.data import DataLoader

from pipeline import runtime
from pipeline.checkpoint import load_student, student_features
from pipeline.core.errors import FatError
from pipeline.core.skipped import write_skipped_note
from pipeline.dataset import ClipDataset, DeviceInputs, collate_clips
from pipeline.evaluate.rows import primary_metric
from pipeline.evaluate.run import load_eval_set
from pipeline.evaluate.scoring import ranks_by_map
from pipeline.settings import check_values
from pipeline.tune.measure import FeatureCache
from pipeline.tune.report import summary_line, write_reports
from pipeline.tune.search import Budget, TuneResult, tune
from pipeline.tune.settings import SKIPPED_WHY, TuneSettings

log = logging.getLogger(__name__)


def run_tune(settings: TuneSettings) -> TuneResult | None:
    """Search merge schedules for the budget; write schedule.json, pareto.json, pareto.png, tune.md
    (with `skip`: only a README.md saying so, the DVC stage's output when it is switched off)."""
    check_values(settings)
    if settings.skip:
        write_skipped_note(settings.out_dir, "fat tune-r", SKIPPED_WHY)
        return None
    budget = Budget(settings.speedup, settings.clips_per_s, settings.gflops)
    if (settings.speedup, settings.clips_per_s, settings.gflops).count(None) != 2:
        raise FatError("give one budget: --speedup X, --clips-per-s N or --gflops G")
    runtime.set_threads(settings.threads)
    device = runtime.choose_device(settings.timing.device)
    timing = replace(settings.timing, device=str(device),
                     precision=runtime.choose_precision(settings.timing.precision, device).name)
    clips, labels, targets = load_eval_set(settings)  # checks every clip's audio before the model loads
    model, config = load_student(settings.checkpoint, map_location=timing.device)
    if int(config["num_classes"]) != len(labels):
        raise FatError(f"{settings.checkpoint}: the student predicts {config['num_classes']} classes, the "
                       f"validation labels have {len(labels)}")
    trained_sha = config.get("label_csv_sha256")
    if trained_sha and labels.sha256 and trained_sha != labels.sha256:
        raise FatError(f"{settings.checkpoint}: trained with another label list (sha256 {str(trained_sha)[:12]}…) "
                       f"than {settings.datafile}'s ({labels.sha256[:12]}…)")
    multi_label = ranks_by_map(settings.metric, config, targets, clips)
    main = primary_metric(multi_label)
    features = student_features(config)
    loader = DataLoader(ClipDataset(clips, features, packed=settings.packed), batch_size=timing.batch_size,
                        shuffle=False, num_workers=settings.workers, collate_fn=collate_clips)
    log.info("tune-r: features of %d validation clips, once (they do not depend on r)", len(clips))
    cache = FeatureCache.build(loader, DeviceInputs(features, timing.device), targets, timing.device)
    result = tune(model, cache, timing, budget, multi_label, main, settings.max_evaluations)
    context = {"checkpoint": str(settings.checkpoint), "datafile": str(settings.datafile), "clips": len(clips),
               "device": runtime.describe(torch.device(timing.device)), "precision": timing.precision,
               "batch_size": timing.batch_size, "threads": torch.get_num_threads()}
    paths = write_reports(result, context, settings.out_dir)
    log.info(summary_line(result))
    log.info("reports: %s", ", ".join(str(p) for p in paths.values()))
    return result
