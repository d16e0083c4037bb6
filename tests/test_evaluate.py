"""`fat evaluate` on a tiny real checkpoint: metrics per r, throughput, FLOPs, tokens, teacher row, reports."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.core.audio import write_wav
from pipeline.core.errors import FatError
from pipeline.evaluate.reports import markdown_table, rows_to_json
from pipeline.evaluate.rows import RANDOM_INIT_WARNING, EvalRow

RATE = 32000
CLASSES = ("/m/01v_m0", "/m/0chx_", "/m/07qc9xj")  # Sine wave, White noise, Clicking
NORM = (-4.2677393, 4.5689974)


@dataclass
class EvalSet:
    root: Path
    datafile: Path
    labels: Path
    ids: list[str]
    targets: np.ndarray
    checkpoint: Path


def _clip(classes: list[int], rng: np.random.Generator) -> np.ndarray:
    n = RATE // 2
    t = np.arange(n) / RATE
    audio = 0.005 * rng.standard_normal(n)
    if 0 in classes:
        audio += 0.3 * np.sin(2 * np.pi * rng.uniform(500, 2000) * t)
    if 1 in classes:
        audio += 0.1 * rng.standard_normal(n)
    if 2 in classes:
        clicks = np.zeros(n)
        clicks[:: RATE // 15] = 0.8
        audio += clicks
    return np.clip(audio, -1, 1).astype(np.float32)


def _make_eval_set(root: Path, count: int = 10, seed: int = 0) -> EvalSet:
    from pipeline.checkpoint import save_student
    from student import create_ast

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    labels = root / "class_labels_indices.csv"
    labels.write_text("index,mid,display_name\n" + "".join(
        f'{i},{mid},"{name}"\n' for i, (mid, name) in enumerate(zip(CLASSES, ("Sine wave", "White noise", "Clicking")))
    ), encoding="utf-8")
    entries, ids, targets = [], [], np.zeros((count, len(CLASSES)), np.float32)
    for i in range(count):
        classes = sorted({i % 3, int(rng.integers(3))})
        clip_id = f"-evalclip{i:02d}"[:11].ljust(11, "x")
        write_wav(root / "audio" / f"{clip_id}.wav", _clip(classes, rng), RATE)
        entries.append({"wav": f"audio/{clip_id}.wav", "labels": ",".join(CLASSES[c] for c in classes), "id": clip_id})
        ids.append(clip_id)
        targets[i, classes] = 1
    datafile = root / "eval.json"
    datafile.write_text(json.dumps({"data": entries}), encoding="utf-8")
    torch.manual_seed(seed)
    model = create_ast("tiny224", num_classes=len(CLASSES), input_tdim=64, fstride=16, tstride=16)
    checkpoint = root / "student.safetensors"  # what fat train writes
    save_student(checkpoint, model, {
        "norm_mean": NORM[0], "norm_std": NORM[1], "multi_label": True, "tome_r": "0",
        "label_csv_sha256": hashlib.sha256(labels.read_bytes()).hexdigest(), "target_frames": 64, "num_mel_bins": 128,
    })
    return EvalSet(root, datafile, labels, ids, targets, checkpoint)


def _write_teacher(path: Path, ids: list[str], logits: np.ndarray, labels: Path, random_init: bool) -> Path:
    from pipeline.store import write_store

    attrs = {
        "teacher": "mn10_as", "checkpoint_sha256": "", "random_init": random_init, "sample_rate": RATE,
        "frontend": "{}", "label_csv_sha256": hashlib.sha256(labels.read_bytes()).hexdigest(),
        "fat_version": "test", "created": "2025-01-01T00:00:00Z",
    }
    return write_store(path, ids, [(0, logits)], logits.shape[1], attrs, complete=True, dtype="float32")


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> EvalSet:
    return _make_eval_set(tmp_path_factory.mktemp("evalset"))


def _expected_scores(eval_set: EvalSet, r: int) -> np.ndarray:
    """The student's logits computed here, independently of fat evaluate's batching."""
    from pipeline.checkpoint import load_student
    from pipeline.core.audio import read_audio
    from student.features import kaldi_fbank, normalize
    from student.tome import set_tome_r

    model, _ = load_student(eval_set.checkpoint)
    set_tome_r(model, r)
    rows = []
    with torch.inference_mode():
        for clip_id in eval_set.ids:
            wave, _ = read_audio(eval_set.root / "audio" / f"{clip_id}.wav", 16000)
            wave = torch.from_numpy(wave)
            fbank = normalize(kaldi_fbank(wave - wave.mean(), 64), *NORM)
            rows.append(model(fbank[None])[0].numpy())
    return np.stack(rows)


def test_the_batch_feature_path_gives_the_per_clip_paths_logits(eval_set: EvalSet) -> None:
    """fat evaluate's loader and `DeviceInputs` (padded batches, the batched fbank) against a
    random-init student fed the per-clip torchaudio features: the same logits within 1e-4."""
    from pipeline.checkpoint import load_student, student_features
    from pipeline.datafile import load_clips, load_label_csv
    from pipeline.dataset import ClipDataset, DeviceInputs, collate_clips
    from torch.utils.data import DataLoader

    model, config = load_student(eval_set.checkpoint)
    clips = load_clips([eval_set.datafile], load_label_csv(eval_set.labels))
    loader = DataLoader(ClipDataset(clips, student_features(config)), batch_size=4, collate_fn=collate_clips)
    inputs = DeviceInputs(student_features(config))
    with torch.inference_mode():
        ours = np.concatenate([model(inputs.evaluation(batch)).numpy() for batch in loader])
    assert np.abs(ours - _expected_scores(eval_set, 0)).max() <= 1e-4


def test_evaluate_writes_metrics_speed_flops_tokens_for_every_r(eval_set: EvalSet, tmp_path: Path, caplog) -> None:
    from pipeline.evaluate.scoring import chance_map
    from pipeline.metrics import multilabel_metrics

    oracle = (6.0 * (2 * eval_set.targets - 1)).astype(np.float32)
    store = _write_teacher(tmp_path / "teacher.h5", eval_set.ids, oracle, eval_set.labels, random_init=True)
    out = tmp_path / "reports"
    caplog.set_level("INFO")
    code = main(["evaluate", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
                 "--teacher-logits", str(store), "--r", "0", "2", "4", "--batch-size", "4",
                 "--warmup-batches", "1", "--timed-batches", "1", "--rounds", "2", "--device", "cpu", "--threads", "1",
                 "--out-dir", str(out), "--progress-every", "0"])
    assert code == 0
    # each phase says when it starts, and the scoring pass how far it is (here: after every batch of 4)
    said = [record.getMessage() for record in caplog.records]
    assert "student: scoring at r = 0 2 4: 10 clips" in said
    assert [line.split(", ")[0] for line in said if line.startswith("  student: scoring")] == \
        [f"  student: scoring at r = 0 2 4: {done} / 10 clips" for done in (4, 8, 10)]
    assert "student: timing r = 0 2 4 on cpu, 1 threads: 2 rounds of 1 batches of 4 clips each" in said
    report = json.loads((out / "eval.json").read_text())
    students = report["student"]
    assert list(students) == ["r=0", "r=2", "r=4"]
    for r in (0, 4):  # the same numbers as running the model by hand, at r = 0 and with merging
        expected = multilabel_metrics(eval_set.targets, _expected_scores(eval_set, r))
        assert students[f"r={r}"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
        assert students[f"r={r}"]["mAUC"] == pytest.approx(expected["mAUC"], abs=1e-6)
    tokens = [students[k]["tokens_out"] for k in ("r=0", "r=2", "r=4")]
    flops = [students[k]["gflops"] for k in ("r=0", "r=2", "r=4")]
    assert tokens[0] == 8 * 4 + 2 and tokens[0] > tokens[1] > tokens[2]  # 8×4 patches + cls + dist
    assert flops[0] > flops[1] > flops[2] > 0
    assert all(students[k]["clips_per_second"] > 0 for k in students)
    # The teacher row comes from the store: an oracle teacher scores 1.0, flagged as random-init.
    assert report["teacher"]["mAP"] == pytest.approx(1.0)
    assert report["teacher"]["random_init"] is True
    table = (out / "eval.md").read_text()
    assert "| student | 4 |" in table and "teacher mn10_as" in table and RANDOM_INIT_WARNING in table
    assert f"a random ranking scores mAP ≈ {chance_map(eval_set.targets):.3f} on average" in table
    assert report["eval"]["chance_mAP"] == chance_map(eval_set.targets)
    png = (out / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_bad_inputs_fail_with_a_clear_message(eval_set: EvalSet, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["evaluate", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
            "--device", "cpu", "--threads", "1", "--out-dir", str(tmp_path / "out")]
    assert main(base + ["--r", "abc"]) == 2
    assert "--r abc" in capsys.readouterr().err
    assert main(base[:2] + [str(tmp_path / "nope.pt")] + base[3:]) == 2
    assert "nope.pt" in capsys.readouterr().err
    # A teacher store made for another class list cannot be compared column by column.
    other = tmp_path / "other_labels.csv"
    other.write_text("index,mid,display_name\n0,/m/x,\"x\"\n", encoding="utf-8")
    wrong = _write_teacher(tmp_path / "wrong.h5", eval_set.ids, np.zeros((len(eval_set.ids), 3), np.float32), other, False)
    assert main(base + ["--teacher-logits", str(wrong)]) == 2
    assert "another label list" in capsys.readouterr().err
    # Top-1 accuracy is undefined for clips with several labels: named, not silently mis-scored.
    several = int(np.flatnonzero(eval_set.targets.sum(axis=1) != 1)[0])
    assert main(base + ["--metric", "accuracy"]) == 2
    assert f"clip {eval_set.ids[several]} has 2" in capsys.readouterr().err
    assert not (tmp_path / "out" / "eval.json").exists()  # nothing half-written


def test_compared_checkpoint_lands_beside_the_r_sweep(eval_set: EvalSet, tmp_path: Path) -> None:
    """A stride baseline (here: another student file) is evaluated at r = 0 on the same chart."""
    from pipeline.checkpoint import load_student, save_student

    stride = tmp_path / "stride16" / "student.pt"  # the older torch form, still read
    stride.parent.mkdir()
    save_student(stride, *load_student(eval_set.checkpoint))
    out = tmp_path / "reports"
    assert main(["evaluate", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile),
                 "--r", "0", "2", "--compare", str(stride), "--timed-batches", "1", "--rounds", "1", "--device", "cpu",
                 "--out-dir", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert ", 1 threads" in report["eval"]["device"]  # the default: one core, timings that hold on a shared machine
    assert report["compare"]["stride16"]["mAP"] == pytest.approx(report["student"]["r=0"]["mAP"])
    assert "teacher" not in report


def test_report_rendering_handles_undefined_metrics() -> None:
    """A class-less eval subset has no mAP: JSON gets null, the table a dash, never NaN."""
    row = EvalRow(name="student", kind="student", r="0", clips=3,
                  metrics={"mAP": float("nan"), "mAUC": float("nan"), "d_prime": float("nan"), "classes": 0},
                  clips_per_second=10.0, gflops=1.0, tokens_in=10, tokens_out=10)
    assert rows_to_json([row], {})["student"]["r=0"]["mAP"] is None
    assert rows_to_json([row], {"chance_mAP": float("nan")})["eval"]["chance_mAP"] is None  # DVC reads no NaN
    table = markdown_table([row], True, {})
    assert "nan" not in table.lower() and "| – |" in table


def _ap_of_rankings(relevant: np.ndarray, order: np.ndarray) -> np.ndarray:
    """AP of each ranking (row of `order`, best first) of items whose relevance is `relevant`: the mean
    over the relevant items of the precision at their rank."""
    hits = relevant[order]                                  # (rankings, N), 1 where a relevant item lands
    precision = np.cumsum(hits, axis=1) / np.arange(1, order.shape[1] + 1)
    return (precision * hits).sum(axis=1) / relevant.sum()


def test_chance_is_the_mean_map_of_random_rankings() -> None:
    """eval.md's chance figure is what a random ranking scores on average: the exact expected AP per
    class, checked against 20,000 seeded random rankings (standard error < 0.001); rare classes in a
    small set lift it well above the share of positives."""
    from sklearn.metrics import average_precision_score

    from pipeline.evaluate.scoring import chance_map, expected_random_ap

    targets = np.zeros((30, 5), np.float32)
    for column, positives in enumerate((1, 2, 5, 15, 30)):  # the last has no negatives: it does not count
        targets[:positives, column] = 1
    rng = np.random.default_rng(0)
    orders = np.argsort(rng.random((20000, 30)), axis=1)
    for column in range(4):  # the AP computed here is sklearn's
        scores = np.empty(30)
        scores[orders[column]] = np.arange(30, 0, -1)
        assert _ap_of_rankings(targets[:, column], orders[column:column + 1])[0] == pytest.approx(
            average_precision_score(targets[:, column], scores))
    drawn = np.mean([_ap_of_rankings(targets[:, column], orders).mean() for column in range(4)])
    assert chance_map(targets) == pytest.approx(drawn, abs=0.003)
    share = float(np.mean([1, 2, 5, 15]) / 30)
    assert chance_map(targets) > share + 0.05
    assert expected_random_ap(55, 2) == pytest.approx(0.1005, abs=1e-4) and expected_random_ap(7, 7) == 1.0


def test_undefined_norm_is_an_error() -> None:
    from pipeline.checkpoint import student_features

    with pytest.raises(FatError, match="normalisation"):
        student_features({"input_tdim": 64})
