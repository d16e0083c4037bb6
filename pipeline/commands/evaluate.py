"""`fat evaluate`: accuracy and speed of a trained student at several merge rates r, beside its teacher."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.evaluate.settings import EvaluateSettings
from pipeline.settings import from_args


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
            "Example: fat evaluate --checkpoint models/student/student.safetensors --datafile data/datafiles/eval/eval.json \\\n"
            "           --teacher-logits data/logits/mn10_as.h5 --r 0 8 16"
        ),
        settings=EvaluateSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluate.run import run_evaluation

    run_evaluation(from_args(EvaluateSettings, args))
    return 0
