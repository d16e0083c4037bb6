"""`fat train` as separate processes: killed and resumed runs equal an uninterrupted one; torchrun DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train_fixtures import make_task, oracle_logits, write_store

TINY = ["--model-size", "tiny224", "--fstride", "16", "--tstride", "16", "--target-frames", "64",
        "--no-progress", "--threads", "1", "--no-dvclive"]


def fat(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def data_rows(path: Path) -> int:
    return max(len(path.read_text().splitlines()) - 1, 0) if path.exists() else 0


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    from pipeline.checkpoint import read_student_file

    return read_student_file(path)["state_dict"]


def training_columns(path: Path) -> list[list[str]]:
    """epochs.csv without the timing column (the only one allowed to differ)."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    drop = rows[0].index("train/clips_per_s")
    return [row[:drop] + row[drop + 1:] for row in rows]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("procs")
    task = make_task(root, n_train=16, n_valid=7, num_classes=3, seed=2)
    write_store(root / "teacher.h5", task.train_ids, oracle_logits(task.train_targets), task.labels)
    return task


@pytest.mark.slow  # several processes started, signalled and restarted: 10-30 s here, up to ~100 s on 2 CI cores
def test_sigterm_and_kill_then_resume_equal_an_uninterrupted_run(task):
    """SIGTERM in epoch 1 (state saved mid-epoch, status 143); resumed, SIGKILL once epoch 1 is done;
    resumed again from the end-of-epoch state to the end."""
    from pipeline.cli import main

    common = ["train", "--train", str(task.train), "--valid", str(task.valid), "--teacher",
              str(task.root / "teacher.h5"), *TINY, "--kd-lambda", "0.3", "--mixup", "0.5", "--freqm", "8",
              "--timem", "8", "--epochs", "2", "--batch-size", "2", "--accum-steps", "2", "--lr", "3e-4",
              "--warmup-steps", "3", "--wa-start", "1", "--wa-end", "2", "--num-workers", "1", "--log-every", "1"]
    straight, interrupted = task.root / "straight", task.root / "interrupted"
    threads = torch.get_num_threads()
    try:
        assert main([*common, "--out", str(straight)]) == 0
    finally:
        torch.set_num_threads(threads)

    run = subprocess.Popen(fat(*common, "--out", str(interrupted)), env=environment(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: data_rows(interrupted / "steps.csv") >= 1, run, "the first optimiser step")
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert "state saved at epoch 1" in err and not (interrupted / "student.safetensors").exists()

    run = subprocess.Popen(fat(*common, "--out", str(interrupted), "--resume"), env=environment(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: data_rows(interrupted / "epochs.csv") >= 1, run, "the end of epoch 1")
    run.kill()  # no chance to save: the end-of-epoch-1 state on disk is what a resume continues from
    run.wait(timeout=60)

    done = subprocess.run(fat(*common, "--out", str(interrupted), "--resume"), env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected, resumed = state_dict(straight / "student.safetensors"), state_dict(interrupted / "student.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert training_columns(interrupted / "epochs.csv") == training_columns(straight / "epochs.csv")
    steps = lambda path: [line.split(",")[:7] for line in path.read_text().splitlines()]  # noqa: E731
    assert steps(interrupted / "steps.csv") == steps(straight / "steps.csv")


@pytest.mark.slow  # several processes started, signalled and restarted: 10-30 s here, up to ~100 s on 2 CI cores
def test_torchrun_two_gloo_ranks_train_and_score_every_validation_clip(task):
    from pipeline.checkpoint import load_student
    from pipeline.datafile import load_clips, load_label_csv
    from pipeline.dataset import ClipDataset, DeviceInputs, Features, collate_clips
    from pipeline.metrics import multilabel_metrics

    out = task.root / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pipeline.cli", "train", "--train", str(task.train), "--valid", str(task.valid), "--teacher",
               str(task.root / "teacher.h5"), *TINY, "--device", "cpu", "--kd-lambda", "0.5", "--epochs", "1",
               "--batch-size", "2", "--lr", "3e-4", "--warmup-steps", "0", "--wa-start", "1", "--wa-end", "1",
               "--num-workers", "0", "--out", str(out)]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    # 16 clips over 2 ranks × batch 2 = 4 optimiser steps; 7 validation clips (odd: no padding) all scored once.
    assert result["history"][0]["step"] == 4
    assert result["final"]["clips"] == 7
    clips = load_clips([task.valid], load_label_csv(task.labels), require_files=True)
    dataset = ClipDataset(clips, Features(64, 128))
    model, _ = load_student(out / "student.safetensors")
    with torch.no_grad():
        batch = collate_clips([dataset[i] for i in range(len(dataset))])
        scores = model(DeviceInputs(dataset.features).evaluation(batch)).numpy()
    assert multilabel_metrics(task.valid_targets, scores)["mAP"] == pytest.approx(result["final"]["mAP"], abs=1e-6)
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".pt", ".json", ".safetensors")) == \
        ["result.json", "student.safetensors", "train_state.pt"]
