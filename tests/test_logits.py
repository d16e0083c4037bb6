"""`fat logits` end to end on generated audio: the store, metrics, resume after SIGKILL, torchrun,
undecodable clips, ensembles and the errors a user meets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.cli import main
from pipeline.core.audio import fit_length, read_audio
from pipeline.core.errors import FatError
from pipeline.logits.worklog import WorkLog
from pipeline.store import LogitsStore
from teacher import create_mn, load_teacher
from teacher.registry import MIRROR_ENV

RATE = 32000
CLASSES = [("/m/tone", "Tone"), ("/m/noise", "Noise"), ("/m/click", "Click")]


def clip_audio(kind: int, seconds: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    if kind == 0:
        audio = 0.5 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t)
    elif kind == 1:
        audio = 0.3 * rng.standard_normal(t.size)
    else:
        audio = np.zeros(t.size)
        audio[:: rate // 8] = 0.9
    return audio.astype(np.float32)


def make_corpus(root: Path, splits: dict[str, int], seconds: float = 0.5, seed: int = 0,
                label_csv: bool = True) -> dict[str, Path]:
    """WAV/FLAC clips at several rates and channel counts, AST datafiles and a label CSV."""
    rng = np.random.default_rng(seed)
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    if label_csv:
        rows = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(CLASSES)]
        (root / "class_labels_indices.csv").write_text("\n".join(rows) + "\n")
    datafiles = {}
    for split, count in splits.items():
        entries = []
        for i in range(count):
            kind = i % 3
            clip_id = f"{split[:2]}-{i:03d}"
            rate, suffix = [(RATE, ".wav"), (44100, ".flac"), (16000, ".wav")][i % 3]
            audio = clip_audio(kind, seconds * (1 + (i % 4) / 2), rng, rate)
            if i % 5 == 4:
                audio = np.stack([audio, 0.5 * audio], axis=1)  # stereo: mixed down to mono
            sf.write(audio_dir / f"{clip_id}{suffix}", audio, rate)
            entries.append({"wav": f"audio/{clip_id}{suffix}", "labels": CLASSES[kind][0], "id": clip_id})
        datafiles[split] = root / f"{split}.json"
        datafiles[split].write_text(json.dumps({"data": entries}))
    return datafiles


def logits_args(datafiles, out: Path, *extra: str, teacher: str = "mn01_as") -> list[str]:
    return ["logits", "--datafile", *map(str, datafiles), "--teacher", teacher, "--random-init", "--out", str(out),
            "--batch-size", "3", "--workers", "1", "--clip-seconds", "0.5", "--store-dtype", "float32", *extra]


def read_store(path: Path, allow_incomplete: bool = False) -> tuple[list[str], np.ndarray, dict]:
    store = LogitsStore(path, allow_incomplete=allow_incomplete)
    values, present = store.fetch(list(store.ids))
    assert present.all()
    return list(store.ids), values, store.attrs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_corpus(root, {"train": 7, "eval": 5})


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """One uninterrupted single-process float32 run over both datafiles, shared by several tests."""
    out = tmp_path_factory.mktemp("reference") / "logits" / "mn01.h5"
    assert main(logits_args([corpus["train"], corpus["eval"]], out)) == 0
    return out


def rows_by_id(path: Path) -> dict[str, np.ndarray]:
    ids, values, _ = read_store(path)
    return dict(zip(ids, values, strict=True))


def test_store_holds_every_clip_with_the_teachers_own_logits(corpus, reference, capsys):
    out = reference
    ids, values, attrs = read_store(out)
    assert ids == [f"tr-{i:03d}" for i in range(7)] + [f"ev-{i:03d}" for i in range(5)]
    assert values.shape == (12, 3)
    assert attrs["complete"] and attrs["random_init"] and attrs["teacher"] == "mn01_as"
    assert attrs["sample_rate"] == 32000 and attrs["num_classes"] == 3 and attrs["requested"] == 12
    assert attrs["precision"] == "fp32"
    assert json.loads(attrs["frontend"])["hop_length"] == 320
    assert len(attrs["label_csv_sha256"]) == 64
    # the same numbers as running the teacher on the clip by hand (read at 32 kHz, padded to 0.5 s)
    tagger = load_teacher("mn01_as", random_init=True, num_classes=3)
    folder = corpus["train"].parent
    wave = fit_length(read_audio(folder / "audio" / "tr-001.flac", sample_rate=32000)[0], 16000)
    with torch.no_grad():
        expected = tagger(torch.from_numpy(wave)[None])[0].numpy()
    np.testing.assert_allclose(values[1], expected, rtol=1e-4, atol=1e-5)
    assert np.std(values[:, 0]) > 1e-3  # clips differ: not one constant row
    metrics = json.loads(out.with_name("mn01.metrics.json").read_text())
    assert metrics["random_init"] and set(metrics["splits"]) == {"train", "eval"}
    assert metrics["all"]["clips"] == 12 and 0 <= metrics["all"]["mAP"] <= 1
    assert not out.with_name("mn01.h5.partial").exists()
    # a second run finds everything done and leaves the file alone
    before = (out.stat().st_ino, out.stat().st_mtime_ns)
    assert main(logits_args([corpus["train"], corpus["eval"]], out)) == 0
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == before
    assert "0 clips computed, 12 reused" in capsys.readouterr().out


def test_new_clips_are_added_to_an_existing_store(corpus, reference, tmp_path, capsys):
    out = tmp_path / "s.h5"
    main(logits_args([corpus["eval"]], out))
    _, eval_values, _ = read_store(out)
    capsys.readouterr()
    main(logits_args([corpus["train"], corpus["eval"]], out))
    assert "7 clips computed, 5 reused" in capsys.readouterr().out
    ids, values, attrs = read_store(out)
    assert ids[:5] == [f"ev-{i:03d}" for i in range(5)] and len(ids) == 12  # old rows keep their numbers
    np.testing.assert_array_equal(values[:5], eval_values)
    expected = rows_by_id(reference)
    np.testing.assert_allclose(values, np.stack([expected[i] for i in ids]), rtol=1e-5, atol=1e-6)


def test_computed_and_oracle_stores_carry_row_checksums_and_an_old_store_gains_them_on_rerun(
        corpus, reference, tmp_path, capsys, caplog):
    import h5py

    from pipeline.store import CHECKSUMS

    oracle = tmp_path / "oracle.h5"
    assert main(["logits", "--oracle-from-labels", "--datafile", str(corpus["eval"]), "--out", str(oracle)]) == 0
    for path in (reference, oracle):
        store = LogitsStore(path)
        assert store.has_checksums and store.attrs["checksum"].startswith("crc32") and store.damaged_rows().size == 0
    # a store from before checksums: the same command reassembles it from its own rows, nothing recomputed
    old = tmp_path / "old.h5"
    shutil.copy(reference, old)
    with h5py.File(old, "r+") as handle:
        del handle[CHECKSUMS]
    capsys.readouterr()
    caplog.set_level("WARNING")
    assert main(logits_args([corpus["train"], corpus["eval"]], old)) == 0
    assert "0 clips computed, 12 reused" in capsys.readouterr().out
    assert sum("no row checksums" in r.getMessage() for r in caplog.records) == 1
    assert LogitsStore(old).has_checksums
    assert read_store(old)[0] == read_store(reference)[0]
    np.testing.assert_array_equal(read_store(old)[1], read_store(reference)[1])


def test_float16_storage_and_bfloat16_autocast_on_cpu(corpus, reference, tmp_path):
    out = tmp_path / "half.h5"
    args = logits_args([corpus["eval"]], out, "--precision", "bf16")
    args[args.index("float32")] = "float16"
    assert main(args) == 0
    store = LogitsStore(out)
    assert store.dtype == np.float16 and store.attrs["dtype"] == "float16" and store.attrs["precision"] == "bf16"
    expected = rows_by_id(reference)
    ids, values, _ = read_store(out)
    np.testing.assert_allclose(values, np.stack([expected[i] for i in ids]), atol=0.05)


def run_cli(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_kill_9_then_rerun_equals_an_uninterrupted_run(corpus, tmp_path, capsys):
    def args_for(out: Path) -> list[str]:
        # one thread in both processes: the same kernels and summation order, so equal to the bit
        return logits_args([corpus["train"], corpus["eval"]], out, "--batch-size", "1", "--threads", "1",
                           teacher="mn04_as")

    process = run_cli(args_for(tmp_path / "killed.h5"), start_new_session=True)
    log = WorkLog(tmp_path / "killed.h5.partial" / "rank0.log")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not any(True for _ in log.records()):
        time.sleep(0.002)  # until the first of 12 one-clip batches is in
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed.h5").exists()  # nothing that could pass for a store
    finished = sum(len(r.ids) for r in log.records())
    assert 1 <= finished < 12
    assert main(args_for(tmp_path / "killed.h5")) == 0
    assert f"{12 - finished} clips computed, {finished} reused" in capsys.readouterr().out  # none redone
    assert main(args_for(tmp_path / "whole.h5")) == 0
    killed_ids, killed, _ = read_store(tmp_path / "killed.h5")
    whole_ids, whole, _ = read_store(tmp_path / "whole.h5")
    assert killed_ids == whole_ids
    np.testing.assert_array_equal(killed, whole)


def test_undecodable_clips_are_listed_and_the_store_marked_incomplete(tmp_path, capsys):
    corpus = make_corpus(tmp_path, {"mixed": 6})
    broken = tmp_path / "audio" / "mi-002.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk that no decoder reads")
    out = tmp_path / "s.h5"
    assert main(logits_args([corpus["mixed"]], out)) == 2
    error = capsys.readouterr().err
    assert "1 of 6 clips have no logits" in error and "mi-002" in error and "--skip-undecodable" in error
    report = out.with_name("s.failed.csv").read_text().splitlines()
    assert report[0] == "id,path,reason" and report[1].startswith("mi-002,") and len(report) == 2
    with pytest.raises(FatError, match="incomplete"):
        LogitsStore(out)
    store = LogitsStore(out, allow_incomplete=True)
    assert store.attrs["missing"] == 1 and "mi-002" not in store and len(store) == 5
    assert main(logits_args([corpus["mixed"]], out, "--skip-undecodable")) == 0
    store = LogitsStore(out)
    assert json.loads(store.attrs["excluded"]) == ["mi-002"]
    sf.write(broken, clip_audio(2, 0.5, np.random.default_rng(1)), RATE)  # the user repairs the clip
    capsys.readouterr()
    assert main(logits_args([corpus["mixed"]], out)) == 0
    assert "1 clips computed, 5 reused" in capsys.readouterr().out
    assert "mi-002" in LogitsStore(out) and not out.with_name("s.failed.csv").exists()


def test_a_clip_with_no_samples_is_listed_not_scored_as_silence(tmp_path, capsys):
    corpus = make_corpus(tmp_path, {"empty": 3})
    sf.write(tmp_path / "audio" / "em-000.wav", np.zeros(0, np.float32), RATE)  # 0 frames at the teacher's rate
    assert main(logits_args([corpus["empty"]], tmp_path / "s.h5")) == 2
    assert "em-000" in capsys.readouterr().err
    report = (tmp_path / "s.failed.csv").read_text()
    assert "em-000" in report and "no samples" in report


def test_ensemble_is_the_mean_of_its_members_with_their_provenance(corpus, tmp_path):
    out = tmp_path / "ensemble.h5"
    args = logits_args([corpus["eval"]], out, teacher="mn01_as")
    args[args.index("--teacher") + 1: args.index("--teacher") + 2] = ["mn01_as", "mn02_as"]
    assert main(args) == 0
    ids, values, attrs = read_store(out)
    folder = corpus["eval"].parent
    paths = {e["id"]: folder / e["wav"] for e in json.loads(corpus["eval"].read_text())["data"]}
    waves = torch.from_numpy(np.stack([fit_length(read_audio(paths[i], sample_rate=RATE)[0], 16000) for i in ids]))
    with torch.no_grad():  # member i is seeded with --seed + i
        singles = [load_teacher(name, random_init=True, num_classes=3, seed=seed)(waves).numpy()
                   for seed, name in enumerate(("mn01_as", "mn02_as"))]
    np.testing.assert_allclose(values, (singles[0] + singles[1]) / 2, rtol=1e-4, atol=1e-5)
    assert np.abs(singles[0] - singles[1]).max() > 1e-3  # the mean is not just one member
    members = json.loads(attrs["members"])
    assert [m["name"] for m in members] == ["mn01_as", "mn02_as"] and all(m["random_init"] for m in members)
    assert attrs["teacher"] == "ensemble(mn01_as,mn02_as)"
    assert LogitsStore(out).has_checksums and LogitsStore(out).damaged_rows().size == 0


def test_a_store_of_another_teacher_is_not_overwritten_silently(corpus, reference, tmp_path, capsys):
    out = tmp_path / "s.h5"
    shutil.copy(reference, out)
    before = out.read_bytes()
    assert main(logits_args([corpus["eval"]], out, teacher="mn02_as")) == 2
    assert "already holds logits of another teacher" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(logits_args([corpus["eval"]], out, "--overwrite", teacher="mn02_as")) == 0
    assert LogitsStore(out).attrs["teacher"] == "mn02_as"
    # the same teacher under autocast is other arithmetic: its rows are not mixed in silently
    before = out.read_bytes()
    assert main(logits_args([corpus["eval"]], out, "--precision", "bf16", teacher="mn02_as")) == 2
    assert "other settings" in capsys.readouterr().err and out.read_bytes() == before


def test_checkpoint_with_the_wrong_class_count_for_the_labels(corpus, tmp_path, capsys):
    checkpoint = tmp_path / "mn01.pt"
    torch.save(create_mn(0.1).state_dict(), checkpoint)  # 527 AudioSet classes; the labels have 3
    args = [a for a in logits_args([corpus["eval"]], tmp_path / "s.h5") if a != "--random-init"]
    assert main([*args, "--checkpoint", str(checkpoint)]) == 2
    assert "3 classes, but teacher mn01_as predicts 527" in capsys.readouterr().err


def test_offline_without_a_checkpoint_says_how_to_pass_one(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")
    args = [a for a in logits_args([corpus["eval"]], tmp_path / "s.h5") if a != "--random-init"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "mn01_as_mAP_298.pt" in error and "--checkpoint PATH" in error


def test_non_finite_logits_name_the_clip(tmp_path, capsys):
    corpus = make_corpus(tmp_path, {"plain": 2}, label_csv=False)  # no labels: the 527-class checkpoint fits
    state = create_mn(0.1).state_dict()
    state["classifier.5.bias"][7] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    args = [a for a in logits_args([corpus["plain"]], tmp_path / "s.h5") if a != "--random-init"]
    assert main([*args, "--checkpoint", str(tmp_path / "nan.pt")]) == 2
    assert "NaN or infinite logits for clip(s) pl-000" in capsys.readouterr().err


@pytest.mark.slow  # several processes started, signalled and restarted: 10-30 s here, up to ~100 s on 2 CI cores
def test_two_gloo_ranks_under_torchrun_write_the_same_store_as_one_process(corpus, reference, tmp_path):
    sharded = tmp_path / "sharded.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "pipeline.cli", *logits_args([corpus["train"], corpus["eval"]], sharded, "--workers", "0")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "12 clips requested" in done.stderr and "2 ranks" in done.stderr
    sharded_ids, sharded_values, attrs = read_store(sharded)
    single_ids, single_values, _ = read_store(reference)
    assert sharded_ids == single_ids and attrs["complete"]
    assert LogitsStore(sharded).has_checksums and LogitsStore(sharded).damaged_rows().size == 0
    np.testing.assert_allclose(sharded_values, single_values, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "sharded.h5.partial").exists()
