"""`fat logits`: teacher logits for the clips of one or more datafiles, into one HDF5 store."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.logits.settings import LogitsSettings
from pipeline.settings import from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "logits", "EfficientAT teacher logits for datafile clips → one HDF5 store",
        description=(
            "Run an EfficientAT mn or DyMN teacher (or an ensemble: the mean of several teachers' logits) over\n"
            "every clip of the datafiles at 32 kHz, each padded or cut to --clip-seconds, and write\n"
            "  <out>               ids + logits[N, C] + provenance; `complete` once every clip is in\n"
            "  <out stem>.metrics.json  the teacher's own mAP per datafile (when a label CSV is found)\n"
            "  <out stem>.failed.csv    clips that could not be decoded (only if there are any)\n"
            "Resumable: an interrupted run (even kill -9) leaves its finished batches in <out>.partial/;\n"
            "rerun the same command to finish. Rows of an existing store made with the same teacher and\n"
            "settings are reused. Under torchrun each rank takes a share of the batches and rank 0\n"
            "merges them: torchrun --nproc_per_node 4 -m pipeline.cli logits ...\n"
            "Checkpoints are downloaded once into $FAT_CACHE/teachers (default ~/.cache/fat/teachers);\n"
            "offline, pass the file with --checkpoint. Example:\n"
            "  fat logits --datafile data/datafiles/eval/eval.json --teacher mn10_as --out data/logits/mn10_as.h5"
        ),
        settings=LogitsSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.logits.run import run_logits

    settings = from_args(LogitsSettings, args)
    outcome = run_logits(settings)
    if outcome is not None:
        state = "complete" if outcome.complete else "incomplete"
        print(f"{outcome.store}: {state}; {outcome.computed} clips computed, {outcome.reused} reused"
              + (f"; {len(outcome.failed)} excluded" if outcome.failed else ""))
        if outcome.metrics:
            overall = outcome.metrics["all"]
            if "mAP" in overall:
                print(f"teacher mAP {overall['mAP']:.4f} over {overall['clips']} clips "
                      f"(metrics: {settings.metrics_path})")
    return 0
