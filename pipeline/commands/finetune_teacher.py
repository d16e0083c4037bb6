"""`fat finetune-teacher`: a released teacher with a new head, trained on a datafile set (EfficientAT's recipe)."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.core.skipped import write_skipped_note
from pipeline.finetune.settings import SKIPPED_WHY, FinetuneSettings
from pipeline.settings import from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "finetune-teacher", "fine-tune a teacher CNN on a datafile set's classes (for KD beyond AudioSet)",
        description=(
            "A teacher that knows the dataset's classes, for `fat logits --teacher FILE`: a registry entry\n"
            "(mn10_as, dymn10_as, ...) from its released AudioSet weights (or --random-init), its head\n"
            "replaced by one for the label CSV's classes, trained with EfficientAT's downstream recipe\n"
            "(ex_esc50.py: 80 epochs, Adam lr 6e-5, exponential warm-up and linear ramp-down, batch 128,\n"
            "±12 dB gain, roll, waveform mix, mel mixup α 0.3, moving mel filter edges) at 32 kHz.\n"
            "Single-label data (one label per clip) trains with cross-entropy, else BCE (--loss).\n"
            "Writes into --out:\n"
            "  teacher.pt       the last epoch's teacher: network, front end, classes and the label\n"
            "                   CSV's sha256 (logits for another label set are refused)\n"
            "  train_state.pt   everything --resume needs (each epoch and on SIGTERM)\n"
            "  result.json      final validation figures and the epoch history\n"
            "  epochs.csv, steps.csv, dvclive/\n"
            "Many GPUs: torchrun --nproc_per_node N -m pipeline.cli finetune-teacher ... (--batch-size is\n"
            "per process). SIGTERM saves the state and exits with status 143.\n"
            "Example (ESC-50, fold 1 held out):\n"
            "  fat finetune-teacher --teacher mn10_as --clip-seconds 5 \\\n"
            "    --train data/esc50/datafiles/esc50_except_fold1.json \\\n"
            "    --valid data/esc50/datafiles/esc50_fold1.json --out models/esc50/fold1/teacher\n"
            "  fat logits --teacher models/esc50/fold1/teacher/teacher.pt --clip-seconds 5 --datafile ..."
        ),
        settings=FinetuneSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings: FinetuneSettings = from_args(FinetuneSettings, args)
    if settings.skip:  # the real-AudioSet presets: no torch start-up for a switched-off stage
        write_skipped_note(settings.out, "fat finetune-teacher", SKIPPED_WHY)
        return 0
    from pipeline.finetune.loop import INTERRUPTED_EXIT, finetune

    result = finetune(settings)
    if result.status == "finished" and result.final_metrics:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items() if k in ("accuracy", "mAP", "loss"))
        print(f"{result.teacher_path}: {shown}")
    return 0 if result.status == "finished" else INTERRUPTED_EXIT
