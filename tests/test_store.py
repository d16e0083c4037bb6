"""The teacher logits store: HDF5 round trip, id lookup, incomplete stores, workers, the work log, row
checksums (a damaged row stops its reader and `fat train`; `fat logits verify`)."""

from __future__ import annotations

import multiprocessing
import pickle

import h5py
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.core.errors import FatError
from pipeline.core.id_index import IdIndex
from pipeline.logits.worklog import LogRecord, WorkLog
from pipeline.store import CHECKSUMS, LogitsStore, write_store
from pipeline.training.loop import LEGACY_MODEL_NAME, MODEL_NAME
from tests.train_fixtures import make_task, oracle_logits
from tests.train_fixtures import write_store as write_task_store

ATTRS = {"teacher": "mn04_as", "checkpoint_sha256": "ab" * 32, "random_init": False, "sample_rate": 32000,
         "frontend": "{}", "label_csv_sha256": "cd" * 32, "fat_version": "test", "created": "now"}


def make_store(path, ids, logits, complete=True, dtype="float32", block=3):
    blocks = ((s, logits[s:s + block]) for s in range(0, len(ids), block))
    return write_store(path, ids, blocks, logits.shape[1], ATTRS, complete=complete, dtype=dtype)


@pytest.fixture()
def sample(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["-0Qx2kCxA7s", "abcdefghijk", "train/dog_01", "ünïcode-id", "x"] + [f"clip{i:04d}" for i in range(20)]
    logits = rng.normal(0, 3, (len(ids), 7)).astype(np.float32)
    return tmp_path / "teacher.h5", ids, logits


def test_round_trip_preserves_ids_rows_and_attributes(sample):
    path, ids, logits = sample
    make_store(path, ids, logits)
    store = LogitsStore(path)
    assert store.complete and store.num_classes == 7 and len(store) == len(ids)
    assert list(store.ids) == ids
    assert store.attrs["teacher"] == "mn04_as" and store.attrs["random_init"] is False
    assert store.attrs["num_classes"] == 7
    for row, clip in enumerate(ids):
        assert store.row_of(clip) == row
    assert store.row_of("not-there") is None and store.row_of("clip00000") is None
    query = ["clip0007", "missing", "-0Qx2kCxA7s", "clip0007", "ünïcode-id"]
    values, present = store.fetch(query)
    assert values.dtype == np.float32 and values.shape == (5, 7)
    assert present.tolist() == [True, False, True, True, True]
    np.testing.assert_array_equal(values[0], logits[ids.index("clip0007")])
    np.testing.assert_array_equal(values[1], 0)
    np.testing.assert_array_equal(values[2], logits[0])
    np.testing.assert_array_equal(values[4], logits[3])


def test_float16_store_reads_back_as_float32_within_half_precision(sample):
    path, ids, logits = sample
    make_store(path, ids, logits, dtype="float16")
    store = LogitsStore(path)
    assert store.dtype == np.float16
    values, _ = store.fetch(ids)
    np.testing.assert_allclose(values, logits, rtol=1e-3, atol=1e-2)


def test_incomplete_store_is_refused_unless_allowed(sample):
    path, ids, logits = sample
    make_store(path, ids, logits, complete=False)
    with pytest.raises(FatError, match="incomplete"):
        LogitsStore(path)
    assert not LogitsStore(path, allow_incomplete=True).complete


def test_a_store_without_the_complete_flag_counts_as_incomplete(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as handle:
        handle["ids"] = np.array(["a"], dtype=object).astype(h5py.string_dtype())
        handle["logits"] = np.zeros((1, 3), np.float32)
    with pytest.raises(FatError, match="incomplete"):
        LogitsStore(path)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FatError, match="no such teacher logits store"):
        LogitsStore(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(FatError, match="not a readable HDF5"):
        LogitsStore(junk)
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as handle:
        handle["ids"] = np.array(["a", "a"], dtype=object).astype(h5py.string_dtype())
        handle["logits"] = np.zeros((2, 3), np.float32)
        handle.attrs["complete"] = True
    with pytest.raises(FatError, match="'a' occurs more than once"):
        LogitsStore(wrong)


def test_write_store_refuses_gaps_and_leaves_no_file(tmp_path):
    path = tmp_path / "gap.h5"
    with pytest.raises(ValueError, match="never written"):
        write_store(path, ["a", "b"], [(0, np.zeros((1, 3)))], 3, ATTRS, complete=True)
    assert list(tmp_path.iterdir()) == []


def test_index_is_exact_for_many_ids_and_colliding_prefixes():
    ids = [f"{i:011d}" for i in range(5000)] + ["a", "ab", "abc"]
    index = IdIndex(ids)
    rows = index.rows_of(ids + ["abcd", "", "00000000000x"])
    assert rows[:len(ids)].tolist() == list(range(len(ids)))
    assert rows[len(ids):].tolist() == [-1, -1, -1]


class StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store, ids):
        self.store, self.ids = store, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        values, present = self.store.fetch([self.ids[i]])
        return torch.from_numpy(values[0]), bool(present[0])


def test_store_is_usable_from_forked_dataloader_workers(sample):
    path, ids, logits = sample
    make_store(path, ids, logits)
    store = LogitsStore(path)
    store.fetch(ids[:2])  # the parent has an open handle; workers must open their own
    loader = torch.utils.data.DataLoader(StoreDataset(store, ids), batch_size=4, num_workers=2,
                                         multiprocessing_context=multiprocessing.get_context("fork"))
    got = torch.cat([values for values, _ in loader]).numpy()
    np.testing.assert_array_equal(got, logits)


def test_store_pickles_without_its_handle_for_spawned_workers(sample):
    path, ids, logits = sample
    make_store(path, ids, logits)
    store = LogitsStore(path)
    store.fetch(ids[:1])
    blob = pickle.dumps(store)
    assert len(blob) < 20_000  # the index travels as arrays, the HDF5 handle not at all
    clone = pickle.loads(blob)
    values, present = clone.fetch(ids[::-1])
    assert present.all()
    np.testing.assert_array_equal(values, logits[::-1])


def test_work_log_drops_a_torn_tail_and_appends_after_it(tmp_path):
    log = WorkLog(tmp_path / "rank0.log")
    log.open_for_append()
    first = LogRecord(0, ["a", "b"], np.arange(6, dtype=np.float16).reshape(2, 3), {"c": "undecodable"})
    second = LogRecord(1, ["d"], np.ones((1, 3), np.float16))
    log.append(first)
    log.append(second)
    intact = log.path.stat().st_size
    with open(log.path, "ab") as handle:  # a crash in the middle of the third record
        handle.write(b"FATL\x00\x01")
    records = list(log.records())
    assert [r.batch for r in records] == [0, 1]
    assert records[0].failed == {"c": "undecodable"}
    np.testing.assert_array_equal(records[0].logits, first.logits)
    log.open_for_append()
    assert log.path.stat().st_size == intact
    log.append(LogRecord(2, ["e"], np.zeros((1, 3), np.float16)))
    assert [r.batch for r in log.records()] == [0, 1, 2]


def test_work_log_stops_at_a_corrupted_record(tmp_path):
    log = WorkLog(tmp_path / "rank0.log")
    for batch in range(3):
        log.append(LogRecord(batch, [f"id{batch}"], np.full((1, 2), batch, np.float32)))
    data = bytearray(log.path.read_bytes())
    data[-3] ^= 0xFF  # flip a byte inside the last payload: its CRC no longer matches
    log.path.write_bytes(bytes(data))
    assert [r.batch for r in log.records()] == [0, 1]


def zero_row(path, row):
    """Damage as the issue found it: one row of an otherwise intact store set to zeros."""
    with h5py.File(path, "r+") as handle:
        handle["logits"][row] = 0


def drop_checksums(path):
    """A store as written before row checksums existed."""
    with h5py.File(path, "r+") as handle:
        del handle[CHECKSUMS]
        del handle.attrs["checksum"]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_damaged_row_stops_its_reader_with_one_line_naming_the_store_and_rows(sample, dtype):
    path, ids, logits = sample
    make_store(path, ids, logits, dtype=dtype)
    zero_row(path, 7)
    with h5py.File(path, "r+") as handle:  # one value nudged by one unit in the last place
        value = handle["logits"][12, 3]
        handle["logits"][12, 3] = np.nextafter(value, value + 1)
    store = LogitsStore(path)
    intact, present = store.fetch(ids[:7])  # rows that are whole still read
    assert present.all() and np.allclose(intact, logits[:7], rtol=1e-3, atol=1e-2)
    for query in ([ids[7]], ids):
        with pytest.raises(FatError) as raised:
            store.fetch(query)
        message = str(raised.value)
        assert str(path) in message and "\n" not in message
        assert "rows 7 (clip0002)" in message and ("12 (clip0007)" in message) == (len(query) > 1)
    assert store.damaged_rows(block=4).tolist() == [7, 12]


def test_a_row_that_moved_to_another_id_fails_its_checksum(sample):
    path, ids, logits = sample
    make_store(path, ids, logits)
    with h5py.File(path, "r+") as handle:
        handle["ids"][3] = "not-the-id"
    store = LogitsStore(path)
    with pytest.raises(FatError, match=r"rows 3 \(not-the-id\)"):
        store.fetch(["not-the-id"])
    assert store.damaged_rows().tolist() == [3]


def test_a_store_without_checksums_reads_with_one_warning_line(sample, caplog):
    path, ids, logits = sample
    make_store(path, ids, logits)
    drop_checksums(path)
    caplog.set_level("WARNING")
    for _ in range(2):  # train opens a store twice (provenance, then rows): still one line
        store = LogitsStore(path)
        values, present = store.fetch(ids)
        np.testing.assert_array_equal(values, logits)
    warnings = [r.getMessage() for r in caplog.records if "no row checksums" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0]
    assert not store.has_checksums and store.damaged_rows().size == 0


def test_fat_train_on_a_damaged_store_exits_with_one_line_naming_store_and_rows(tmp_path, capsys):
    """Through training's own reading path (the teacher table), before any step is taken."""
    task = make_task(tmp_path / "task", n_train=6, n_valid=3, num_classes=3, seed=2)
    store = write_task_store(tmp_path / "teacher.h5", task.train_ids, oracle_logits(task.train_targets), task.labels)
    zero_row(store, 4)
    out = tmp_path / "run"
    assert main(["train", "--train", str(task.train), "--valid", str(task.valid), "--teacher", str(store),
                 "--out", str(out), "--model-size", "tiny224", "--fstride", "16", "--tstride", "16",
                 "--target-frames", "32", "--num-workers", "0", "--no-progress", "--threads", "1",
                 "--kd-lambda", "0.5", "--epochs", "1", "--batch-size", "3", "--no-wa"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("fat train: error: ")
    assert str(store) in error and "rows 4 (train004)" in error and "damaged" in error
    assert not (out / MODEL_NAME).exists() and not (out / LEGACY_MODEL_NAME).exists()


def test_fat_logits_verify_names_damaged_rows_and_unverifiable_stores(sample, tmp_path, capsys):
    path, ids, logits = sample
    good, damaged, old = (tmp_path / f"{name}.h5" for name in ("good", "damaged", "old"))
    for store in (good, damaged, old):
        make_store(store, ids, logits, dtype="float16")
    zero_row(damaged, 20)
    drop_checksums(old)
    assert main(["logits", "verify", str(good)]) == 0
    assert f"{good}: ok, all {len(ids)} rows match their checksums" in capsys.readouterr().out
    assert main(["logits", "verify", str(good), str(damaged), str(old), str(tmp_path / "absent.h5")]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"{good}: ok")
    assert lines[1].startswith(f"{damaged}: 1 of {len(ids)} teacher logits rows do not match")
    assert lines[2] == f"  row 20: {ids[20]}"
    assert lines[3].startswith(f"{old}: no row checksums") and "no such teacher logits store" in lines[4]
    assert captured.err.strip() == (f"fat logits: error: 3 of 4 stores failed verification: {damaged}, {old}, "
                                    f"{tmp_path / 'absent.h5'}")
