"""fat folds-report: the folds' eval.json → mean ± sample std per r and for the teacher."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pipeline.cli import main


def write_eval(path: Path, accuracies: dict[str, float], teacher: float | None) -> Path:
    report = {"student": {r: {"accuracy": a, "mAP": 0.5} for r, a in accuracies.items()}, "eval": {"clips": 3}}
    if teacher is not None:
        report["teacher"] = {"accuracy": teacher, "mAP": 0.6, "random_init": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def test_mean_and_std_over_folds_per_r_and_for_the_teacher(tmp_path: Path, capsys) -> None:
    values = [0.9, 0.8, 0.85, 0.95, 0.7]
    evals = [write_eval(tmp_path / f"fold{k}/eval.json", {"r=0": v, "r=8": v - 0.1}, v + 0.02)
             for k, v in enumerate(values, 1)]
    assert main(["folds-report", *map(str, evals), "--out-dir", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out/folds.json").read_text())
    assert summary["metric"] == "accuracy" and summary["folds"] == 5
    assert summary["student"]["r=0"]["mean"] == round(statistics.fmean(values), 6)
    assert summary["student"]["r=0"]["std"] == round(statistics.stdev(values), 6)
    assert summary["student"]["r=8"]["folds"] == [round(v - 0.1, 6) for v in values]
    assert summary["teacher"]["mean"] == round(statistics.fmean(values) + 0.02, 6)
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert set(metrics) == {"r0", "r8", "teacher"} and set(metrics["r0"]) == {"accuracy_mean", "accuracy_std"}
    table = (tmp_path / "out/folds.md").read_text()
    assert "| student | 0 | 0.8400 ± 0.0962 |" in table and "| teacher | – | 0.8600 ± 0.0962 |" in table
    assert "student r=0: accuracy 0.8400 ± 0.0962" in capsys.readouterr().out


def test_folds_scored_at_other_r_or_missing_are_one_line(tmp_path: Path, capsys) -> None:
    first = write_eval(tmp_path / "a/eval.json", {"r=0": 0.5, "r=8": 0.4}, None)
    other = write_eval(tmp_path / "b/eval.json", {"r=0": 0.5}, None)
    assert main(["folds-report", str(first), str(other), "--out-dir", str(tmp_path / "out")]) == 2
    assert "b/eval.json: scores r settings r=0, but" in capsys.readouterr().err
    assert main(["folds-report", str(first), str(tmp_path / "gone.json"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "gone.json: no such eval report" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # no teacher row in some fold: the summary has none
    assert main(["folds-report", str(first), str(write_eval(tmp_path / "c/eval.json", {"r=0": 0.7, "r=8": 0.6}, 0.9)),
                 "--out-dir", str(tmp_path / "out")]) == 0
    assert "teacher" not in json.loads((tmp_path / "out/folds.json").read_text())
