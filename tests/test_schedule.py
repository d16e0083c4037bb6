"""Merge schedule files (student.schedule): read, checked against the model, and taken wherever an r is
(set_tome_r, fat evaluate --r, fat predict --r, fat export --r, fat train --tome-r)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from student import StudentError, create_ast
from student.schedule import FileSchedule, is_schedule_path, read_schedule, schedule_document
from student.tome import format_r_spec, parse_r_spec, set_tome_r, tokens_per_layer
from tests.test_evaluate import _make_eval_set
from tests.test_predict import tone_file

SCHEDULE = [3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0, 0]  # tiny224 (12 blocks) at 64 frames, strides 16: 34 tokens


def write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_ast("tiny224", num_classes=3, input_tdim=64, fstride=16, tstride=16).eval()


def test_a_schedule_file_runs_as_its_per_layer_list(model, tmp_path: Path) -> None:
    path = write(tmp_path / "tuned.json", schedule_document(SCHEDULE, speedup=1.5, device="cpu"))
    assert is_schedule_path(str(path)) and is_schedule_path("missing.json") and not is_schedule_path("16,16,8")
    r = parse_r_spec(str(path))
    assert isinstance(r, FileSchedule) and r == SCHEDULE and r.path == str(path)
    assert format_r_spec(r) == ",".join(map(str, SCHEDULE))  # what an export records: the values themselves
    x = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert set_tome_r(model, r) == SCHEDULE
        from_file = model(x)
        set_tome_r(model, SCHEDULE)
        typed = model(x)
    assert torch.equal(from_file, typed)
    assert tokens_per_layer(model, r)[-1] == 34 - sum(SCHEDULE)


@pytest.mark.parametrize("document, message", [
    ({"r": [1, 1]}, "the schedule has 2 merge counts but the model has 12 blocks"),
    ({"r": [1] * 11 + [-1]}, "r[11] = -1 is negative"),
    ({"r": [1, "2"] + [0] * 10}, "r[1] = '2' is not an integer"),
    ({"r": [17] + [0] * 11}, "block 0 merges r[0] = 17 tokens but only 16 can merge there (34 tokens enter it"),
    ({"r": [16, 9] + [0] * 10}, "block 1 merges r[1] = 9 tokens but only 8 can merge there (18 tokens enter it"),
    ({"schedule": [1]}, 'a merge schedule needs "r"'),
    ("not json", "not JSON"),
])
def test_a_bad_schedule_is_one_error_naming_the_file(model, tmp_path: Path, document, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    with pytest.raises(StudentError, match=f"^{path}: .*") as caught:
        set_tome_r(model, parse_r_spec(str(path)))
    assert message in str(caught.value)
    with pytest.raises(StudentError, match="no such merge schedule file"):
        read_schedule(tmp_path / "absent.json")


def test_evaluate_predict_and_export_take_a_schedule_file(tmp_path: Path, capsys) -> None:
    eval_set = _make_eval_set(tmp_path / "set", count=6)
    schedule = write(tmp_path / "tuned.json", schedule_document(SCHEDULE))
    typed = ",".join(map(str, SCHEDULE))
    out = tmp_path / "reports"
    assert main(["evaluate", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
                 "--r", str(schedule), typed, "--batch-size", "4", "--warmup-batches", "0", "--timed-batches", "1",
                 "--rounds", "1", "--device", "cpu", "--threads", "1", "--out-dir", str(out)]) == 0
    students = json.loads((out / "eval.json").read_text())["student"]
    from_file, by_hand = students[f"r={schedule}"], students[f"r={typed}"]
    assert from_file["mAP"] == by_hand["mAP"] and from_file["tokens_out"] == by_hand["tokens_out"] == 34 - sum(SCHEDULE)

    clip = tone_file(tmp_path / "a.wav", 1.0, 32000)
    predicted = []
    for r in (str(schedule), typed):
        assert main(["predict", str(clip), "--model", f"student:{eval_set.checkpoint}", "--r", r, "--json"]) == 0
        predicted.append(json.loads(capsys.readouterr().out)["files"])
    assert predicted[0] == predicted[1]

    program = tmp_path / "student_tuned.pt2"
    assert main(["export", "--checkpoint", str(eval_set.checkpoint), "--format", "torch-export", "--r", str(schedule),
                 "--out", str(program)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tome_r_per_layer"] == SCHEDULE and report["tome_r"] == typed
    assert report["max_logit_difference"] <= 1e-4

    bad = write(tmp_path / "short.json", {"r": [4, 4]})
    assert main(["evaluate", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
                 "--r", str(bad), "--out-dir", str(tmp_path / "x")]) == 2
    assert f"{bad}: the schedule has 2 merge counts but the model has 12 blocks" in capsys.readouterr().err


def test_export_names_its_default_file_after_the_schedule(tmp_path: Path) -> None:
    from pipeline.commands.export import default_out

    assert default_out(tmp_path / "run" / "student.safetensors", "onnx", "reports/tuned.json").name == \
        "student_rtuned.onnx"


def test_train_takes_a_schedule_file_and_records_its_values(tmp_path: Path, capsys) -> None:
    from pipeline.checkpoint import load_student
    from tests.train_fixtures import make_task

    task = make_task(tmp_path / "task", n_train=8, n_valid=4, num_classes=3)
    args = ["train", "--train", str(task.train), "--valid", str(task.valid), "--model-size", "tiny224",
            "--depth", "2", "--fstride", "16", "--tstride", "16", "--target-frames", "64", "--num-workers", "0",
            "--no-progress", "--threads", "1", "--kd-lambda", "1", "--epochs", "1", "--batch-size", "4", "--no-wa"]
    schedule = write(tmp_path / "tuned.json", schedule_document([8, 4]))
    assert main([*args, "--out", str(tmp_path / "run"), "--tome-r", str(schedule)]) == 0
    _, config = load_student(tmp_path / "run" / "student.safetensors")
    assert config["tome_r_per_layer"] == [8, 4]
    wrong = write(tmp_path / "wrong.json", schedule_document([8, 4, 2]))
    assert main([*args, "--out", str(tmp_path / "run2"), "--tome-r", str(wrong)]) == 2
    assert f"{wrong}: the schedule has 3 merge counts but the model has 2 blocks" in capsys.readouterr().err
