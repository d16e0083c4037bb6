"""`fat folds-report`: the folds' evaluation reports → mean ± std per r (ESC-50's 5-fold protocol)."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.folds_report import FoldsReportSettings, folds_report
from pipeline.settings import from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "folds-report", "summarise per-fold evaluations: mean ± std over folds for every r",
        description=(
            "Reads one eval.json per fold (`fat evaluate` of each fold's student on its held-out fold)\n"
            "and writes <out-dir>/folds.json, folds.md (the table) and metrics.json (the DVC metrics:\n"
            "r<r>.<metric>_mean / _std, and the teacher's when every fold has a teacher row).\n"
            "Example: fat folds-report reports/esc50/fold{1,2,3,4,5}/eval.json --out-dir reports/esc50"
        ),
        settings=FoldsReportSettings,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = from_args(FoldsReportSettings, args)
    result = folds_report(settings)
    for r, s in result["student"].items():
        print(f"student {r}: {result['metric']} {s['mean']:.4f} ± {s['std']:.4f}")
    if "teacher" in result:
        print(f"teacher: {result['metric']} {result['teacher']['mean']:.4f} ± {result['teacher']['std']:.4f}")
    return 0
