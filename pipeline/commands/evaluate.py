"""`fat evaluate`: accuracy and speed of a trained student at several merge rates r, beside its teacher."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import add_command
from pipeline.settings import check_values, device_option, from_args, option, precision_option, threads_option


@dataclass(kw_only=True)
class EvaluateSettings:
    """The `fat evaluate` options (params.yaml `evaluate:` keys)."""

    checkpoint: Path = option(help="trained student file (from `fat train`)")
    datafile: Path = option(help="eval datafile (AST JSON)")
    labels: Path | None = option(
        None, "label CSV (index,mid,display_name); default: class_labels_indices.csv beside the datafile")
    teacher_logits: Path | None = option(
        None, "teacher logits store (HDF5) for the reference row; default: no teacher row")
    allow_incomplete_teacher: bool = option(
        False, "accept a teacher store whose writing did not finish (default: refuse it)")
    r: list[str] = option(["0", "4", "8", "16"],
                          "merge rates to evaluate: 16, 16,16,8 (per layer) or 16:-1 (r:inflection schedule)",
                          metavar="R")
    compare: list[Path] = option([], "other student files evaluated at r=0 on the same chart (default: none)",
                                 metavar="CHECKPOINT")
    metric: str = option(
        "auto", "main metric: auto = the one the student was trained with (fat train --metric), else accuracy for a "
                "single-label (cross-entropy) student and mAP otherwise; mAP, mean AUC and d' are always reported",
        choices=("auto", "map", "accuracy"))
    batch_size: int = option(32, "clips per batch for scoring and timing", unit="clips", minimum=1)
    warmup_batches: int = option(2, "untimed batches before timing", unit="count", minimum=0)
    timed_batches: int = option(2, "timed batches per r in each round", unit="count", minimum=1)
    rounds: int = option(3, "timing rounds; the r settings take turns and each keeps its median round",
                         unit="count", minimum=1)
    device: str = device_option()
    precision: str = precision_option()
    threads: int = threads_option()
    workers: int = option(0, "DataLoader worker processes for audio decoding (0: in-process)", minimum=0)
    limit: int | None = option(None, "evaluate only the first N clips (default: all)", minimum=1, metavar="N")
    out_dir: Path = option(Path("reports"), "folder for eval.json, eval.md, tradeoff.png")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "evaluate", "mAP / accuracy and clips/s of a student for several r; writes reports/",
        description=(
            "Evaluate one trained student on an eval datafile at every merge rate r (the same weights;\n"
            "ToMe needs no retraining), plus optional compared checkpoints at r=0 (e.g. larger patch\n"
            "strides) and the teacher's own accuracy from its logits store. Writes:\n"
            "  <out-dir>/eval.json    metrics for DVC (student.r=<r>.mAP, .clips_per_second, ...)\n"
            "  <out-dir>/eval.md      the table\n"
            "  <out-dir>/tradeoff.png accuracy against throughput, one point per r, teacher marked\n"
            "Throughput is the model forward alone on one batch of real eval features, after warm-up,\n"
            "synchronised on CUDA, on --device; the r settings take turns over --rounds rounds and each\n"
            "keeps its median (so background load hits all alike).\n"
            "Example: fat evaluate --checkpoint models/student/student.pt --datafile data/datafiles/eval/eval.json \\\n"
            "           --teacher-logits data/logits/mn10_as.h5 --r 0 8 16"
        ),
        settings=EvaluateSettings,
    )
    parser.set_defaults(func=run)


def run(namespace: argparse.Namespace) -> int:
    from pipeline import runtime
    from pipeline.evaluate import EvalRequest, TimingSettings, run_evaluation

    args = from_args(EvaluateSettings, namespace)
    check_values(args)
    runtime.set_threads(args.threads)
    device = runtime.choose_device(args.device)
    timing = TimingSettings(
        batch_size=args.batch_size, warmup_batches=args.warmup_batches, timed_batches=args.timed_batches, rounds=args.rounds,
        device=str(device), precision=runtime.choose_precision(args.precision, device).name,
    )
    request = EvalRequest(
        checkpoint=args.checkpoint, datafile=args.datafile, labels=args.labels, teacher_logits=args.teacher_logits,
        allow_incomplete_teacher=args.allow_incomplete_teacher, r_settings=tuple(str(r) for r in args.r),
        compare=tuple(args.compare), metric=args.metric, workers=args.workers, limit=args.limit,
    )
    run_evaluation(request, timing, args.out_dir)
    return 0
