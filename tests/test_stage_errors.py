"""A stage that meets an unexpected error ends within seconds, with worker processes or without.

Each case runs the real `fat` stage in a subprocess through tests/fault_launcher.py, which makes one
function raise in the main process or in a worker. `fat train`'s DataLoader workers ignore SIGTERM
(so a SIGTERM to the whole process group saves the state): before they were killed on an error,
the process printed its traceback and then waited for them forever.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.train_fixtures import Task, make_task

LAUNCHER = Path(__file__).with_name("fault_launcher.py")
EXIT_SECONDS = 15.0  # from the fault to the exit; a hang is caught by HANG_SECONDS
HANG_SECONDS = 120.0
TINY = ["--model-size", "tiny224", "--fstride", "16", "--tstride", "16", "--target-frames", "64", "--no-progress",
        "--threads", "1", "--no-dvclive", "--kd-lambda", "1", "--no-wa", "--batch-size", "2"]


@dataclass(frozen=True)
class Case:
    stage: str
    fault: str  # module:attr of the function that raises
    role: str  # main or worker
    after: int = 0  # calls that succeed first
    workers: int = 1


CASES = {
    "train-worker": Case("train", "pipeline.dataset:ClipDataset.teacher_fields", "worker"),
    "train-main": Case("train", "pipeline.training.loop:Trainer.optimizer_step", "main", after=1, workers=3),
    "train-main-no-workers": Case("train", "pipeline.training.loop:Trainer.optimizer_step", "main", workers=0),
    "logits-worker": Case("logits", "pipeline.logits.compute:collate_waves", "worker", after=1),
    "logits-main": Case("logits", "pipeline.logits.compute:ensemble_logits", "main", after=1),
    "evaluate-worker": Case("evaluate", "pipeline.dataset:ClipDataset.teacher_fields", "worker", after=1),
    "evaluate-main": Case("evaluate", "pipeline.evaluate.scoring:forward_scores", "main", after=1),
    "validate-worker": Case("validate", "pipeline.validate.runner:_checked", "worker", after=1, workers=2),
    "validate-main": Case("validate", "pipeline.validate.runner:_label_verdict", "main", after=3, workers=2),
}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return make_task(tmp_path_factory.mktemp("faults"), n_train=8, n_valid=6, num_classes=3, seed=3)


@pytest.fixture(scope="module")
def student(task: Task) -> Path:
    """A tiny untrained student file for `fat evaluate`."""
    from pipeline.checkpoint import save_student
    from student import create_ast

    torch.manual_seed(0)
    model = create_ast("tiny224", num_classes=task.num_classes, input_tdim=64, fstride=16, tstride=16)
    path = task.root / "student.pt"
    save_student(path, model, {"norm_mean": -4.27, "norm_std": 4.57, "multi_label": True, "tome_r": "0",
                               "label_csv_sha256": hashlib.sha256(task.labels.read_bytes()).hexdigest(),
                               "target_frames": 64, "num_mel_bins": 128})
    return path


def stage_args(case: Case, task: Task, student: Path, out: Path) -> list[str]:
    workers = str(case.workers)
    if case.stage == "train":
        return ["train", "--train", str(task.train), "--valid", str(task.valid), *TINY, "--epochs", "1",
                "--num-workers", workers, "--out", str(out)]
    if case.stage == "logits":
        return ["logits", "--datafile", str(task.train), "--teacher", "mn01_as", "--random-init", "--batch-size", "1",
                "--workers", workers, "--clip-seconds", "0.5", "--store-dtype", "float32", "--threads", "1",
                "--out", str(out / "teacher.h5")]
    if case.stage == "evaluate":
        return ["evaluate", "--checkpoint", str(student), "--datafile", str(task.valid), "--batch-size", "1",
                "--workers", workers, "--threads", "1", "--r", "0", "--rounds", "1", "--timed-batches", "1",
                "--warmup-batches", "0", "--out-dir", str(out)]
    return ["validate", "--split", "faulty", "--datafile", str(task.train), "--out-dir", str(out / "datafiles"),
            "--report-dir", str(out / "reports"), "--workers", workers, "--batch-size", "1", "--no-progress"]


def run_until_exit(command: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, int]:
    """(result, time.monotonic() at exit, process group id); a run that hangs is killed with its group."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=HANG_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{command[2]} still running {HANG_SECONDS:.0f} s after start:\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err), time.monotonic(), process.pid


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(pgid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while group_alive(pgid):
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("name", list(CASES))
def test_an_unexpected_error_ends_the_stage_within_seconds(name: str, task: Task, student: Path, tmp_path: Path) -> None:
    case = CASES[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "FAT_FAULT": case.fault,
           "FAT_FAULT_IN": case.role, "FAT_FAULT_AFTER": str(case.after)}
    command = [sys.executable, str(LAUNCHER), *stage_args(case, task, student, tmp_path / "out")]
    done, exited, pgid = run_until_exit(command, env)
    faults = [float(time_) for time_ in re.findall(r"injected fault at (\d+\.\d+)", done.stderr)]
    assert faults, f"the fault never fired (status {done.returncode}):\n{done.stderr[-3000:]}"
    assert done.returncode == 1, done.stderr[-3000:]
    # The error reported is the injected one, not a complaint about how its workers were stopped.
    # (Another worker's "injected fault at" marker may be printed after the traceback: skip those.)
    last = [line for line in done.stderr.splitlines() if line.strip() and "injected fault at" not in line][-1]
    assert last.startswith("RuntimeError: injected fault in"), done.stderr[-3000:]
    assert exited - faults[0] < EXIT_SECONDS, f"exited {exited - faults[0]:.1f} s after the fault"
    assert wait_group_gone(pgid), "worker processes outlived the stage"


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_corrupt_clip_read_in_a_worker_is_one_line_naming_it(stage: str, student: Path, tmp_path: Path) -> None:
    """A clip that turns bad after the run started is read in a DataLoader worker: torch re-raises
    the worker's error with its traceback inside the message; the user must see only the clip's line."""
    task = make_task(tmp_path / "task", n_train=6, n_valid=4, num_classes=3, seed=3)
    split, ids = (task.train, task.train_ids) if stage == "train" else (task.valid, task.valid_ids)
    bad = ids[-1]
    (split.parent / "audio" / split.stem / f"{bad}.wav").write_bytes(b"RIFF" + b"\x00 not audio" * 20)
    case = Case(stage, fault="", role="worker", workers=2)
    args = stage_args(case, task, student, tmp_path / "out")
    if stage == "train":  # the prior head's calibration would read the clip in the main process first
        args += ["--head-init", "default"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done, _, pgid = run_until_exit([sys.executable, "-m", "pipeline.cli", *args], env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "DataLoader worker" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"fat {stage}: error:")]
    assert errors == [done.stderr.strip().splitlines()[-1]], done.stderr[-3000:]
    assert f"clip {bad} of {split}" in errors[0] and f"{bad}.wav: not a decodable audio file" in errors[0]
    assert wait_group_gone(pgid), "worker processes outlived the stage"


def test_sigterm_to_the_whole_group_still_saves_the_training_state(task: Task, tmp_path: Path) -> None:
    """The workers ignore SIGTERM, so a signal to every process (a scheduler's) still ends in a saved state."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline.cli", "train", "--train", str(task.train), "--valid", str(task.valid),
               *TINY, "--epochs", "20", "--num-workers", "2", "--log-every", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    steps = out / "steps.csv"
    deadline = time.monotonic() + HANG_SECONDS
    while not (steps.exists() and len(steps.read_text().splitlines()) > 1):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no optimiser step (status {process.poll()}):\n{process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=HANG_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("training did not stop after SIGTERM")
    assert process.returncode == 143, err[-3000:]
    assert "state saved at epoch" in err
    assert wait_group_gone(process.pid), "worker processes outlived the stage"
