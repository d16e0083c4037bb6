"""Knowledge distillation shown to help, offline: a label-derived oracle store teaches a student whose
training labels are corrupted (`fat logits --oracle-from-labels`, `fat train --label-noise`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.checkpoint import read_student_file
from pipeline.cli import main
from pipeline.core.errors import FatError
from pipeline.datafile import load_clips, load_label_csv
from pipeline.logits.oracle import ORACLE_LOGIT, ORACLE_NAME
from pipeline.store import LogitsStore
from pipeline.training.label_noise import corrupt_labels
from tests.train_fixtures import make_task

# A tiny AST on 48 frames (8 × 3 patches), a few epochs: seconds per run on one thread.
TINY = ["--model-size", "tiny224", "--fstride", "16", "--tstride", "16", "--target-frames", "48", "--num-workers", "0",
        "--no-progress", "--threads", "1", "--no-dvclive", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "5",
        "--lr-decay-start", "100", "--mixup", "0", "--freqm", "0", "--timem", "0", "--no-wa"]
NOISE = 0.8


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd_demo")
    task = make_task(root, n_train=40, n_valid=20, num_classes=4, seed=0)
    assert main(["logits", "--oracle-from-labels", "--datafile", str(task.train), "--out",
                 str(root / "oracle.h5")]) == 0
    return task


def test_oracle_store_is_the_labels_in_the_teacher_layout_and_says_so(task, capsys):
    store = LogitsStore(task.root / "oracle.h5")
    attrs = store.provenance()
    assert attrs["teacher"] == ORACLE_NAME and attrs["label_derived"] and "NOT A TEACHER" in attrs["warning"]
    assert attrs["complete"] and attrs["checkpoint_sha256"] == "" and not attrs["random_init"]
    logits, present = store.fetch(task.train_ids)
    store.close()
    assert present.all() and np.array_equal(logits, ORACLE_LOGIT * (2 * task.train_targets - 1))
    # rerun: up to date; another store at the path is never replaced without --overwrite
    capsys.readouterr()
    assert main(["logits", "--oracle-from-labels", "--datafile", str(task.train), "--out",
                 str(task.root / "oracle.h5")]) == 0
    assert "0 clips computed" in capsys.readouterr().out
    assert main(["logits", "--oracle-from-labels", "--datafile", str(task.valid), "--out",
                 str(task.root / "oracle.h5")]) == 2
    assert "already holds another store (teacher oracle-from-labels)" in capsys.readouterr().err
    assert main(["logits", "--oracle-from-labels", "--random-init", "--datafile", str(task.train), "--out",
                 str(task.root / "other.h5")]) == 2
    assert "uses no teacher model" in capsys.readouterr().err


def test_label_noise_is_seeded_and_keeps_the_label_frequencies(task):
    clips = load_clips([task.train], load_label_csv(task.labels))
    noisy, rows = corrupt_labels(clips, 0.5, seed=3)
    again, same_rows = corrupt_labels(clips, 0.5, seed=3)
    _, other_rows = corrupt_labels(clips, 0.5, seed=4)
    assert len(rows) == 20 and np.array_equal(rows, same_rows) and not np.array_equal(rows, other_rows)
    assert np.array_equal(noisy.targets(), again.targets())
    clean, corrupted = clips.targets(), noisy.targets()
    untouched = np.setdiff1d(np.arange(len(clips)), rows)
    assert np.array_equal(corrupted[untouched], clean[untouched])
    assert np.array_equal(corrupted.sum(axis=0), clean.sum(axis=0))  # each class as frequent as before
    assert (corrupted[rows] != clean[rows]).any(axis=1).mean() > 0.5  # most picked clips now carry wrong labels
    assert corrupt_labels(clips, 0.0, seed=3)[0] is clips
    with pytest.raises(FatError, match="must lie in"):
        corrupt_labels(clips, 1.5, seed=0)


def test_kd_from_the_oracle_beats_labels_only_on_corrupted_labels(task, tmp_path, caplog):
    """λ = 0.1 (mostly the oracle) against λ = 1 (labels only), 80 % of the training labels corrupted, 3 seeds."""
    maps: dict[str, list[float]] = {"1": [], "0.1": []}
    for seed in range(3):
        for kd_lambda in maps:
            out = tmp_path / f"s{seed}_l{kd_lambda}"
            args = ["train", "--train", str(task.train), "--valid", str(task.valid), "--teacher",
                    str(task.root / "oracle.h5"), "--out", str(out), *TINY, "--epochs", "4", "--kd-lambda", kd_lambda,
                    "--label-noise", str(NOISE), "--label-noise-seed", str(seed), "--seed", str(seed)]
            assert main(args) == 0
            maps[kd_lambda].append(json.loads((out / "result.json").read_text())["final"]["mAP"])
    assert "LABEL-DERIVED ORACLE, NOT A TEACHER" in caplog.text  # fat train says what it learns from
    student = read_student_file(tmp_path / "s0_l0.1" / "student.safetensors")["config"]
    assert student["teacher_store"]["label_derived"] and student["label_noise"] == NOISE
    labels_only, distilled = np.mean(maps["1"]), np.mean(maps["0.1"])
    assert distilled - labels_only >= 0.08 and all(d > l for d, l in zip(maps["0.1"], maps["1"])), maps
