"""`fat train`: the AST student (+ ToMe) on λ·label + (1 − λ)·KD with a precomputed teacher store."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.settings import from_args
from pipeline.training.config import TrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "train", "train the AST student with token merging and knowledge distillation",
        description=(
            "Train an AST student on an AST datafile: 16 kHz kaldi fbank, SpecAugment, waveform mixup,\n"
            "loss = λ·BCE(z, y) + (1−λ)·BCE(z, sigmoid(t/T)) with teacher logits t from `fat logits`\n"
            "(single-label: cross-entropy + T²·KL of softmaxes). Validates every epoch and, with weight\n"
            "averaging, the averaged model at the end. Writes into --out:\n"
            "  student.safetensors  the final model (weight-averaged when --wa) with its settings in\n"
            "                    the header, for `fat evaluate` / `predict` / `export` (no pickle)\n"
            "  train_state.pt    everything needed by --resume (rewritten each epoch and on SIGTERM)\n"
            "  result.json       final metrics and the epoch history\n"
            "  epochs.csv, steps.csv, dvclive/   logs, metrics and plots\n"
            "Many GPUs / machines: torchrun --nproc_per_node N -m pipeline.cli train ... (--batch-size is\n"
            "per process). SIGTERM saves the state at the next step and exits with status 143.\n"
            "Example: fat train --train data/datafiles/balanced_train/balanced_train.json \\\n"
            "           --valid data/datafiles/eval/eval.json \\\n"
            "           --teacher data/logits/mn10_as.h5 --kd-lambda 0.1 --tome-r 8 --out models/student"
        ),
        settings=TrainConfig,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.core.errors import FatError
    from pipeline.training.loop import INTERRUPTED_EXIT, train
    from student.errors import StudentError

    try:
        result = train(from_args(TrainConfig, args))
    except StudentError as exc:
        raise FatError(str(exc)) from None
    return 0 if result.status == "finished" else INTERRUPTED_EXIT
