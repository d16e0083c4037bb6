"""--compile in fat evaluate, bench, predict and train: the same figures as eager, compile time apart.

$FAT_COMPILE_BACKEND=aot_eager: the same graph capture as the default inductor without its code
generation, which takes minutes per graph on the 2-core CI CPU (inductor's own figures:
docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.metrics import multilabel_metrics
from student.compile import BACKEND_ENV
from tests.test_evaluate import _expected_scores, _make_eval_set
from tests.test_predict import tone_file


@pytest.fixture(autouse=True)
def graph_capture_only(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()


@pytest.mark.heavy  # about a minute of graph building on 2 cores; bench and predict cover --compile in CI
def test_evaluate_compiled_scores_as_eager_and_reports_compile_time_apart(tmp_path: Path) -> None:
    eval_set = _make_eval_set(tmp_path / "set", count=6)
    out = tmp_path / "reports"
    assert main(["evaluate", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
                 "--r", "0", "4", "--batch-size", "4", "--warmup-batches", "1", "--timed-batches", "1",
                 "--rounds", "1", "--device", "cpu", "--threads", "1", "--out-dir", str(out), "--compile"]) == 0
    students = json.loads((out / "eval.json").read_text())["student"]
    for r in (0, 4):
        expected = multilabel_metrics(eval_set.targets, _expected_scores(eval_set, r))
        assert students[f"r={r}"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
        assert students[f"r={r}"]["compile_seconds"] > 0 and students[f"r={r}"]["clips_per_second"] > 0


def test_bench_compiled_prints_compile_time_per_r(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "student", "--size", "tiny224", "--frames", "64", "--r", "0", "4", "--batch", "1",
                 "--rounds", "1", "--warmup", "0", "--threads", "1", "--no-timm", "--compile", "--json", str(out)]) == 0
    assert "compile time (first call at each r, not in clips/s): r=0 " in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["compiled"] is True
    assert all(row["compile_seconds"] > 0 and row["clips_per_s"] > 0 for row in result["rows"])


def test_predict_compiled_student_gives_the_eager_labels_and_teachers_are_refused(tmp_path: Path, capsys) -> None:
    from pipeline.checkpoint import save_student
    from student import create_ast

    model = create_ast(size="tiny224", num_classes=3, input_tdim=64, fstride=16, tstride=16)
    path = tmp_path / "student.safetensors"
    save_student(path, model, {"norm_mean": -4.27, "norm_std": 4.57, "multi_label": True, "target_frames": 64,
                               "num_mel_bins": 128})
    clip = tone_file(tmp_path / "a.wav", 1.0, 32000)

    def tops(*extra: str) -> list:
        assert main(["predict", str(clip), "--model", f"student:{path}", "--r", "4", "--json", *extra]) == 0
        windows = json.loads(capsys.readouterr().out)["files"][0]["windows"]
        return [[(t["index"], round(t["probability"], 4)) for t in w["top"]] for w in windows]

    assert tops("--compile") == tops()
    assert main(["predict", str(clip), "--teacher", "mn10_as", "--random-init", "--compile"]) == 2
    assert "--compile compiles a torch student" in capsys.readouterr().err


def test_train_compiled_writes_the_plain_student_file(tmp_path: Path) -> None:
    from pipeline.checkpoint import load_student
    from tests.train_fixtures import make_task

    task = make_task(tmp_path / "task", n_train=8, n_valid=4, num_classes=3)
    out = tmp_path / "run"
    assert main(["train", "--train", str(task.train), "--valid", str(task.valid), "--labels", str(task.labels),
                 "--out", str(out), "--model-size", "tiny224", "--depth", "1", "--fstride", "16", "--tstride", "16",
                 "--target-frames", "64", "--num-workers", "0", "--no-progress", "--threads", "1",
                 "--kd-lambda", "1", "--epochs", "1", "--batch-size", "4", "--no-wa", "--tome-r", "4",
                 "--compile"]) == 0
    model, config = load_student(out / "student.safetensors")
    assert not any("_orig_mod" in key for key in model.state_dict())
    assert config["tome_r_per_layer"] == [4]
    assert np.isfinite(json.loads((out / "result.json").read_text())["final"]["loss"])
