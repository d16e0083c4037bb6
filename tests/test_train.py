"""`fat train` in this process: a tiny AST learns a generated task; policies, errors, schedule, presets."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dvc.parsing.interpolate import to_str

from pipeline.cli import build_parser, main
from tests.train_fixtures import make_task, oracle_logits, write_store

REPO = Path(__file__).resolve().parents[1]

# A tiny AST over 128 mel bins × 96 frames with 16×16 strides: 8 × 6 = 48 patches. One torch
# thread: on a small shared machine more threads only spin against each other.
TINY = ["--model-size", "tiny224", "--fstride", "16", "--tstride", "16", "--target-frames", "96",
        "--num-workers", "0", "--no-progress", "--threads", "1"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    task = make_task(root, n_train=40, n_valid=20, num_classes=4, seed=0)
    write_store(root / "teacher.h5", task.train_ids, oracle_logits(task.train_targets), task.labels)
    return task


def base_args(task, out: Path, *extra: str) -> list[str]:
    return ["train", "--train", str(task.train), "--valid", str(task.valid), "--teacher",
            str(task.root / "teacher.h5"), "--out", str(out), *TINY, *extra]


LEARNED = ("--kd-lambda", "0.5", "--mixup", "0.3", "--freqm", "8", "--timem", "10", "--epochs", "5", "--batch-size",
           "8", "--lr", "3e-4", "--warmup-steps", "5", "--lr-decay-start", "100", "--wa-start", "3", "--wa-end", "5",
           "--log-every", "2")


@pytest.fixture(scope="module")
def learned(task):
    """One real training run shared by the tests that inspect its outputs."""
    out = task.root / "run"
    code = main(base_args(task, out, *LEARNED))
    assert code == 0
    return out


def test_tiny_ast_learns_a_generated_multilabel_task(task, learned):
    from pipeline.checkpoint import load_student
    from pipeline.datafile import load_clips, load_label_csv
    from pipeline.dataset import ClipDataset, DeviceInputs, Features, collate_clips
    from pipeline.metrics import multilabel_metrics
    from student import create_ast

    result = json.loads((learned / "result.json").read_text())
    assert result["weight_averaged"] and result["epochs"] == 5
    assert result["final"]["mAP"] >= 0.9, result["final"]
    clips = load_clips([task.valid], load_label_csv(task.labels), require_files=True)
    dataset = ClipDataset(clips, Features(96, 128))
    fbank = DeviceInputs(dataset.features).evaluation(collate_clips([dataset[i] for i in range(len(dataset))]))
    # The untrained model (same seed, same initial weights) is far from it: this is learning.
    torch.manual_seed(0)
    untrained = create_ast("tiny224", 4, 128, 96, 16, 16).eval()
    with torch.no_grad():
        assert multilabel_metrics(task.valid_targets, untrained(fbank).numpy())["mAP"] < 0.7
    # student.safetensors is the weight-averaged model whose metrics the run reported.
    model, config = load_student(learned / "student.safetensors")
    assert config["norm_mean"] == pytest.approx(-4.2677393) and config["multi_label"] and config["tome_r"] == "0"
    head = config["head_init"]  # a new head: its bias from the label prior, calibrated on the training clips
    assert head["init"] == "prior" and not head["from_checkpoint"] and head["calibration_clips"] == 40
    assert config["teacher_store"]["teacher"] == "oracle-test-teacher" and config["label_noise"] == 0.0
    with torch.no_grad():
        scores = model(fbank).numpy()
    assert multilabel_metrics(task.valid_targets, scores)["mAP"] == pytest.approx(result["final"]["mAP"], abs=1e-6)


def test_logs_epochs_steps_and_dvclive(learned):
    epochs = read_csv(learned / "epochs.csv")
    assert [int(row["epoch"]) for row in epochs] == [1, 2, 3, 4, 5]
    assert float(epochs[-1]["train/loss"]) < float(epochs[0]["train/loss"])
    for key in ("train/label", "train/kd", "valid/mAP", "valid/mAUC", "valid/d_prime", "train/clips_per_s"):
        assert key in epochs[0]
    steps = read_csv(learned / "steps.csv")
    assert [int(row["step"]) for row in steps] == list(range(2, 26, 2))  # 5 batches × 5 epochs, every 2nd
    assert float(steps[0]["lr"]) == pytest.approx(3e-4 * 2 / 5)  # linear warm-up over 5 steps
    metrics = json.loads((learned / "dvclive" / "metrics.json").read_text())
    assert metrics["final"]["mAP"] == pytest.approx(json.loads((learned / "result.json").read_text())["final"]["mAP"])
    plot = (learned / "dvclive" / "plots" / "metrics" / "valid" / "mAP.tsv").read_text().splitlines()
    assert plot[0].split("\t") == ["step", "mAP"] and len(plot) == 6


def test_existing_run_is_never_overwritten_and_resume_refuses_changed_settings(task, learned, capsys):
    assert main(base_args(task, learned, "--kd-lambda", "0.5")) == 2
    assert "already lives in" in capsys.readouterr().err
    assert main(base_args(task, learned, "--kd-lambda", "0.2", "--resume")) == 2
    assert "kd_lambda: 0.5 → 0.2" in capsys.readouterr().err
    # the same settings on other clips (one label changed, same count) is another run, not this one
    entries = json.loads(task.train.read_text())["data"]
    entries[0] = {**entries[0], "labels": entries[1]["labels"] if entries[1]["labels"] != entries[0]["labels"]
                  else entries[2]["labels"]}
    other = task.root / "other" / "train.json"
    other.parent.mkdir(exist_ok=True)
    other.write_text(json.dumps({"data": [{**e, "wav": str(task.root / e["wav"])} for e in entries]}))
    args = base_args(task, learned, *LEARNED, "--resume", "--labels", str(task.labels))
    args[args.index("--train") + 1] = str(other)
    before = (learned / "train_state.pt").read_bytes()
    assert main(args) == 2
    assert "the training clips differ from the saved run's" in capsys.readouterr().err
    assert (learned / "train_state.pt").read_bytes() == before


def test_missing_teacher_rows_error_by_default_and_mask_trains(task, tmp_path, capsys):
    partial = write_store(tmp_path / "partial.h5", task.train_ids[4:], oracle_logits(task.train_targets[4:]),
                          task.labels)
    args = ["train", "--train", str(task.train), "--valid", str(task.valid), "--teacher", str(partial), *TINY,
            "--epochs", "1", "--batch-size", "8", "--mixup", "0", "--kd-lambda", "0.5", "--no-wa"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "4 of 40 clips" in err and "train000, train001, train002, train003" in err
    assert not (tmp_path / "a" / "student.safetensors").exists()
    # the same clips from two datafiles (as balanced + unbalanced AudioSet): one list, one coverage
    entries = json.loads(task.train.read_text())["data"]
    halves = [tmp_path / "first.json", tmp_path / "second.json"]
    for path, part in zip(halves, (entries[:25], entries[25:]), strict=True):
        path.write_text(json.dumps({"data": [{**e, "wav": str(task.root / e["wav"])} for e in part]}))
    split = [*args[:2], *map(str, halves), *args[3:]]
    assert main([*split, "--labels", str(task.labels), "--out", str(tmp_path / "b"), "--missing-teacher", "mask"]) == 0
    row = read_csv(tmp_path / "b" / "epochs.csv")[0]
    assert float(row["train/teacher_coverage"]) == pytest.approx(36 / 40)


def test_single_label_cross_entropy_with_kd_reports_accuracy(tmp_path):
    """Also runs bf16 autocast on the CPU, balanced sampling and gradient clipping."""
    task = make_task(tmp_path, n_train=12, n_valid=6, num_classes=3, seed=5)
    for split in (task.train, task.valid):  # keep one label per clip
        data = json.loads(split.read_text())
        for entry in data["data"]:
            entry["labels"] = entry["labels"].split(",")[0]
        split.write_text(json.dumps(data))
    ids = task.train_ids
    store = write_store(tmp_path / "t.h5", ids, np.random.default_rng(0).normal(size=(len(ids), 3)), task.labels)
    out = tmp_path / "ce"
    assert main(["train", "--train", str(task.train), "--valid", str(task.valid), "--teacher", str(store), *TINY,
                 "--out", str(out), "--loss", "ce", "--kd-lambda", "0.5", "--kd-temperature", "2", "--epochs", "1",
                 "--batch-size", "6", "--no-wa", "--noise", "--time-shift", "5", "--precision", "bf16", "--balanced",
                 "--target-frames", "32",
                 "--grad-clip", "1.0"]) == 0
    row = read_csv(out / "epochs.csv")[0]
    assert 0.0 <= float(row["valid/accuracy"]) <= 1.0 and float(row["train/kd"]) > 0


@pytest.mark.parametrize("extra,message", [
    (["--kd-lambda", "0.5"], "needs teacher logits"),
    (["--kd-lambda", "1", "--loss", "ce"], "exactly one label per clip"),
    (["--kd-lambda", "1.5"], "--kd-lambda must lie in [0, 1]"),
    (["--kd-lambda", "1", "--epochs", "2", "--wa-start", "3"], "after the last epoch"),
    (["--kd-lambda", "1", "--tome-r", "x"], "cannot read r"),
    (["--kd-lambda", "1", "--fstride", "20"], "fstride must be between 1 and 16"),
    (["--kd-lambda", "1", "--depth", "2", "--imagenet-weights", __file__], "--depth 2 builds a new, shallower"),
])
def test_bad_settings_fail_before_training(task, tmp_path, capsys, extra, message):
    args = ["train", "--train", str(task.train), "--valid", str(task.valid), "--out", str(tmp_path / "out"),
            *TINY, *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "student.safetensors").exists()


def test_depth_trains_a_shallower_backbone_that_every_reader_rebuilds(task, tmp_path, caplog):
    """--depth 2: DeiT-Tiny's width at 2 blocks; the student file records it (size "custom"), so
    load_student (and with it evaluate, predict, export) rebuilds the same model without the option."""
    from pipeline.checkpoint import load_student
    from pipeline.training.config import TrainConfig
    from student.ast import MODEL_SIZES, size_with_depth

    assert size_with_depth("tiny224") == size_with_depth("tiny224", 12) == {"size": "tiny224"}
    pretrained = TrainConfig(train=(task.train,), valid=task.valid, out=tmp_path / "x", model_size="tiny224",
                             depth=12, imagenet_weights=Path(__file__), kd_lambda=1.0, wa=False)
    pretrained.check_settings()  # the size's own depth is no change: a pretrained start stays allowed
    out = tmp_path / "shallow"
    caplog.set_level("INFO")
    assert main(base_args(task, out, "--depth", "2", "--kd-lambda", "1", "--epochs", "1", "--batch-size", "8", "--no-wa")) == 0
    assert "training tiny224, 2 blocks" in caplog.text
    model, config = load_student(out / "student.safetensors")
    tiny = MODEL_SIZES["tiny224"]
    assert len(model.v.blocks) == 2 and config["size"] == "custom"
    assert (model.embed_dim, model.num_heads) == (tiny.embed_dim, tiny.num_heads)
    fbank = torch.zeros(1, 96, 128)
    assert model(fbank).shape == (1, task.train_targets.shape[1])


def test_bad_datafile_and_audio_are_named(task, tmp_path, capsys):
    data = json.loads(task.train.read_text())
    data["data"][3]["labels"] = "/m/nosuchclass"
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(data).replace('"audio/', f'"{task.root}/audio/'))
    args = ["train", "--valid", str(task.valid), "--labels", str(task.labels), "--kd-lambda", "1", *TINY]
    assert main([*args, "--train", str(unknown), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown.json" in err and "/m/nosuchclass" in err
    data = json.loads(task.train.read_text())
    data["data"][1]["wav"] = "audio/train/gone.wav"
    gone = task.root / "gone.json"
    gone.write_text(json.dumps(data))
    assert main([*args, "--train", str(gone), "--out", str(tmp_path / "b")]) == 2
    assert "gone.wav" in capsys.readouterr().err


def test_student_file_is_safetensors_with_its_settings_in_the_header(learned, task, tmp_path, capsys):
    """What users load is a safetensors file (no pickle) whose header carries what rebuilds the model
    and its input; an old run folder with a student.pt is still never overwritten."""
    from safetensors import safe_open

    from pipeline.checkpoint import SAFETENSORS_FORMAT, load_student, save_student

    path = learned / "student.safetensors"
    assert not (learned / "student.pt").exists()
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    config = json.loads(header["config"])
    assert header["format"] == SAFETENSORS_FORMAT
    assert (config["size"], config["num_classes"], config["input_tdim"]) == ("tiny224", 4, 96)
    assert config["norm_mean"] == pytest.approx(-4.2677393) and config["norm_source"].startswith("from AudioSet's")
    assert config["label_csv_sha256"] and config["tome_r"] == "0"
    assert json.loads(header["extra"])["weight_averaged"] is True
    assert json.loads((learned / "result.json").read_text())["model"] == "student.safetensors"
    old = tmp_path / "old"  # an --out holding an older run's student.pt: refused, not replaced
    old.mkdir()
    save_student(old / "student.pt", *load_student(path))
    before = (old / "student.pt").read_bytes()
    assert main(base_args(task, old, "--kd-lambda", "1", "--epochs", "1", "--no-wa")) == 2
    assert "student.pt exists" in capsys.readouterr().err and (old / "student.pt").read_bytes() == before


def test_a_small_dataset_run_says_what_the_recipe_does(task, tmp_path, caplog):
    """AST's AudioSet recipe on 40 one-second clips: the run says that warm-up never ends, that the
    decay never starts, that clips are cut to --target-frames, which fbank statistics it uses and
    where the head starts; and it logs the label loss over the classes the data has."""
    labels = tmp_path / "labels.csv"  # 4 classes in the data, 16 more in the label CSV (as AudioSet's 527)
    rows = task.labels.read_text().splitlines() + [f'{k},/m/extra{k},"extra {k}"' for k in range(4, 20)]
    labels.write_text("\n".join(rows) + "\n")
    out = tmp_path / "small"
    caplog.set_level("INFO")
    args = ["train", "--train", str(task.train), "--valid", str(task.valid), "--labels", str(labels), "--out", str(out),
            *TINY, "--kd-lambda", "1", "--epochs", "2", "--batch-size", "8", "--no-wa", "--mixup", "0"]
    assert main(args) == 0
    lines = [record.getMessage() for record in caplog.records]

    def line(start: str) -> str:
        found = [text for text in lines if text.startswith(start)]
        assert len(found) == 1, (start, lines)
        return found[0]

    assert "(10 optimiser steps: 2 epochs × 5)" in line("--warmup-steps 1000 is longer than the whole run")
    assert "never decays" in line("--lr-decay-start 10: the first decay would come after epoch 10")
    cut = line("40 of the 40 training clips of epoch 1 are longer than --target-frames 96")
    assert "the longest 98 frames, 0.98 s" in cut
    assert "AudioSet's" in line("fbank normalisation: mean -4.26774, std 4.569")
    prior = line("head prior: 20 classes, bias min")
    assert "16 classes no training clip carries" in prior and "40 training clips" in prior
    epochs = read_csv(out / "epochs.csv")
    for row in epochs:  # 16 absent classes near zero loss dilute the plain mean; the present-class mean is not
        assert float(row["train/label_present"]) > 3 * float(row["train/label"])
        assert float(row["valid/label_present"]) > 3 * float(row["valid/loss"])
    assert "label_present" in (out / "steps.csv").read_text().splitlines()[0].split(",")


def test_schedule_warnings_only_for_what_a_run_never_reaches():
    from pipeline.training.schedule import LRSchedule, optimizer_steps_per_epoch, schedule_warnings

    assert optimizer_steps_per_epoch(240, 12) == 20 and optimizer_steps_per_epoch(241, 12, accum_steps=2) == 11
    # the issue's case: 240 clips at batch 12, AST's 1000 warm-up steps, 25 epochs = 500 steps
    (warmup,) = schedule_warnings(LRSchedule(5e-5, 1000, 10, 5, 0.5), 25, 20)
    assert "peaks at 2.5e-05, never at --lr 5e-05" in warmup
    assert schedule_warnings(LRSchedule(5e-5, 500, 24, 5, 0.5), 25, 20) == []  # ends at the last step; decays once
    (decay,) = schedule_warnings(LRSchedule(5e-4, 10, 19, 2, 0.5), 10, 12)
    assert "ends at epoch 10" in decay
    assert schedule_warnings(LRSchedule(5e-4, 10, 19, 2, 1.0), 10, 12) == []  # factor 1: no decay asked for
    demo = yaml.safe_load((REPO / "params.yaml").read_text())["train"]  # the demo recipe fits its 184 clips
    steps = optimizer_steps_per_epoch(184, demo["batch_size"])
    assert schedule_warnings(LRSchedule(demo["lr"], demo["warmup_steps"], demo["lr_decay_start"],
                                        demo["lr_decay_step"], demo["lr_decay_factor"]), demo["epochs"], steps) == []


def test_frame_tally_counts_cut_and_padded_clips():
    from pipeline.training.lengths import FrameTally

    tally = FrameTally(100)
    tally.update(torch.tensor([32000, 64000, 16000]), 32000)  # 1 s, 2 s, 0.5 s at 32 kHz: 98, 198, 48 frames
    assert (tally.clips, tally.cut, tally.longest) == (3, 1, 198)
    assert tally.message(1).startswith("1 of the 3 training clips of epoch 1 are longer than --target-frames 100")
    short = FrameTally(1024)
    short.update(torch.tensor([16000, 8000]), 16000)
    assert "padded to --target-frames 1024 (the longest 98 frames" in short.message(3)
    fits = FrameTally(98)
    fits.update(torch.tensor([16000]), 16000)
    assert fits.message(1) is None
    assert fits.merge([tally, short]).longest == 198


def _hf_folder(root: Path, preprocessor: dict | None) -> Path:
    """The two JSON files of a Hugging Face AST folder (the fbank statistics are read from them, not the weights)."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({
        "model_type": "audio-spectrogram-transformer", "architectures": ["ASTForAudioClassification"],
        "hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "intermediate_size": 768,
        "max_length": 96, "num_mel_bins": 128, "frequency_stride": 10, "time_stride": 10, "num_labels": 4}))
    (root / "model.safetensors").write_bytes(b"")
    if preprocessor is not None:
        (root / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return root


def test_fbank_statistics_follow_the_starting_weights(task, tmp_path):
    """--ast-checkpoint HF_FOLDER: the folder's preprocessor_config.json mean/std (what its weights were
    trained with) unless --norm-mean/--norm-std are given; otherwise AudioSet's. The source is named."""
    from pipeline.training.config import TrainConfig

    def config(**extra) -> TrainConfig:
        return TrainConfig(train=(task.train,), valid=task.valid, out=tmp_path / "x", kd_lambda=1.0, **extra)

    folder = _hf_folder(tmp_path / "hf", {"mean": -6.5, "std": 5.25, "max_length": 96, "num_mel_bins": 128})
    start = config(ast_checkpoint=folder)
    assert (start.norm_mean, start.norm_std) == (-6.5, 5.25)
    assert start.norm_source == f"from {folder / 'preprocessor_config.json'} (--ast-checkpoint)"
    own = config(ast_checkpoint=folder, norm_mean=-7.0)
    assert (own.norm_mean, own.norm_std) == (-7.0, 5.25) and own.norm_source.endswith("(--norm-mean as given)")
    both = config(ast_checkpoint=folder, norm_mean=-7.0, norm_std=3.0)
    assert (both.norm_mean, both.norm_std, both.norm_source) == (-7.0, 3.0, "from --norm-mean / --norm-std")
    bare = config(ast_checkpoint=_hf_folder(tmp_path / "bare", None))
    assert bare.norm_mean == pytest.approx(-4.2677393) and "has no preprocessor_config.json" in bare.norm_source
    assert config().norm_source == "from AudioSet's fbank statistics (student.features.NORM_STATS)"


def test_lr_schedule_matches_ast_balanced_log():
    from pipeline.training.schedule import LRSchedule

    schedule = LRSchedule(5e-5, warmup_steps=0, decay_start=10, decay_step=5, decay_factor=0.5)
    per_epoch = []
    for epoch in range(1, 26):
        schedule.epoch = epoch
        per_epoch.append(schedule.lr())
    # AST's shipped balanced-set result.csv: 10 epochs at 5e-5, then halving every 5 epochs.
    assert per_epoch == pytest.approx([5e-5] * 10 + [2.5e-5] * 5 + [1.25e-5] * 5 + [6.25e-6] * 5)
    full = LRSchedule(1e-5, warmup_steps=1000, decay_start=2, decay_step=1, decay_factor=0.5)
    assert full.lr() == pytest.approx(1e-8)  # first warm-up step: lr / 1000, never 0
    full.step, full.epoch = 5000, 4
    assert full.lr() == pytest.approx(1e-5 / 4)


def test_weight_average_is_the_mean_of_epoch_weights():
    from pipeline.training.averaging import WeightAverager

    model = torch.nn.Linear(3, 2)
    averager = WeightAverager(2, 3)
    snapshots = []
    for epoch in range(1, 5):
        with torch.no_grad():
            model.weight.add_(epoch)
        if averager.wants(epoch):
            averager.update(model)
            snapshots.append(model.weight.detach().clone())
    assert averager.count == 2
    torch.testing.assert_close(averager.averaged_state(model)["weight"], (snapshots[0] + snapshots[1]) / 2)


def dvc_argv(section: dict) -> list[str]:
    """The command line DVC itself renders from a params section (`${train}` with boolean_optional)."""
    return ["train", *shlex.split(to_str(section, config={"bool": "boolean_optional"}))]


@pytest.mark.parametrize("preset,expect", [
    ("audioset-balanced.yaml", {"lr": 2.5e-4, "batch_size": 8, "epochs": 16, "tstride": 12, "mixup": 0.5,
                                      "timem": 192, "lr_decay_start": 10, "wa_start": 6, "kd_lambda": 0.1}),
    ("audioset-full.yaml", {"lr": 1e-5, "epochs": 5, "balanced": True, "lr_decay_start": 2, "wa_end": 5}),
    ("speechcommands.yaml", {"lr": 2.5e-4, "timem": 48, "mixup": 0.6, "noise": True, "target_frames": 128,
                                   "lr_decay_factor": 0.85, "wa": False, "main_metric": "accuracy",
                                   "norm_mean": -6.845978}),
])
def test_presets_are_valid_fat_train_command_lines(preset, expect):
    from pipeline.dvcargs import normalise_argv
    from pipeline.settings import from_args
    from pipeline.training.config import TrainConfig

    section = yaml.safe_load((REPO / "configs" / preset).read_text())["train"]
    parser = build_parser()
    args = parser.parse_args(normalise_argv(parser, dvc_argv(section)))
    config = from_args(TrainConfig, args)
    for key, value in expect.items():
        assert getattr(config, key) == value, key
