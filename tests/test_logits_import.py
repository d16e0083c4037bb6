"""`fat logits import`: EfficientAT's released prediction format (.npy + pickled name index) and the plain
form (.npy/.npz/.csv + id list) become a store `fat train` learns from; untrusted or wrong input is refused."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.errors import FatError
from pipeline.logits.foreign import clip_id_of_name
from pipeline.store import LogitsStore
from tests.train_fixtures import make_task

# AudioSet-like clip ids: 11 characters, some starting with "-" (read as options if unchecked), some with
# "Y" (the letter upstream's HDF5 names put in front of every id).
YTIDS = ["--4gqARaEJE", "Y2kPq_x0aZb", "-Yy9ZzYyZzY", "Yabcdefghij", "0123456789_", "a-b-c-d-e-f",
         "ZZZZZZZZZZZ", "YY_Y-Y_Y-YY"]
EXTRA_NAMES = ["Q0000000000", "Q0000000001", "Q0000000002"]  # rows of clips the datafile does not list


def upstream_key(clip_id: str) -> str:
    """A key of EfficientAT's fname_to_index: their HDF5 audio_name is "Y<id>.mp3", and their loader drops
    the ".mp3" and everything up to and including the first "Y"."""
    audio_name = f"Y{clip_id}.mp3"
    return audio_name.replace(".mp3", "").partition("Y")[2]


@pytest.fixture()
def task(tmp_path):
    """A tiny training set whose clips carry AudioSet-style ids (the WAVs of the generated task)."""
    task = make_task(tmp_path / "task", n_train=len(YTIDS), n_valid=4, num_classes=3, seed=3)
    data = json.loads(task.train.read_text())
    for entry, clip_id in zip(data["data"], YTIDS, strict=True):
        entry["id"] = clip_id
    task.train.write_text(json.dumps(data))
    task.train_ids = list(YTIDS)
    return task


def upstream_files(folder: Path, clip_ids: list[str], targets: np.ndarray, seed: int = 0) -> tuple[Path, Path, dict]:
    """EfficientAT's two files for `clip_ids` plus a few clips of theirs, rows in a shuffled order."""
    rng = np.random.default_rng(seed)
    names = [upstream_key(i) for i in clip_ids] + EXTRA_NAMES
    order = rng.permutation(len(names))
    logits = np.zeros((len(names), targets.shape[1]), np.float32)
    rows = {}
    for name, row in zip(names, order, strict=True):
        rows[name] = int(row)
    for k, clip_id in enumerate(clip_ids):  # a good teacher: confident on the labels, with some noise
        logits[rows[upstream_key(clip_id)]] = 4 * (2 * targets[k] - 1) + rng.normal(0, 0.5, targets.shape[1])
    for name in EXTRA_NAMES:
        logits[rows[name]] = rng.normal(0, 3, targets.shape[1])
    folder.mkdir(parents=True, exist_ok=True)
    npy, pkl = folder / "passt_enemble_logits_mAP_495.npy", folder / "fname_to_index.pkl"
    np.save(npy, logits)
    pkl.write_bytes(pickle.dumps(rows))
    return npy, pkl, {name: logits[row] for name, row in rows.items()}


def import_args(npy: Path, index: Path, task, out: Path, *extra: str) -> list[str]:
    return ["logits", "import", "--logits", str(npy), "--index", str(index), "--datafile", str(task.train),
            "--teacher", "passt_ensemble_test", "--out", str(out), *extra]


def test_upstream_names_map_to_clip_ids():
    clip_ids = frozenset(YTIDS)
    for clip_id in YTIDS:
        assert clip_id_of_name(upstream_key(clip_id), clip_ids) == clip_id  # what their loader makes
        assert clip_id_of_name(f"Y{clip_id}", clip_ids) == clip_id  # the HDF5 name, undecoded
        assert clip_id_of_name(f"Y{clip_id}.mp3", clip_ids) == clip_id
    assert clip_id_of_name("Yabcdefghij", clip_ids) == "Yabcdefghij"  # an id that starts with Y is itself
    assert clip_id_of_name("abcdefghij", clip_ids) is None  # 10 characters: no AudioSet id
    assert clip_id_of_name("dog/bark_01", frozenset({"dog/bark_01"})) == "dog/bark_01"  # other datasets: exact


def test_efficientat_files_become_a_store_that_fat_train_learns_from(task, tmp_path, capsys):
    from pipeline.checkpoint import load_student
    from pipeline.training.loop import MODEL_NAME

    npy, pkl, rows = upstream_files(tmp_path / "upstream", task.train_ids, task.train_targets)
    out = tmp_path / "logits" / "passt.h5"
    assert main(import_args(npy, pkl, task, out, "--published-map", "0.495", "--store-dtype", "float32")) == 0
    printed = capsys.readouterr().out
    assert f"{out}: complete; {len(YTIDS)} of {len(YTIDS)} clips imported" in printed and "teacher mAP" in printed
    store = LogitsStore(out)
    assert list(store.ids) == task.train_ids and store.has_checksums and store.damaged_rows().size == 0
    values, present = store.fetch(task.train_ids)
    assert present.all()
    np.testing.assert_array_equal(values, np.stack([rows[upstream_key(i)] for i in task.train_ids]))
    attrs = store.provenance()
    assert attrs["imported"] is True and attrs["teacher"] == "passt_ensemble_test" and attrs["values"] == "logits"
    assert attrs["published_map"] == pytest.approx(0.495) and attrs["source_rows"] == len(YTIDS) + 3
    assert [(s["file"], s["sha256"]) for s in attrs["sources"]] == [
        (npy.name, hashlib.sha256(npy.read_bytes()).hexdigest()), (pkl.name, hashlib.sha256(pkl.read_bytes()).hexdigest())]
    assert attrs["label_csv_sha256"] == hashlib.sha256(task.labels.read_bytes()).hexdigest()
    metrics = json.loads(out.with_name("passt.metrics.json").read_text())
    assert metrics["published_mAP"] == pytest.approx(0.495) and metrics["all"]["mAP"] > 0.9
    assert not out.with_name("passt.unmatched.txt").exists()

    run = tmp_path / "run"
    assert main(["train", "--train", str(task.train), "--valid", str(task.valid), "--teacher", str(out),
                 "--out", str(run), "--model-size", "tiny224", "--fstride", "16", "--tstride", "16",
                 "--target-frames", "32", "--num-workers", "0", "--no-progress", "--threads", "1",
                 "--kd-lambda", "0.5", "--epochs", "1", "--batch-size", "4", "--no-wa"]) == 0
    with open(run / "epochs.csv", newline="", encoding="utf-8") as handle:
        epoch = next(csv.DictReader(handle))
    assert float(epoch["train/teacher_coverage"]) == 1.0 and float(epoch["train/kd"]) > 0
    _, config = load_student(run / MODEL_NAME)
    assert config["teacher_store"]["teacher"] == "passt_ensemble_test"


def test_a_malicious_pickle_is_refused_without_running_it(task, tmp_path, capsys):
    marker = tmp_path / "ran.txt"

    class Payload:  # unpickling this calls open(marker, "w"): the file appears if anything ran
        def __reduce__(self):
            return open, (str(marker), "w")

    npy, _, _ = upstream_files(tmp_path / "upstream", task.train_ids, task.train_targets)
    out = tmp_path / "s.h5"
    evil = tmp_path / "fname_to_index.pkl"
    for payload in (Payload(), {upstream_key(YTIDS[0]): 0, upstream_key(YTIDS[1]): Payload()}):
        evil.write_bytes(pickle.dumps(payload))
        assert main(import_args(npy, evil, task, out)) == 2
        error = capsys.readouterr().err
        assert f"{evil}: refused, it asks for io.open" in error and "nothing in the file is run" in error
        assert error.count("\n") == 1
        assert not marker.exists() and not out.exists()
    pickle.loads(evil.read_bytes()).popitem()[1].close()  # the same bytes through pickle itself: it runs
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_row_numbers_pickled_as_numpy_integers_are_read(task, tmp_path, capsys, protocol):
    """An index written from numpy (dict(zip(names, np.arange(n)))) pickles each row as numpy.int64:
    it reads, through stand-ins that build integers only."""
    npy, pkl, rows = upstream_files(tmp_path / "upstream", task.train_ids, task.train_targets)
    index = tmp_path / "numpy_index.pkl"
    index.write_bytes(pickle.dumps({k: np.int64(v) for k, v in pickle.loads(pkl.read_bytes()).items()},
                                   protocol=protocol))
    out = tmp_path / "s.h5"
    assert main(import_args(npy, index, task, out, "--store-dtype", "float32")) == 0
    values, present = LogitsStore(out).fetch(task.train_ids)
    assert present.all()
    np.testing.assert_array_equal(values, np.stack([rows[upstream_key(i)] for i in task.train_ids]))


def test_numpy_globals_other_than_integers_are_refused(task, tmp_path, capsys):
    npy, _, _ = upstream_files(tmp_path / "upstream", task.train_ids, task.train_targets)
    index = tmp_path / "index.pkl"
    for value, refused in ((np.float64(1.0), "not an integer type"), (np.array([1, 2]), "numpy._core.multiarray._reconstruct")):
        index.write_bytes(pickle.dumps({upstream_key(YTIDS[0]): value}))
        assert main(import_args(npy, index, task, tmp_path / "s.h5")) == 2
        error = capsys.readouterr().err
        assert f"{index}: refused" in error and refused in error and error.count("\n") == 1


@pytest.mark.parametrize(("payload", "message"), [
    ([1, 2], "holds a list, expected a dict of clip name → row number"),
    ({b"--4gqARaEJE": 0}, "key b'--4gqARaEJE' is a bytes, expected a clip name (str)"),
    ({"--4gqARaEJE": 0.0}, "'--4gqARaEJE' → 0.0, a float, expected a row number (int)"),
    ({"--4gqARaEJE": True}, "'--4gqARaEJE' → True, a bool, expected a row number (int)"),
    ({"--4gqARaEJE": 11}, "'--4gqARaEJE' → row 11, outside the predictions' rows 0..10"),
    ({"--4gqARaEJE": 0, "Y--4gqARaEJE": 1}, "names '--4gqARaEJE' and 'Y--4gqARaEJE' both stand for clip --4gqARaEJE"),
])
def test_a_name_index_that_is_not_a_dict_of_names_to_rows_is_a_clear_error(task, tmp_path, capsys, payload, message):
    npy, _, _ = upstream_files(tmp_path / "upstream", task.train_ids, task.train_targets)
    index = tmp_path / "index.pkl"
    index.write_bytes(pickle.dumps(payload))
    assert main(import_args(npy, index, task, tmp_path / "s.h5")) == 2
    error = capsys.readouterr().err
    assert str(index) in error and message in error and error.count("\n") == 1


def test_garbage_and_truncated_pickles_are_not_readable(task, tmp_path, capsys):
    npy, pkl, _ = upstream_files(tmp_path / "upstream", task.train_ids, task.train_targets)
    for name, data in (("garbage.pkl", b"this is not a pickle"), ("cut.pkl", pkl.read_bytes()[:-20])):
        (tmp_path / name).write_bytes(data)
        assert main(import_args(npy, tmp_path / name, task, tmp_path / "s.h5")) == 2
        error = capsys.readouterr().err
        assert f"{tmp_path / name}: not a readable pickle" in error and error.count("\n") == 1


def test_wrong_shape_and_class_count_are_refused(task, tmp_path, capsys):
    _, pkl, _ = upstream_files(tmp_path / "upstream", task.train_ids, task.train_targets)
    for name, array, message in (("flat.npy", np.zeros(11, np.float32), "predictions of shape (11,), expected (clips, classes)"),
                                 ("wide.npy", np.zeros((11, 527), np.float32), "527 columns, but"),
                                 ("words.npy", np.array([["a"] * 3] * 11), "expected numbers")):
        np.save(tmp_path / name, array)
        assert main(import_args(tmp_path / name, pkl, task, tmp_path / "s.h5")) == 2
        error = capsys.readouterr().err
        assert str(tmp_path / name) in error and message in error
    assert main(import_args(tmp_path / "short.npy", pkl, task, tmp_path / "s.h5")) == 2
    assert "no such predictions file" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", np.zeros((5, 3), np.float32))  # fewer rows than the index names
    assert main(import_args(tmp_path / "short.npy", pkl, task, tmp_path / "s.h5")) == 2
    assert "outside the predictions' rows 0..4" in capsys.readouterr().err
    assert not (tmp_path / "s.h5").exists()


def test_non_finite_rows_are_named_and_nothing_is_written(task, tmp_path, capsys):
    npy, pkl, _ = upstream_files(tmp_path / "upstream", task.train_ids, task.train_targets)
    logits = np.load(npy)
    row = pickle.loads(pkl.read_bytes())[upstream_key(YTIDS[5])]
    logits[row, 1] = np.nan
    np.save(npy, logits)
    assert main(import_args(npy, pkl, task, tmp_path / "s.h5")) == 2
    error = capsys.readouterr().err
    assert f"{npy}: row {row} (clip {YTIDS[5]}) holds NaN or infinite values" in error
    assert not (tmp_path / "s.h5").exists() and list(tmp_path.glob("*.fat-tmp-*")) == []


def test_partial_coverage_lists_the_missing_clips_and_too_little_is_refused(task, tmp_path, capsys):
    kept = YTIDS[:6]  # upstream lacks two of the datafile's clips
    npy, pkl, _ = upstream_files(tmp_path / "upstream", kept, task.train_targets[:6])
    out = tmp_path / "partial.h5"
    assert main(import_args(npy, pkl, task, out)) == 0
    assert "INCOMPLETE (2 listed in" in capsys.readouterr().out
    assert out.with_name("partial.unmatched.txt").read_text().split() == YTIDS[6:]
    with pytest.raises(Exception, match="imported predictions lack them"):
        LogitsStore(out)
    store = LogitsStore(out, allow_incomplete=True)
    assert list(store.ids) == kept and store.attrs["missing"] == 2 and store.attrs["requested"] == 8
    # 6 of 8 = 75 %: under a threshold of 80 % it is refused, naming ours and theirs
    refused = tmp_path / "refused.h5"
    assert main(import_args(npy, pkl, task, refused, "--min-coverage", "0.8")) == 2
    error = capsys.readouterr().err
    assert "only 6 (75.0 %) of the 8 clips" in error and "--min-coverage 0.8" in error and "'ZZZZZZZZZZZ'" in error
    assert not refused.exists() and not refused.with_name("refused.unmatched.txt").exists()
    # none matching (another dataset's names) is refused whatever the threshold
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({f"clip{i}": i for i in range(9)}))
    assert main(import_args(npy, other, task, refused, "--min-coverage", "0")) == 2
    assert "none of the 8 clips" in capsys.readouterr().err


def test_probabilities_must_be_declared_and_are_stored_as_logits(task, tmp_path, capsys):
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(0, 1, (len(YTIDS), 3)).astype(np.float32)
    probabilities[0, 0], probabilities[0, 1] = 0.0, 1.0  # the clipped ends
    npy = tmp_path / "probs.npy"
    np.save(npy, probabilities)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(YTIDS) + "\n")
    args = ["logits", "import", "--logits", str(npy), "--ids", str(ids), "--datafile", str(task.train),
            "--teacher", "someone", "--store-dtype", "float32"]
    out = tmp_path / "p.h5"
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "lies in [0, 1]" in error and "--values probabilities" in error and not out.exists()
    assert main([*args, "--out", str(out), "--values", "probabilities"]) == 0
    store = LogitsStore(out)
    values, _ = store.fetch(YTIDS)
    clipped = np.clip(probabilities.astype(np.float64), 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(values, np.log(clipped / (1 - clipped)), rtol=1e-5, atol=1e-5)
    assert store.attrs["values"] == "probabilities" and "logit(p)" in store.attrs["converted"]
    assert values[0, 0] == pytest.approx(-13.8155, abs=1e-3) and values[0, 1] == pytest.approx(13.8155, abs=1e-3)
    # declared probabilities that are not: refused with the row
    np.save(npy, probabilities * 3 - 1)
    assert main([*args, "--out", str(tmp_path / "q.h5"), "--values", "probabilities"]) == 2
    assert "not a probability" in capsys.readouterr().err


def test_the_plain_form_reads_npz_and_csv_with_an_id_list(task, tmp_path, capsys):
    logits = np.random.default_rng(2).normal(0, 3, (len(YTIDS), 3)).astype(np.float32)
    order = list(reversed(YTIDS))
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(order) + "\n")
    np.savez(tmp_path / "preds.npz", logits=logits, other=np.zeros(2))
    with open(tmp_path / "preds.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(logits.tolist())
    for source in ("preds.npz", "preds.csv"):
        out = tmp_path / f"{source}.h5"
        assert main(["logits", "import", "--logits", str(tmp_path / source), "--ids", str(ids), "--datafile",
                     str(task.train), "--teacher", "mine", "--out", str(out), "--store-dtype", "float32"]) == 0
        values, present = LogitsStore(out).fetch(order)
        assert present.all()
        np.testing.assert_allclose(values, logits, rtol=1e-6)
    capsys.readouterr()


@pytest.mark.parametrize(("ids_text", "message"), [
    ("\n".join(YTIDS[:7] + [YTIDS[0]]) + "\n", f"id '{YTIDS[0]}' on line 8 already named row 0 on line 1"),
    ("\n".join(YTIDS[:7]) + "\n", "7 ids for 8 rows of predictions"),
    ("\n".join(YTIDS[:3] + ["", *YTIDS[4:]]) + "\n", "line 4 is empty"),
])
def test_a_bad_id_list_is_named(task, tmp_path, capsys, ids_text, message):
    np.save(tmp_path / "p.npy", np.zeros((8, 3), np.float32) - 1)
    (tmp_path / "ids.txt").write_text(ids_text)
    assert main(["logits", "import", "--logits", str(tmp_path / "p.npy"), "--ids", str(tmp_path / "ids.txt"),
                 "--datafile", str(task.train), "--teacher", "t", "--out", str(tmp_path / "s.h5")]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'ids.txt'}: {message}" in error


def test_a_csv_with_a_header_and_usage_errors(task, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("tone,noise,click\n1,2,3\n")
    (tmp_path / "ids.txt").write_text("a\n")
    base = ["logits", "import", "--logits", str(tmp_path / "p.csv"), "--datafile", str(task.train),
            "--out", str(tmp_path / "s.h5")]
    assert main([*base, "--ids", str(tmp_path / "ids.txt"), "--teacher", "t"]) == 2
    assert "line 1: 'tone' is not a number (the CSV holds numbers only" in capsys.readouterr().err
    assert main([*base, "--teacher", "t"]) == 2
    assert "--index PKL" in capsys.readouterr().err
    assert main([*base, "--ids", str(tmp_path / "ids.txt"), "--teacher", "../evil"]) == 2
    assert "--teacher '../evil'" in capsys.readouterr().err
    existing = tmp_path / "s.h5"
    existing.write_bytes(b"user data")
    assert main([*base, "--ids", str(tmp_path / "ids.txt"), "--teacher", "t"]) == 2
    assert "exists; choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"user data"
