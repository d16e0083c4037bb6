"""fat finetune-teacher: a random-init mn at width 0.1 learns a tiny 3-class set, resumes exactly, and its
teacher.pt drives fat logits (C columns, its label CSV only) and fat predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.core.audio import write_wav
from pipeline.datafile import DatafileEntry, write_datafile, write_label_csv
from pipeline.finetune.augment import Recipe, augment_waves, mixup_spectrograms
from pipeline.finetune.schedule import RampSchedule
from pipeline.store import LogitsStore
from teacher import released
from teacher.finetuned import class_dependent_keys, load_finetuned, start_network
from tests.esc50_fixtures import clip

CLASSES = ("dog", "rain", "siren")


def tiny_set(root: Path, per_class: dict[str, int], rate: int = 16000) -> Path:
    """Tone clips of three classes under root/audio, a datafile per split and the label CSV beside them."""
    write_label_csv(root / "class_labels_indices.csv", [f"/m/t{i}" for i in range(3)], list(CLASSES))
    for split, count in per_class.items():
        entries = []
        for c, name in enumerate(CLASSES):
            for k in range(count):
                clip_id = f"{split}_{name}_{k}"
                write_wav(root / "audio" / f"{clip_id}.wav", clip(name, 7 * k + c + (100 if split == "valid" else 0),
                                                                    0.5, rate), rate)
                entries.append(DatafileEntry(clip_id, f"audio/{clip_id}.wav", (f"/m/t{c}",)))
        write_datafile(root / f"{split}.json", entries)
    return root


def finetune_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune-teacher", "--teacher", "mn01_as", "--random-init", "--train", str(data / "train.json"),
            "--valid", str(data / "valid.json"), "--out", str(out), "--clip-seconds", "0.5", "--batch-size", "9",
            "--num-workers", "0", "--threads", "1", "--lr", "3e-3", "--warmup-epochs", "0", "--log-every", "1",
            *extra]


def test_a_random_init_mn_fine_tunes_resumes_exactly_and_feeds_logits_and_predict(tmp_path: Path, capsys) -> None:
    data = tiny_set(tmp_path / "data", {"train": 3, "valid": 1})
    # two epochs straight, and one epoch then --resume to two: the same teacher
    assert main(finetune_args(data, tmp_path / "straight", "--epochs", "2", "--no-dvclive")) == 0
    assert main(finetune_args(data, tmp_path / "resumed", "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(finetune_args(data, tmp_path / "resumed", "--epochs", "2")) == 2
    assert "a fine-tuning already lives in" in capsys.readouterr().err
    assert main(finetune_args(data, tmp_path / "resumed", "--epochs", "2", "--resume", "--lr", "1e-3")) == 2
    assert "cannot resume with changed settings (lr: 0.003 → 0.001)" in capsys.readouterr().err
    assert main(finetune_args(data, tmp_path / "resumed", "--epochs", "2", "--resume")) == 0
    straight, resumed = load_finetuned(tmp_path / "straight/teacher.pt"), load_finetuned(tmp_path / "resumed/teacher.pt")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    result = json.loads((tmp_path / "resumed/result.json").read_text())
    assert result["epochs"] == 2 and result["main_metric"] == "accuracy" and not result["multi_label"]
    assert 0.0 <= result["final"]["accuracy"] <= 1.0
    rows = (tmp_path / "resumed/epochs.csv").read_text().splitlines()
    assert len(rows) == 3 and "valid/accuracy" in rows[0]  # header + one row per epoch, none doubled by the resume
    assert (tmp_path / "resumed/dvclive/metrics.json").is_file()

    # the file: classes, label CSV sha256, single-label, the registry entry it came from
    assert straight.num_classes == 3 and straight.names == CLASSES and not straight.multi_label
    assert straight.provenance.name == "mn01_as-finetuned"
    assert straight.provenance.architecture["finetuned_from"] == "mn01_as"
    raw = torch.load(tmp_path / "straight/teacher.pt", weights_only=True)
    assert raw["format"] == "fat-teacher/1" and raw["extra"]["start"]["random_init"] is True

    # fat logits --teacher FILE: three columns, tied to the label CSV it learned
    store = tmp_path / "logits.h5"
    assert main(["logits", "--teacher", str(tmp_path / "straight/teacher.pt"), "--datafile", str(data / "valid.json"),
                 "--out", str(store), "--clip-seconds", "0.5", "--workers", "0", "--batch-size", "4"]) == 0
    with LogitsStore(store) as opened:
        assert opened.num_classes == 3 and len(opened) == 3
        assert opened.attrs["teacher"] == "mn01_as-finetuned"
        assert opened.attrs["label_csv_sha256"] == straight.label_csv_sha256
        logits, present = opened.fetch(["valid_siren_0"])
    assert present.all()
    assert logits.shape == (1, 3)
    other = tmp_path / "other"
    write_label_csv(other / "class_labels_indices.csv", [f"/m/t{i}" for i in range(3)], ["a", "b", "c"])  # same MIDs, other file
    capsys.readouterr()
    assert main(["logits", "--teacher", str(tmp_path / "straight/teacher.pt"), "--datafile", str(data / "valid.json"),
              "--labels", str(other / "class_labels_indices.csv"), "--out", str(tmp_path / "x.h5"),
              "--clip-seconds", "0.5", "--workers", "0"]) == 2
    assert "not the label CSV teacher" in capsys.readouterr().err

    # fat predict runs it like a released teacher
    capsys.readouterr()
    assert main(["predict", str(data / "audio/valid_dog_0.wav"), "--teacher", str(tmp_path / "straight/teacher.pt"),
                 "--labels", str(data / "class_labels_indices.csv"), "--json"]) == 0
    tagged = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in tagged["files"][0]["pooled"]["top"]} <= set(CLASSES)


def test_multi_label_data_trains_with_bce(tmp_path: Path) -> None:
    data = tiny_set(tmp_path / "data", {"train": 2, "valid": 1})
    listing = json.loads((data / "train.json").read_text())
    listing["data"][0]["labels"] = "/m/t0,/m/t1"  # one clip with two classes: the set is multi-label
    (data / "train.json").write_text(json.dumps(listing))
    assert main(finetune_args(data, tmp_path / "out", "--epochs", "1", "--no-dvclive")) == 0
    result = json.loads((tmp_path / "out/result.json").read_text())
    assert result["multi_label"] and result["main_metric"] == "mAP" and "mAP" in result["final"]
    assert load_finetuned(tmp_path / "out/teacher.pt").multi_label


def test_released_body_is_kept_and_the_audioset_head_replaced() -> None:
    spec = released("mn01_as")
    torch.manual_seed(1)
    audioset = spec.build_model().state_dict()
    head = class_dependent_keys(spec, 3)
    assert head == {"classifier.5.weight", "classifier.5.bias"}
    model = start_network(spec, 3, dict(audioset), "released.pt")
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in audioset.items() if k not in head)
    assert own["classifier.5.weight"].shape[0] == 3
    broken = {k: v for k, v in audioset.items() if k != "features.3.block.0.0.weight"}
    with pytest.raises(Exception, match=r"released.pt: checkpoint does not fit mn01_as's network \(1 missing: "
                                        r"features.3.block.0.0.weight\)"):
        start_network(spec, 3, broken, "released.pt")


def test_recipe_schedule_and_augmentation_follow_efficientat() -> None:
    schedule = RampSchedule(6e-5)  # ex_esc50.py: warm-up 10, ramp-down from 10 over 65 to 0.01
    assert schedule.factor(1) == pytest.approx(np.exp(-5 * 0.95 ** 2))
    assert schedule.factor(11) == 1.0 and schedule.factor(12) == pytest.approx(0.01 + 0.99 * 64 / 65)
    assert schedule.factor(76) == pytest.approx(0.01) and schedule.factor(80) == pytest.approx(0.01)
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(8, 1000)
    targets = torch.eye(4)[torch.arange(8) % 4]
    mixed, mixed_targets = augment_waves(waves, targets, Recipe(12, 100, 1.0, 0.3), generator)
    assert mixed.shape == waves.shape and torch.allclose(mixed_targets.sum(1), torch.ones(8))
    assert (mixed_targets.max(1).values >= 0.5).all()  # each clip keeps the larger share
    assert mixed.mean(1).abs().max() < 1e-5  # mixed clips are centred
    mel, mel_targets = mixup_spectrograms(torch.randn(8, 1, 16, 20), targets, 0.3, generator)
    assert mel.shape == (8, 1, 16, 20) and (mel_targets.max(1).values >= 0.5).all()
    same = augment_waves(waves, targets, Recipe(0, 0, 0.0, 0.0), generator)
    assert torch.equal(same[0], waves) and torch.equal(same[1], targets)


def test_batchnorm_statistics_are_measured_on_the_batches_given() -> None:
    """From scratch, BatchNorm's 1 %-per-step averages lag behind the network: measure_batchnorm replaces them
    by the mean over the batches of each batch's mean and (unbiased) variance, keeps the layer's momentum and leaves eval mode."""
    from torch import nn

    from teacher.teacher import measure_batchnorm

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, bias=False)
    model = nn.Sequential(conv, nn.BatchNorm2d(4, momentum=0.01), nn.ReLU())
    batches = [3.0 + 2.0 * torch.randn(5, 1, 8, 8) for _ in range(3)]
    assert measure_batchnorm(model, batches)
    with torch.no_grad():
        seen = [conv(b).transpose(0, 1).reshape(4, -1) for b in batches]  # per batch: channel × values
    norm = model[1]
    torch.testing.assert_close(norm.running_mean, torch.stack([s.mean(dim=1) for s in seen]).mean(dim=0))
    torch.testing.assert_close(norm.running_var, torch.stack([s.var(dim=1) for s in seen]).mean(dim=0))
    assert norm.momentum == 0.01 and not model.training
    assert not measure_batchnorm(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)), batches)  # PaSST-like: nothing


def test_random_init_measures_batchnorm_by_default_and_the_option_turns_it_off(tmp_path: Path) -> None:
    data = tiny_set(tmp_path / "data", {"train": 3, "valid": 1})
    every = ("--epochs", "3", "--valid-every", "2", "--no-dvclive")
    assert main(finetune_args(data, tmp_path / "auto", *every)) == 0
    assert main(finetune_args(data, tmp_path / "off", *every, "--bn-clips", "0")) == 0
    history = json.loads((tmp_path / "auto/result.json").read_text())["history"]
    assert ["valid/accuracy" in row for row in history] == [False, True, True]  # every 2nd epoch and the last
    settings = [torch.load(tmp_path / name / "teacher.pt", weights_only=True)["extra"]["settings"]["bn_clips"]
                for name in ("auto", "off")]
    assert settings == [1024, 0]
    auto, off = (load_finetuned(tmp_path / name / "teacher.pt").model.state_dict() for name in ("auto", "off"))
    means = [key for key in auto if key.endswith("running_mean")]
    # three steps at momentum 0.01 leave the stats near their start (0); measured ones are the activations'
    assert max(float(off[k].abs().max()) for k in means) < 0.5 * max(float(auto[k].abs().max()) for k in means)
    assert all(torch.equal(auto[k], off[k]) for k in auto if "running" not in k and "num_batches" not in k)
