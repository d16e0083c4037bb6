"""fat prepare esc50: a miniature ESC-50 release → per-fold datafiles, checked clips, protocol errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.core.errors import FatError
from pipeline.datafile import load_datafile, load_label_csv
from pipeline.esc50 import prepare_esc50
from tests.esc50_fixtures import CATEGORIES, build_release, write_meta


def run_prepare(root: Path, data: Path, *extra: str) -> int:
    return main(["prepare", "esc50", "--root", str(root), "--out-dir", str(data / "prepared"),
                 "--datafile-dir", str(data / "datafiles"), "--report-dir", str(data / "reports"),
                 "--workers", "1", *extra])


def test_release_gives_five_folds_their_training_sets_and_labels(tmp_path: Path) -> None:
    root = tmp_path / "ESC-50-master"
    rows = build_release(root)
    # one clip too quiet to pass the checks: it leaves its fold's datafile and every training set holding it
    import numpy as np
    import soundfile as sf

    sf.write(root / "audio" / rows[0]["filename"], np.zeros(22050, np.float32), 44100, subtype="PCM_16")
    data = tmp_path / "data"
    assert run_prepare(root, data) == 0

    labels = load_label_csv(data / "prepared" / "class_labels_indices.csv")
    assert labels.names == CATEGORIES and labels.mids == ("/m/esc00", "/m/esc01", "/m/esc02")
    assert (data / "datafiles" / "class_labels_indices.csv").read_bytes() == labels.path.read_bytes()
    listed = {k: load_datafile(data / "prepared" / f"esc50_fold{k}.json", labels) for k in range(1, 6)}
    assert all(len(listed[k]) == 6 for k in listed)
    assert listed[2].ids[0] == "2-100020-A-0" and listed[2].labels[0] == ("/m/esc00",)
    assert listed[2].paths[0] == str(root / "audio" / "2-100020-A-0.wav")

    checked = {k: load_datafile(data / "datafiles" / f"esc50_fold{k}.json", labels) for k in range(1, 6)}
    assert len(checked[1]) == 5 and rows[0]["filename"][:-4] not in checked[1].ids
    assert (data / "reports" / "esc50_fold1.rejected.csv").read_text().count("silent") == 1
    for held_out in range(1, 6):
        train = load_datafile(data / "datafiles" / f"esc50_except_fold{held_out}.json", labels)
        expected = [i for k in range(1, 6) if k != held_out for i in checked[k].ids]
        assert list(train.ids) == expected  # the other four folds' checked clips, in fold order
        assert not set(train.ids) & set(checked[held_out].ids)
        train.check_files_exist()
        listing = load_datafile(data / "prepared" / f"esc50_except_fold{held_out}.json", labels)
        assert len(listing) == 24


def test_fewer_classes_than_the_release_are_allowed_with_a_warning(tmp_path: Path, caplog) -> None:
    root = tmp_path / "esc"
    build_release(root, per_fold=1, categories=("a", "b"))
    folds = prepare_esc50(root, tmp_path / "out")
    assert sorted(folds) == [f"esc50_fold{k}" for k in range(1, 6)]
    assert "2 classes; the ESC-50 release has 50" in caplog.text


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[3].update(fold="6"), r"esc50\.csv:5: fold 6 of .* is outside 1\.\.5"),
    (lambda rows: rows[3].update(fold="x"), r"esc50\.csv:5: fold 'x' is not a whole number"),
    (lambda rows: rows[7].update(target="7"), r"esc50\.csv: targets must be 0\.\.7 without gaps; no clip has target 3"),
    (lambda rows: rows[4].update(category="cat"), r"esc50\.csv:6: target 1 is 'cat' here but 'rain' on line 3"),
    (lambda rows: rows.append(dict(rows[0])), r"esc50\.csv:17: 1-100010-A-0\.wav is listed again \(first on line 2\)"),
    (lambda rows: rows.append({**rows[0], "filename": "gone.wav"}),
     r"1 listed clips have no audio file:\n  .*esc50\.csv:17: .*audio/gone\.wav"),
])
def test_bad_meta_rows_are_named_by_file_and_line(tmp_path: Path, change, message: str) -> None:
    root = tmp_path / "esc"
    rows = build_release(root, per_fold=1)
    change(rows)
    write_meta(root, rows)
    with pytest.raises(FatError, match=message):
        prepare_esc50(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_fold_column_and_a_class_absent_from_training_are_refused(tmp_path: Path, capsys) -> None:
    root = tmp_path / "esc"
    rows = build_release(root, per_fold=1)
    write_meta(root, rows, header=("filename", "target", "category"))
    assert run_prepare(root, tmp_path / "data") == 2
    assert "esc50.csv:1: no fold column" in capsys.readouterr().err

    # 'siren' only in fold 3: with fold 3 held out, no training clip teaches it
    write_meta(root, [r for r in rows if r["category"] != "siren" or r["fold"] == "3"])
    with pytest.raises(FatError, match=r"with fold 3 held out, class /m/esc02 \(siren\) has no training clip in "
                                       r"folds 1, 2, 4, 5"):
        prepare_esc50(root, tmp_path / "out")

    write_meta(root, [r for r in rows if r["fold"] != "4"])
    with pytest.raises(FatError, match="fold 4 has no clips"):
        prepare_esc50(root, tmp_path / "out2")
