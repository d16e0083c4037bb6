"""`fat evaluate`: accuracy and speed of a trained student at several merge rates r, beside its teacher."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import add_command


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
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained student file (from `fat train`)")
    parser.add_argument("--datafile", type=Path, required=True, help="eval datafile (AST JSON)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label CSV (index,mid,display_name); default: class_labels_indices.csv beside the datafile")
    parser.add_argument("--teacher-logits", type=Path, default=None,
                        help="teacher logits store (HDF5) for the reference row; default: no teacher row")
    parser.add_argument("--allow-incomplete-teacher", action="store_true",
                        help="accept a teacher store whose writing did not finish (default: refuse it)")
    parser.add_argument("--r", nargs="+", default=["0", "4", "8", "16"], metavar="R",
                        help="merge rates to evaluate: 16, 16,16,8 (per layer) or 16:-1 (r:inflection schedule)")
    parser.add_argument("--compare", nargs="+", type=Path, default=[], metavar="CHECKPOINT",
                        help="other student files evaluated at r=0 on the same chart (default: none)")
    parser.add_argument("--metric", choices=("auto", "map", "accuracy"), default="auto",
                        help="main metric: auto = the one the student was trained with (fat train --metric), else "
                             "accuracy for a single-label (cross-entropy) student and mAP otherwise; "
                             "mAP, mean AUC and d' are always reported")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per batch for scoring and timing")
    parser.add_argument("--warmup-batches", type=int, default=2, help="untimed batches before timing (count)")
    parser.add_argument("--timed-batches", type=int, default=2, help="timed batches per r in each round (count)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timing rounds; the r settings take turns and each keeps its median round (count)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="autocast precision; auto = bf16 on GPUs that support it, else fp16; fp32 on CPU")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for audio decoding (0: in-process)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N clips (default: all)")
    parser.add_argument("--out-dir", type=Path, default=Path("reports"), help="folder for eval.json, eval.md, tradeoff.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import FatError
    from pipeline.evaluate import EvalRequest, TimingSettings, resolve_device, resolve_precision, run_evaluation

    for name in ("batch_size", "timed_batches", "rounds"):
        if getattr(args, name) < 1:
            raise FatError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    for name in ("warmup_batches", "threads", "workers"):
        if getattr(args, name) < 0:
            raise FatError(f"--{name.replace('_', '-')} must be ≥ 0, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise FatError(f"--limit must be ≥ 1, got {args.limit}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    timing = TimingSettings(
        batch_size=args.batch_size, warmup_batches=args.warmup_batches, timed_batches=args.timed_batches, rounds=args.rounds,
        device=device, precision=resolve_precision(args.precision, device),
    )
    request = EvalRequest(
        checkpoint=args.checkpoint, datafile=args.datafile, labels=args.labels, teacher_logits=args.teacher_logits,
        allow_incomplete_teacher=args.allow_incomplete_teacher, r_settings=tuple(str(r) for r in args.r),
        compare=tuple(args.compare), metric=args.metric, workers=args.workers, limit=args.limit,
    )
    run_evaluation(request, timing, args.out_dir)
    return 0
