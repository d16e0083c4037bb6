"""Datafile, label-CSV and clip-list reading/writing: AST's own files load unchanged; problems name file and entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import FatError
from pipeline.datafile import (
    DatafileEntry, LabelSet, PackedStrings, load_clips, load_datafile, load_label_csv, wav_reference, write_datafile,
    write_label_csv,
)
from tests.train_fixtures import make_task

AST_LABEL_CSV = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/07rwj00,"Dog"\n'


@pytest.fixture()
def labels(tmp_path: Path) -> LabelSet:
    path = tmp_path / "class_labels_indices.csv"
    path.write_text(AST_LABEL_CSV)
    return load_label_csv(path)


def test_label_csv_reads_classes_names_and_hash(labels: LabelSet) -> None:
    assert labels.mids == ("/m/09x0r", "/m/05zppz", "/m/07rwj00")
    assert labels.names[1] == "Male speech, man speaking"
    assert len(labels) == 3 and labels.index_of("/m/07rwj00") == 2 and "/m/09x0r" in labels
    import hashlib
    assert labels.sha256 == hashlib.sha256(AST_LABEL_CSV.encode()).hexdigest()
    with pytest.raises(FatError, match="no class '/m/nope'"):
        labels.index_of("/m/nope")


def test_label_csv_written_is_read_back_identically(tmp_path: Path, labels: LabelSet) -> None:
    written = write_label_csv(tmp_path / "copy.csv", labels.mids, labels.names)
    assert (tmp_path / "copy.csv").read_text() == AST_LABEL_CSV  # AudioSet's own quoting
    assert written.mids == labels.mids and written.names == labels.names and written.sha256 == labels.sha256


def test_bad_label_csv_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n")
    with pytest.raises(FatError, match=r"bad\.csv:3"):
        load_label_csv(path)
    with pytest.raises(FatError, match="no such label CSV"):
        load_label_csv(tmp_path / "absent.csv")


def test_ast_datafile_with_absolute_paths_and_no_ids_loads_unchanged(tmp_path: Path, labels: LabelSet) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("a", "b"):
        (audio / f"{name}.flac").write_bytes(b"x")
    # The shape of AST's shipped sample (leading '#' comment line, extra keys, absolute paths).
    document = {"data": [
        {"video_id": "a", "wav": str(audio / "a.flac"), "labels": "/m/09x0r,/m/05zppz"},
        {"video_id": "b", "wav": str(audio / "b.flac"), "labels": "/m/07rwj00"},
    ]}
    lists = tmp_path / "lists"
    lists.mkdir()
    path = lists / "train.json"
    path.write_text("# AST sample datafile\n" + json.dumps(document, indent=1))
    data = load_datafile(path, labels)
    assert len(data) == 2
    assert list(data.paths) == [str(audio / "a.flac"), str(audio / "b.flac")]
    assert list(data.ids) == ["../audio/a", "../audio/b"]  # relative path without extension
    assert data.labels[0] == ("/m/09x0r", "/m/05zppz")
    np.testing.assert_array_equal(data.multi_hot(0, labels), [1, 1, 0])
    np.testing.assert_array_equal(data.classes_of(1), [2])
    data.check_files_exist()


def test_relative_paths_resolve_against_the_datafile_folder(tmp_path: Path, labels: LabelSet) -> None:
    folder = tmp_path / "data" / "datafiles"
    entries = [DatafileEntry("-0Qx2kCxA7s", wav_reference(tmp_path / "data/audio/eval/-0Qx2kCxA7s.wav", folder),
                             ("/m/09x0r",))]
    assert entries[0].wav == "../audio/eval/-0Qx2kCxA7s.wav"
    assert write_datafile(folder / "eval.json", entries) == 1
    document = json.loads((folder / "eval.json").read_text())
    assert document == {"data": [{"wav": "../audio/eval/-0Qx2kCxA7s.wav", "labels": "/m/09x0r", "id": "-0Qx2kCxA7s"}]}
    data = load_datafile(folder / "eval.json")
    assert data.ids[0] == "-0Qx2kCxA7s"
    assert data.paths[0] == str(tmp_path / "data/audio/eval/-0Qx2kCxA7s.wav")
    with pytest.raises(FatError, match=r"1 of 1 audio files are missing:\n  -0Qx2kCxA7s: "):
        data.check_files_exist()
    with pytest.raises(FatError, match="label CSV is needed"):
        data.multi_hot(0)
    np.testing.assert_array_equal(data.multi_hot(0, labels), [1, 0, 0])


def test_empty_datafile_is_valid_json(tmp_path: Path) -> None:
    assert write_datafile(tmp_path / "none.json", []) == 0
    assert json.loads((tmp_path / "none.json").read_text()) == {"data": []}
    assert len(load_datafile(tmp_path / "none.json")) == 0


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", r"bad\.json:1: not valid JSON"),
    ('{"rows": []}', "expected an AST datafile"),
    ('{"data": [{"labels": "/m/09x0r"}]}', 'entry 0 has no "wav" path'),
    ('{"data": [{"wav": "a.wav", "labels": "/m/09x0r", "id": "x"}, {"wav": "b.wav", "id": "y"}]}',
     r'entry 1 \(id y\) has no "labels" string'),
    ('{"data": [{"wav": "a.wav", "labels": "/m/09x0r", "id": "x"}, {"wav": "b.wav", "labels": "", "id": "x"}]}',
     "entry 1: id 'x' repeats entry 0"),
    ('{"data": [{"wav": "a.wav", "labels": "/m/09x0r"}, {"wav": "./a.wav", "labels": ""}]}',
     "entry 1: id 'a' repeats entry 0"),
    ('{"data": [{"wav": "a.wav", "labels": "/m/09x0r,/m/unknown", "id": "x"}]}',
     r"entry 0 \(id x\): label '/m/unknown' is not in"),
])
def test_bad_datafiles_name_file_and_entry(tmp_path: Path, labels: LabelSet, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(FatError, match=message):
        load_datafile(path, labels)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"data": []}')

    def failing():
        yield DatafileEntry("a", "a.wav", ())
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_datafile(path, failing())
    assert path.read_text() == '{"data": []}'  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]


# --------------------------------------------------------------------------- the clip list


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("clips"), n_train=10, n_valid=4, num_classes=4, seed=1)


@pytest.fixture(scope="module")
def label_set(task):
    return load_label_csv(task.labels)


@pytest.fixture(scope="module")
def clips(task, label_set):
    return load_clips([task.train], label_set, require_files=True)


def test_single_label_check_names_clips_with_several_labels(clips):
    with pytest.raises(FatError, match=r"exactly one label per clip; \d+ clips do not: train\d+ \(2 labels\)"):
        clips.check_single_label()


def test_packed_strings_round_trip():
    words = ["-abc_DEF123", "ünïcode/päth.wav", ""]
    packed = PackedStrings(words)
    assert len(packed) == 3 and list(packed) == words and packed[1] == words[1]
    assert isinstance(packed.blob, np.ndarray) and packed.offsets.dtype == np.int64


def test_several_datafiles_train_as_one_list_and_a_shared_id_is_named(task, clips, label_set, tmp_path):
    """AST's full AudioSet is balanced + unbalanced: two datafiles, each with paths relative to itself."""
    entries = json.loads(task.train.read_text())["data"]
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"data": [{**e, "wav": str(task.root / e["wav"])} for e in entries[:4]]}))
    nested = task.root / "more" / "second.json"  # relative paths resolve against its own folder
    nested.parent.mkdir(exist_ok=True)
    nested.write_text(json.dumps({"data": [{**e, "wav": "../" + e["wav"]} for e in entries[4:]]}))
    joined = load_clips([first, nested], label_set)
    assert len(joined) == len(clips) and list(joined.ids) == list(clips.ids)
    assert [str(p) for p in joined.paths] == [str(p) for p in clips.paths]
    for i in range(len(clips)):
        assert joined.classes_of(i).tolist() == clips.classes_of(i).tolist()
    np.testing.assert_array_equal(joined.targets(), np.stack([clips.multi_hot(i) for i in range(len(clips))]))
    assert str(first) in joined.source and str(nested) in joined.source
    with pytest.raises(FatError, match=f"clip {entries[0]['id']} is listed in both .*first.json and .*train.json"):
        load_clips([first, task.train], label_set)


# --------------------------------------------------------------------------- one home


def test_the_label_csv_has_one_reader_and_its_name_one_constant() -> None:
    """The label CSV is read by `pipeline.datafile.labels` only, and its file name is spelled there
    only (`LABEL_CSV_NAME`): a second reader or a second spelling is how its checks and its sha256
    provenance drifted apart before. A module that parses CSV rows and names the `display_name`
    column is a label-CSV reader."""
    import ast

    root = Path(__file__).resolve().parents[1]
    home = root / "pipeline" / "datafile" / "labels.py"
    spelled, readers = [], []
    for package in ("pipeline", "teacher", "student"):
        for path in sorted((root / package).rglob("*.py")):
            if path == home:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            constants = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
            parses_csv = any(isinstance(node, ast.Attribute) and node.attr in ("reader", "DictReader")
                             and isinstance(node.value, ast.Name) and node.value.id == "csv" for node in ast.walk(tree))
            if "class_labels_indices.csv" in constants:
                spelled.append(str(path.relative_to(root)))
            if parses_csv and "display_name" in constants:
                readers.append(str(path.relative_to(root)))
    assert not spelled, f"use pipeline.datafile.LABEL_CSV_NAME (or label_csv_beside) instead of the literal in {spelled}"
    assert not readers, f"read label CSVs with pipeline.datafile.load_label_csv, not in {readers}"
