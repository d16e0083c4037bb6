"""`fat tune-r`: the per-block merge schedule that meets a speed budget on this device at the best accuracy."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.core.skipped import write_skipped_note
from pipeline.settings import from_args
from pipeline.tune.settings import SKIPPED_WHY, TuneSettings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "tune-r", "choose a per-block merge schedule for a speed budget on this device",
        description=(
            "Search merge schedules (constant r, ToMe's decreasing r:-1, then per-block lists near the best)\n"
            "for one trained student: accuracy on a validation datafile (features computed once), throughput\n"
            "measured here with fat evaluate's timer. One budget: --speedup X (over r = 0), --clips-per-s N\n"
            "or --gflops G. Writes into --out-dir:\n"
            "  schedule.json  the chosen schedule: give it to fat evaluate --r, predict --r, export --r,\n"
            "                 train --tome-r\n"
            "  pareto.json    every measured schedule, the Pareto front, the last timing\n"
            "  pareto.png     accuracy against throughput; tune.md  the chosen vs the best constant r\n"
            "Example: fat tune-r --checkpoint models/student/student.safetensors \\\n"
            "           --datafile data/datafiles/eval/eval.json --speedup 1.5 --max-evaluations 40"
        ),
        settings=TuneSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = from_args(TuneSettings, args)
    if settings.skip:  # before the search's imports: the demo's switched-off stage costs no torch start-up
        write_skipped_note(settings.out_dir, "fat tune-r", SKIPPED_WHY)
        return 0
    from pipeline.tune.run import run_tune

    run_tune(settings)
    return 0
