"""`fat tune-r`: candidates, the search's guarantee against the best constant r, the reports, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.tune.candidates import capped, constant, decreasing, moves, useful_constants
from student import create_ast
from student.flops import analytic_gflops
from student.tome import set_tome_r
from tests.test_evaluate import _make_eval_set

TIMING = ["--batch-size", "4", "--warmup-batches", "1", "--timed-batches", "1", "--rounds", "1", "--device", "cpu",
          "--threads", "1"]


def test_candidates_are_valid_schedules() -> None:
    tokens, depth = 34, 12  # 32 patches + class + distillation
    assert capped([20, 20, 20], tokens) == (16, 8, 4)
    grid = useful_constants(depth, tokens)
    assert grid[0] == 0 and grid == sorted(set(grid)) and grid[-1] == 16
    assert len({constant(r, depth, tokens) for r in grid}) == len(grid)  # no two give the same schedule
    assert decreasing(4, depth, tokens)[0] == 8 and decreasing(4, depth, tokens)[-1] == 0
    model = create_ast("tiny224", num_classes=3, input_tdim=64, fstride=16, tstride=16)
    start = constant(2, depth, tokens)
    neighbours = moves(start, tokens)
    assert start not in neighbours and len(neighbours) > depth
    for schedule in neighbours:
        assert capped(schedule, tokens) == schedule
        set_tome_r(model, list(schedule))  # each is a schedule the model runs


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    return _make_eval_set(tmp_path_factory.mktemp("tune"), count=9)


def test_a_flops_budget_gets_a_schedule_at_least_as_good_as_the_best_constant(eval_set, tmp_path: Path) -> None:
    model = create_ast("tiny224", num_classes=3, input_tdim=64, fstride=16, tstride=16)
    budget = round(analytic_gflops(model, 3) * 1.02, 4)  # r = 3 everywhere just fits
    out = tmp_path / "tuned"
    assert main(["tune-r", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
                 "--gflops", str(budget), "--max-evaluations", "30", "--out-dir", str(out), *TIMING]) == 0
    pareto = json.loads((out / "pareto.json").read_text())
    candidates = pareto["candidates"]
    assert len(candidates) <= 30 and {c["kind"] for c in candidates} >= {"constant", "decreasing"}
    feasible_constants = [c for c in candidates if c["kind"] == "constant" and c["gflops"] <= budget]
    best_constant = max(c["metric"] for c in feasible_constants)
    schedule = json.loads((out / "schedule.json").read_text())
    assert schedule["format"] == "fat-merge-schedule/1" and len(schedule["r"]) == 12
    assert schedule["gflops"] <= budget and schedule["value"] >= best_constant
    assert schedule["verdict"] == ("beats" if schedule["value"] > best_constant else "equals")
    assert schedule["best_constant"]["value"] == best_constant
    front = pareto["front"]
    assert front and all(a["clips_per_second"] <= b["clips_per_second"] and a["metric"] > b["metric"]
                         for a, b in zip(front, front[1:]))
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert f"The chosen schedule {schedule['verdict']} the best constant r" in (out / "tune.md").read_text()
    # the schedule file is what evaluate takes: the same figure there
    reports = tmp_path / "eval"
    sched = str(out / "schedule.json")
    assert main(["evaluate", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
                 "--r", sched, "--out-dir", str(reports), *TIMING]) == 0
    evaluated = json.loads((reports / "eval.json").read_text())["student"][f"r={sched}"]
    assert evaluated["mAP"] == pytest.approx(schedule["value"], abs=1e-6)


def test_a_speed_budget_is_measured_and_reported(eval_set, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    assert main(["tune-r", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
                 "--speedup", "1.1", "--max-evaluations", "12", "--out-dir", str(out), *TIMING]) == 0
    pareto = json.loads((out / "pareto.json").read_text())
    assert len(pareto["candidates"]) <= 12
    final = pareto["final_timing"]
    assert final["r=0"]["speedup"] == 1.0 and final["chosen"]["clips_per_second"] > 0
    if not pareto["notes"]:  # met again in the last timing, unless the note says noise moved every finalist
        assert final["chosen"]["speedup"] >= 1.1


def test_budget_errors_are_one_line(eval_set, tmp_path: Path, capsys) -> None:
    base = ["tune-r", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
            "--out-dir", str(tmp_path), *TIMING]
    assert main([*base, "--gflops", "0.0001", "--max-evaluations", "6"]) == 2
    assert "no schedule meets the budget (≤ 0.0001 GFLOPs/clip)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main([*base, "--speedup", "2", "--gflops", "1"])
    assert usage.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(base) == 2
    assert "give one budget" in capsys.readouterr().err
    assert not (tmp_path / "schedule.json").exists()


def test_skip_writes_only_a_note_the_dvc_stage_can_track(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    assert main(["tune-r", "--checkpoint", "absent.safetensors", "--datafile", "absent.json", "--skip",
                 "--out-dir", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["README.md"]
    assert "tune_r.skip=false" in (out / "README.md").read_text()
