"""Cross-validation summary: several `fat evaluate` reports (one per fold) → mean ± std per r.

ESC-50 is reported as the accuracy averaged over its five folds (each fold scored by a model
that never saw it); the spread over folds says how much of a difference between two settings
is noise. Inputs are the folds' eval.json files; every one must score the same r settings and
the same main metric (accuracy for single-label students, else mAP). The teacher's row is
summarised the same way when every fold has one. std is the sample standard deviation (n − 1).

Outputs (atomic): `folds.json` (every fold's value and the summary), `metrics.json` (the DVC
metrics: `r<r>.<metric>_mean` / `_std`, `teacher.…`), `folds.md` (the table).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import write_json_atomic, write_text_atomic
from pipeline.core.errors import FatError
from pipeline.settings import option


@dataclass(kw_only=True)
class FoldsReportSettings:
    evals: list[Path] = option(help="the folds' eval.json files (from `fat evaluate`), one per fold",
                               positional=True, nargs="+", metavar="EVAL_JSON")
    metric: str = option("auto", "the figure summarised: auto = accuracy when the reports have it, else mAP",
                         choices=("auto", "accuracy", "mAP"))
    out_dir: Path = option(Path("reports"), "folder for folds.json, folds.md and metrics.json")

    def __post_init__(self) -> None:
        self.evals = [Path(p) for p in self.evals]
        self.out_dir = Path(self.out_dir)


def _read(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FatError(f"{path}: no such eval report") from None
    except ValueError as exc:
        raise FatError(f"{path}: not JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("student"), dict) or not report["student"]:
        raise FatError(f"{path}: not a `fat evaluate` eval.json (no student rows)")
    return report


def summary(values: list[float]) -> dict[str, Any]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(mean, 6), "std": round(std, 6), "folds": [round(v, 6) for v in values]}


def folds_report(settings: FoldsReportSettings) -> dict[str, Any]:
    if len(settings.evals) < 2:
        raise FatError(f"{len(settings.evals)} eval report given: a cross-validation summary needs two or more folds")
    reports = [_read(path) for path in settings.evals]
    metric = settings.metric
    if metric == "auto":
        metric = "accuracy" if all("accuracy" in row for report in reports for row in report["student"].values()) \
            else "mAP"
    settings_r = list(reports[0]["student"])
    for path, report in zip(settings.evals, reports):
        if list(report["student"]) != settings_r:
            raise FatError(f"{path}: scores r settings {', '.join(report['student'])}, but {settings.evals[0]} "
                           f"scores {', '.join(settings_r)}: evaluate every fold at the same --r")

    def value(path: Path, row: dict[str, Any], where: str) -> float:
        found = row.get(metric)
        if not isinstance(found, (int, float)) or not math.isfinite(found):
            raise FatError(f"{path}: {where} has no {metric} (got {found!r})")
        return float(found)

    student = {r: summary([value(p, rep["student"][r], r) for p, rep in zip(settings.evals, reports)])
               for r in settings_r}
    result: dict[str, Any] = {"metric": metric, "folds": len(reports), "evals": [str(p) for p in settings.evals],
                              "student": student}
    if all("teacher" in report for report in reports):
        result["teacher"] = summary([value(p, rep["teacher"], "the teacher row") for p, rep in
                                     zip(settings.evals, reports)])
        result["teacher"]["random_init"] = any(bool(rep["teacher"].get("random_init")) for rep in reports)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "folds.json", result)
    tracked: dict[str, Any] = {r.replace("r=", "r"): {f"{metric}_mean": s["mean"], f"{metric}_std": s["std"]}
                               for r, s in student.items()}
    if "teacher" in result:
        tracked["teacher"] = {f"{metric}_mean": result["teacher"]["mean"], f"{metric}_std": result["teacher"]["std"]}
    write_json_atomic(out / "metrics.json", tracked)
    write_text_atomic(out / "folds.md", markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    metric, folds = result["metric"], result["folds"]
    lines = [f"# {metric} over {folds} folds (mean ± sample std)", "",
             f"| model | r | {metric} | " + " | ".join(f"fold {i + 1}" for i in range(folds)) + " |",
             "|---|---|---|" + "---|" * folds]

    def row(model: str, r: str, s: dict[str, Any]) -> str:
        return (f"| {model} | {r} | {s['mean']:.4f} ± {s['std']:.4f} | "
                + " | ".join(f"{v:.4f}" for v in s["folds"]) + " |")

    for r, s in result["student"].items():
        lines.append(row("student", r.removeprefix("r="), s))
    if "teacher" in result:
        lines.append(row("teacher" + (" (RANDOM INIT)" if result["teacher"]["random_init"] else ""), "–",
                         result["teacher"]))
    return "\n".join(lines) + "\n"
