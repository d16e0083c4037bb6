"""fat prepare: a Speech Commands v0.02 tree and a one-folder-per-class tree built in a temp folder."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.cli import main
from pipeline.core.errors import FatError
from pipeline.datafile import load_datafile, load_label_csv
from pipeline.prepare import prepare_folder, prepare_speechcommands, stable_split

WORDS = ("backward bed bird cat dog down eight five follow forward four go happy house learn left marvin nine no "
         "off on one right seven sheila six stop three tree two up visual wow yes zero").split()


def speech(seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    burst = np.exp(-((t - seconds / 2) ** 2) / 0.02) * np.sin(2 * np.pi * (200 + 100 * seed % 7) * t)
    return (0.3 * burst + 0.003 * rng.standard_normal(n)).astype(np.float32)


def build_speech_commands(root: Path) -> None:
    """35 word folders with two clips each (some shorter than 1 s, as in the real set), noise, lists."""
    for w, word in enumerate(WORDS):
        (root / word).mkdir(parents=True)
        for k in range(2):
            sf.write(root / word / f"{w:04x}abcd_nohash_{k}.wav", speech(0.8 if k else 1.0, seed=w + k), 16000,
                     subtype="PCM_16")
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "white_noise.wav", speech(3.0), 16000, subtype="PCM_16")
    (root / "LICENSE").write_text("CC BY 4.0\n")
    (root / "validation_list.txt").write_text("bed/0001abcd_nohash_0.wav\nyes/0021abcd_nohash_1.wav\n")
    (root / "testing_list.txt").write_text("zero/0022abcd_nohash_0.wav\ncat/0003abcd_nohash_1.wav\n\n")
    # broken clips in train: silent, too long, wrong rate
    sf.write(root / "dog" / "dead0000_nohash_0.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    sf.write(root / "go" / "dead0001_nohash_0.wav", speech(1.5), 16000, subtype="PCM_16")
    sf.write(root / "up" / "dead0002_nohash_0.wav", speech(1.0, rate=44100), 44100, subtype="PCM_16")


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_speech_commands_tree_gives_ast_splits_labels_and_checked_datafiles(tmp_path: Path) -> None:
    root = tmp_path / "speech_commands_v0.02"
    build_speech_commands(root)
    before = hashes(root)
    data = tmp_path / "data"
    code = main(["prepare", "speechcommands", "--root", str(root), "--out-dir", str(data / "prepared"),
                 "--datafile-dir", str(data / "datafiles"), "--report-dir", str(data / "reports"), "--workers", "1"])
    assert code == 0
    assert hashes(root) == before

    labels = load_label_csv(data / "prepared" / "class_labels_indices.csv")
    assert len(labels) == 35 and labels.names == tuple(sorted(WORDS))
    assert labels.mids[0] == "/m/spcmd00" and labels.mids[34] == "/m/spcmd34"
    assert (data / "prepared" / "class_labels_indices.csv").read_text().splitlines()[1] == '0,/m/spcmd00,"backward"'

    listings = {split: load_datafile(data / "prepared" / f"speechcommands_{split}.json", labels)
                for split in ("train", "valid", "test")}
    assert list(listings["valid"].ids) == ["bed/0001abcd_nohash_0", "yes/0021abcd_nohash_1"]
    assert list(listings["test"].ids) == ["zero/0022abcd_nohash_0", "cat/0003abcd_nohash_1"]
    assert len(listings["train"]) == 35 * 2 + 3 - 4
    all_ids = [i for d in listings.values() for i in d.ids]
    assert len(set(all_ids)) == len(all_ids) and not any("_background_noise_" in i for i in all_ids)
    assert listings["test"].labels[0] == (labels.mids[WORDS.index("zero")],)
    assert listings["train"].paths[0] == str(root / "backward" / "0000abcd_nohash_0.wav")
    for listing in listings.values():
        listing.check_files_exist()

    # the checks of fat validate at 16 kHz / ≤ 1 s: short real clips pass, the broken ones do not
    checked = load_datafile(data / "datafiles" / "speechcommands_train.json", labels)
    assert len(checked) == len(listings["train"]) - 3
    with open(data / "reports" / "speechcommands_train.rejected.csv", newline="") as handle:
        rejected = {row["id"]: row["reason"] for row in csv.DictReader(handle)}
    assert rejected == {"dog/dead0000_nohash_0": "silent", "go/dead0001_nohash_0": "too-long",
                        "up/dead0002_nohash_0": "sample-rate"}
    summary = json.loads((data / "reports" / "speechcommands_valid.validate.json").read_text())
    assert summary["passed"] == 2 and summary["rejected"] == 0
    assert (data / "datafiles" / "class_labels_indices.csv").read_bytes() == \
        (data / "prepared" / "class_labels_indices.csv").read_bytes()


def test_speech_commands_lists_must_match_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "sc"
    build_speech_commands(root)
    (root / "testing_list.txt").write_text("cat/0003abcd_nohash_1.wav\nnope/xyz.wav\n../escape.wav\n")
    with pytest.raises(FatError, match=r"testing_list\.txt: 2 listed clips .*\n.*testing_list\.txt:2: nope/xyz\.wav"):
        prepare_speechcommands(root, tmp_path / "out")
    (root / "testing_list.txt").write_text("bed/0001abcd_nohash_0.wav\n")
    with pytest.raises(FatError, match="is also in validation_list.txt"):
        prepare_speechcommands(root, tmp_path / "out")
    (root / "validation_list.txt").unlink()
    with pytest.raises(FatError, match="not a Speech Commands folder"):
        prepare_speechcommands(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folder_tree_classes_stable_splits_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "birds"
    for c, name in enumerate(("crow", "owl", "wren")):
        (root / name / "night").mkdir(parents=True)
        for k in range(12):
            folder = root / name / ("night" if k % 3 == 0 else "")
            sf.write(folder / f"{name}{k:02d}.flac", speech(0.5, seed=c * 20 + k), 16000, subtype="PCM_16")
    (root / "owl" / "notes.txt").write_text("not audio")
    (root / "empty").mkdir()
    prepared = prepare_folder(root, tmp_path / "out", valid_fraction=0.2, test_fraction=0.2, seed=3)
    labels = load_label_csv(prepared.labels)
    assert labels.names == ("crow", "owl", "wren") and labels.mids == ("/m/class00", "/m/class01", "/m/class02")
    assert sum(prepared.counts.values()) == 36 and min(prepared.counts.values()) > 0
    datafiles = {split: load_datafile(path, labels) for split, path in prepared.datafiles.items()}
    assert prepared.datafiles["train"].name == "birds_train.json"
    ids = {split: set(d.ids) for split, d in datafiles.items()}
    assert "owl/night/owl00" in set().union(*ids.values())
    for split, data in datafiles.items():
        for clip_id in data.ids:
            assert stable_split(clip_id + ".flac", 0.2, 0.2, 3) == split
    # a new file changes no earlier clip's split
    sf.write(root / "crow" / "crow99.flac", speech(0.5), 16000, subtype="PCM_16")
    again = prepare_folder(root, tmp_path / "out2", valid_fraction=0.2, test_fraction=0.2, seed=3)
    for split, path in again.datafiles.items():
        assert ids[split] <= set(load_datafile(path).ids)
    # checked like any other datafile: any sample rate, ≤ 10 s
    assert main(["prepare", "folder", "--root", str(root), "--out-dir", str(tmp_path / "p"), "--name", "b",
                 "--datafile-dir", str(tmp_path / "d"), "--report-dir", str(tmp_path / "r"), "--workers", "1"]) == 0
    assert len(load_datafile(tmp_path / "d" / "b_train.json")) == len(load_datafile(tmp_path / "p" / "b_train.json"))
    with pytest.raises(FatError, match="sum < 1"):
        prepare_folder(root, tmp_path / "x", valid_fraction=0.5, test_fraction=0.5)


def small_tree(root: Path, per_class: int = 3) -> list[str]:
    """Two classes of `per_class` short clips; returns the clips' paths under root."""
    paths = []
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            sf.write(root / name / f"{name}{k}.wav", speech(0.5, seed=c * 10 + k), 16000, subtype="PCM_16")
            paths.append(f"{name}/{name}{k}.wav")
    return paths


def test_a_folder_split_asked_for_that_gets_no_clips_is_an_error_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Six clips and --valid-fraction 0.1: the hash split can leave valid empty, which used to pass silently."""
    root = tmp_path / "pets"
    paths = small_tree(root)
    seed = next(s for s in range(100) if all(stable_split(p, 0.1, 0.1, s) == "train" for p in paths))
    out = tmp_path / "prepared"
    argv = ["prepare", "folder", "--root", str(root), "--out-dir", str(out), "--seed", str(seed),
            "--datafile-dir", str(tmp_path / "d"), "--report-dir", str(tmp_path / "r"), "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fat prepare: error: {root}: the valid split gets no clips "
                                                    "(--valid-fraction 0.1 of 6 clips"), err
    assert "--allow-empty" in err and not out.exists() and not (tmp_path / "d").exists()

    # asked for on purpose: written empty, with a warning naming each empty split
    with caplog.at_level("WARNING"):
        assert main([*argv, "--allow-empty"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "gets no clips" in r.getMessage()]
    assert len(warned) == 2 and "the valid split" in warned[0] and "the test split" in warned[1]
    assert len(load_datafile(out / "pets_valid.json")) == 0 and len(load_datafile(out / "pets_train.json")) == 6

    # a fraction of 0 asks for no such split: neither an error nor a warning
    caplog.clear()
    with caplog.at_level("WARNING"):
        prepared = prepare_folder(root, tmp_path / "none", valid_fraction=0, test_fraction=0, seed=seed)
    assert prepared.counts == {"train": 6, "valid": 0, "test": 0}
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    # every clip hashed away from train: train is named
    seed = next(s for s in range(1000) if all(stable_split(p, 0.5, 0.4, s) != "train" for p in paths))
    with pytest.raises(FatError, match=r"the train split gets no clips \(what --valid-fraction 0.5 and "
                                       r"--test-fraction 0.4 leave of 6 clips"):
        prepare_folder(root, tmp_path / "x", valid_fraction=0.5, test_fraction=0.4, seed=seed)
    assert not (tmp_path / "x").exists()


def test_an_empty_speech_commands_list_is_an_error_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "sc"
    build_speech_commands(root)
    (root / "testing_list.txt").write_text("\n")
    with pytest.raises(FatError, match=r"the test split gets no clips \(.*testing_list.txt lists none of them\)"):
        prepare_speechcommands(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    prepared = prepare_speechcommands(root, tmp_path / "out", allow_empty=True)
    assert prepared.counts["test"] == 0 and prepared.counts["valid"] == 2

