"""The stages read packed audio through the `packed` setting: the same results as from the audio files.

Each test packs real audio with `fat pack`, then runs the stage's own command (or the training
run's own DataLoader) on the files and on the packed store with the files moved away, so a
stage that still opened a file fails instead of passing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import runtime
from pipeline.cli import main
from pipeline.store import LogitsStore
from tests.test_logits import logits_args, make_corpus
from tests.train_fixtures import make_task


def pack(datafile: Path, out: Path, *extra: str) -> Path:
    assert main(["pack", "--datafile", str(datafile), "--out-dir", str(out), "--workers", "1", "--shard-clips", "3",
                 *extra]) == 0
    return out


def store_rows(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    store = LogitsStore(path)
    values, present = store.fetch(list(store.ids))
    assert present.all()
    rows = dict(zip(store.ids, values, strict=True))
    attrs = dict(store.attrs)
    store.close()
    return rows, attrs


@pytest.fixture(scope="module")
def logits_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """WAV and FLAC sources at 16, 32 and 44.1 kHz, mono and stereo (the reader must mix and resample alike)."""
    return make_corpus(tmp_path_factory.mktemp("logits-packed"), {"train": 7, "eval": 5})


def test_teacher_logits_from_a_flac_pack_equal_the_wav_files_bit_for_bit(logits_corpus, tmp_path):
    datafiles = [logits_corpus["train"], logits_corpus["eval"]]
    from_files = tmp_path / "files.h5"
    assert main(logits_args(datafiles, from_files)) == 0
    stores = [pack(d, tmp_path / "packed" / d.stem) for d in datafiles]
    audio = logits_corpus["train"].parent / "audio"
    hidden = audio.with_name("audio-moved")
    audio.rename(hidden)  # the packed run must not touch the files
    try:
        from_packed = tmp_path / "packed.h5"
        assert main(logits_args(datafiles, from_packed, "--packed", *map(str, stores))) == 0
    finally:
        hidden.rename(audio)
    files_rows, files_attrs = store_rows(from_files)
    packed_rows, packed_attrs = store_rows(from_packed)
    assert list(files_rows) == list(packed_rows)
    for clip_id, row in files_rows.items():
        assert np.array_equal(row, packed_rows[clip_id]), clip_id
    # Lossless packing is the same data: the same identity, so either store is reused by the other's run.
    assert files_attrs["identity_sha256"] == packed_attrs["identity_sha256"]
    assert main(logits_args(datafiles, from_files, "--packed", *map(str, stores))) == 0
    assert store_rows(from_files)[1]["identity_sha256"] == files_attrs["identity_sha256"]


def test_vorbis_packed_logits_carry_the_codec_in_their_identity(logits_corpus, tmp_path, capsys):
    datafile = logits_corpus["eval"]
    exact = tmp_path / "exact.h5"
    assert main(logits_args([datafile], exact)) == 0
    store = pack(datafile, tmp_path / "vorbis", "--codec", "vorbis")
    assert main(logits_args([datafile], exact, "--packed", str(store))) == 2
    assert "another teacher or other settings" in capsys.readouterr().err
    lossy = tmp_path / "lossy.h5"
    assert main(logits_args([datafile], lossy, "--packed", str(store))) == 0
    _, exact_attrs = store_rows(exact)
    rows, lossy_attrs = store_rows(lossy)
    assert len(rows) == 5 and all(np.isfinite(r).all() for r in rows.values())
    assert lossy_attrs["identity_sha256"] != exact_attrs["identity_sha256"]


def test_logits_refuse_a_store_packed_from_another_datafile(logits_corpus, tmp_path, capsys):
    store = pack(logits_corpus["eval"], tmp_path / "eval")
    assert main(logits_args([logits_corpus["train"]], tmp_path / "x.h5", "--packed", str(store))) == 2
    assert "packed from another datafile" in capsys.readouterr().err


def first_batches(config_args: dict, count: int) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches of the training run's own DataLoader (Trainer.build_data)."""
    from pipeline.training.config import TrainConfig
    from pipeline.training.loop import Trainer

    config = TrainConfig(**config_args)
    config.check()
    trainer = Trainer(config, runtime.start("cpu", 1))
    trainer.build_data()
    trainer.sampler.set_epoch(0)
    batches = []
    for batch in trainer.train_loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def test_training_on_packed_or_wav_input_gives_the_same_batches(tmp_path):
    task = make_task(tmp_path / "task", n_train=24, n_valid=6)
    stores = [pack(task.train, tmp_path / "packed" / "train"), pack(task.valid, tmp_path / "packed" / "valid")]
    settings = {"train": (task.train,), "valid": task.valid, "labels": task.labels, "kd_lambda": 1.0,
                "mixup": 0.5, "freqm": 8, "timem": 10, "target_frames": 64, "num_mel_bins": 32, "batch_size": 5,
                "num_workers": 1, "seed": 7, "device": "cpu", "threads": 1}
    from_files = first_batches({**settings, "out": tmp_path / "a"}, 3)
    (task.root / "audio").rename(task.root / "audio-moved")
    with_packed = first_batches({**settings, "out": tmp_path / "b", "packed": stores}, 3)
    assert len(from_files) == len(with_packed) == 3
    for one, other in zip(from_files, with_packed, strict=True):
        assert one.keys() == other.keys()
        for key, value in one.items():
            assert torch.equal(value, other[key]), key
    with pytest.raises(Exception, match="missing"):  # neither files nor stores: named, before any batch
        first_batches({**settings, "out": tmp_path / "c"}, 1)


def test_evaluate_and_stats_accept_packed_stores(tmp_path, capsys):
    from tests.test_evaluate import _make_eval_set

    eval_set = _make_eval_set(tmp_path / "set")
    store = pack(eval_set.datafile, tmp_path / "packed")
    base = ["evaluate", "--checkpoint", str(eval_set.checkpoint), "--datafile", str(eval_set.datafile), "--r", "0",
            "--batch-size", "4", "--warmup-batches", "0", "--timed-batches", "1", "--device", "cpu", "--threads", "1"]
    assert main([*base, "--out-dir", str(tmp_path / "files")]) == 0
    assert main(["stats", str(eval_set.datafile), "--frames", "64", "--out", str(tmp_path / "files.json")]) == 0
    (eval_set.root / "audio").rename(eval_set.root / "audio-moved")
    assert main([*base, "--out-dir", str(tmp_path / "no-audio")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main([*base, "--packed", str(store), "--out-dir", str(tmp_path / "packed")]) == 0
    assert main(["stats", str(eval_set.datafile), "--frames", "64", "--packed", str(store),
                 "--out", str(tmp_path / "packed.json")]) == 0
    files = json.loads((tmp_path / "files" / "eval.json").read_text())["student"]["r=0"]
    packed = json.loads((tmp_path / "packed" / "eval.json").read_text())["student"]["r=0"]
    assert files["mAP"] == packed["mAP"] and files["mAUC"] == packed["mAUC"]
    for key in ("mean", "std", "cells"):
        assert json.loads((tmp_path / "files.json").read_text())[key] == \
            json.loads((tmp_path / "packed.json").read_text())[key]


def test_predict_tags_clips_of_a_packed_store_by_id(logits_corpus, tmp_path, capsys):
    datafile = logits_corpus["eval"]
    store = pack(datafile, tmp_path / "eval")
    capsys.readouterr()  # fat pack's own lines
    first = json.loads(datafile.read_text())["data"][0]
    labels = datafile.parent / "class_labels_indices.csv"
    common = ["--teacher", "mn01_as", "--random-init", "--labels", str(labels), "--window", "0.5", "--json",
              "--device", "cpu"]
    assert main(["predict", str(datafile.parent / first["wav"]), *common]) == 0
    from_file = json.loads(capsys.readouterr().out)["files"][0]
    assert main(["predict", "--packed", str(store), "--id", first["id"], *common]) == 0
    from_id = json.loads(capsys.readouterr().out)["files"][0]
    assert from_id["path"] == f"id {first['id']}"
    assert from_id["windows"] == from_file["windows"] and from_id["pooled"] == from_file["pooled"]
    assert main(["predict", "--packed", str(store), "--id", "no-such-id", *common]) == 2
    assert "no-such-id" in capsys.readouterr().err
    assert main(["predict", "--id", first["id"], *common]) == 2


def test_predict_takes_ids_that_start_with_a_dash(logits_corpus, tmp_path, capsys):
    """AudioSet ids may start with '-' or '--' (the help's own example): after --id they are ids, not options."""
    entries = json.loads(logits_corpus["eval"].read_text())["data"][:3]
    dashed = ["--4gqARaEJE0", "-0Qx2kCxA7s", "plain-id"]
    datafile = logits_corpus["eval"].with_name("dashed.json")
    datafile.write_text(json.dumps({"data": [{**e, "id": i} for e, i in zip(entries, dashed, strict=True)]}))
    store = pack(datafile, tmp_path / "dashed")
    capsys.readouterr()
    common = ["--teacher", "mn01_as", "--random-init", "--window", "0.5", "--json", "--device", "cpu"]
    assert main(["predict", "--packed", str(store), "--id", *dashed, *common]) == 0
    assert [f["path"] for f in json.loads(capsys.readouterr().out)["files"]] == [f"id {i}" for i in dashed]
    assert main(["predict", "--packed", str(store), "--id=-0Qx2kCxA7s", "--json", "--random-init", "--teacher",
                 "mn01_as", "--window", "0.5", "--device", "cpu"]) == 0
    assert [f["path"] for f in json.loads(capsys.readouterr().out)["files"]] == ["id -0Qx2kCxA7s"]
