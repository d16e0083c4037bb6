"""`fat metadata`: the official AudioSet CSV layout in, checked normalised CSVs out."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.core.errors import FatError
from pipeline.metadata import balanced_subset, class_counts, parse_segments_csv, read_metadata_csv
from tests.media_server import MediaServer, write_label_csv, write_raw_segments

CLASSES = [("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"), ("/m/04rlf", "Music"),
           ("/t/dd00088", "Gurgling"), ("/m/068hy", "Domestic animals, pets")]
ROWS = [
    ("--4gqARaEJE", 0.0, 10.0, ["/m/068hy", "/m/09x0r", "/t/dd00088"]),
    ("-0BIyqJj9ZU", 30.0, 40.0, ["/m/04rlf"]),
    ("0FMdORf5iGs", 123.5, 130.0, ["/m/05zppz", "/m/09x0r"]),   # shorter than 10 s: end of its video
    ("_aB1-c_D2e3", 7.0, 17.0, ["/m/09x0r"]),
]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "official"
    write_label_csv(folder / "class_labels_indices.csv", CLASSES)
    write_raw_segments(folder / "eval_segments.csv", ROWS)
    write_raw_segments(folder / "balanced_train_segments.csv", ROWS[:2])
    return folder


def test_official_layout_becomes_normalised_csv(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "meta"
    assert main(["metadata", "--source", str(source), "--out-dir", str(out)]) == 0

    lines = (out / "eval.csv").read_text().splitlines()
    assert lines[0] == "ytid,start_seconds,end_seconds,positive_labels"
    assert lines[1] == '--4gqARaEJE,0.000,10.000,"/m/068hy,/m/09x0r,/t/dd00088"'
    frame = read_metadata_csv(out / "eval.csv")
    assert list(frame["ytid"]) == [row[0] for row in ROWS]
    assert list(frame["start_seconds"]) == [row[1] for row in ROWS]
    assert list(frame["end_seconds"]) == [row[2] for row in ROWS]
    assert list(frame["positive_labels"]) == [",".join(row[3]) for row in ROWS]
    assert frame["start_seconds"].dtype == float and frame["ytid"].dtype == object
    assert len(read_metadata_csv(out / "balanced_train.csv")) == 2
    # The label CSV is copied byte for byte (its sha256 is provenance downstream).
    assert (out / "class_labels_indices.csv").read_bytes() == (source / "class_labels_indices.csv").read_bytes()


def test_limit_keeps_the_first_rows(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "meta"
    assert main(["metadata", "--source", str(source), "--out-dir", str(out), "--splits", "eval", "--limit", "2"]) == 0
    assert list(read_metadata_csv(out / "eval.csv")["ytid"]) == ["--4gqARaEJE", "-0BIyqJj9ZU"]
    assert not (out / "balanced_train.csv").exists()


BAD_ROWS = [
    ('abcdefghijk, 0.000, 10.000\n', "expected 4 fields"),
    ('abc, 0.000, 10.000, "/m/09x0r"\n', "invalid YouTube id 'abc'"),
    ('abc$efghijk, 0.000, 10.000, "/m/09x0r"\n', "invalid YouTube id"),
    ('abcdefghijk, 10.000, 10.000, "/m/09x0r"\n', "is not before end_seconds"),
    ('abcdefghijk, 20.000, 10.000, "/m/09x0r"\n', "is not before end_seconds"),
    ('abcdefghijk, 0.000, 10.500, "/m/09x0r"\n', "longer than 10 s"),
    ('abcdefghijk, x, 10.000, "/m/09x0r"\n', "start_seconds 'x' is not a number"),
    ('abcdefghijk, nan, 10.000, "/m/09x0r"\n', "not finite"),
    ('abcdefghijk, 0.000, 10.000, "/m/09x0r,/m/unknown"\n', "unknown label MID(s) /m/unknown"),
    ('abcdefghijk, 0.000, 10.000, ""\n', "no positive labels"),
    ('--4gqARaEJE, 0.000, 10.000, "/m/09x0r"\n', "repeats line 4"),
]


@pytest.mark.parametrize(("bad_line", "expected"), BAD_ROWS)
def test_bad_row_is_an_error_naming_file_and_line(source: Path, tmp_path: Path, bad_line: str, expected: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    path = source / "eval_segments.csv"
    text = path.read_text()
    path.write_text(text + bad_line)
    line = len(text.splitlines()) + 1
    out = tmp_path / "meta"
    out.mkdir()
    (out / "eval.csv").write_text("earlier output, kept\n")

    assert main(["metadata", "--source", str(source), "--out-dir", str(out), "--splits", "eval"]) == 2
    error = capsys.readouterr().err
    assert f"{path}:{line}:" in error and expected in error
    assert (out / "eval.csv").read_text() == "earlier output, kept\n"  # nothing overwritten on error


def test_skip_invalid_reports_every_skipped_row(source: Path, tmp_path: Path) -> None:
    path = source / "eval_segments.csv"
    text = path.read_text()
    first_bad = len(text.splitlines()) + 1
    path.write_text(text + BAD_ROWS[1][0] + BAD_ROWS[5][0] + 'zyxwvutsrqp, 1.000, 2.000, "/m/04rlf"\n')
    out = tmp_path / "meta"

    assert main(["metadata", "--source", str(source), "--out-dir", str(out), "--splits", "eval", "--skip-invalid"]) == 0
    assert list(read_metadata_csv(out / "eval.csv")["ytid"]) == [row[0] for row in ROWS] + ["zyxwvutsrqp"]
    with open(out / "eval.skipped.csv", newline="") as handle:
        report = list(csv.DictReader(handle))
    assert [(int(row["line"]), row["ytid"]) for row in report] == [(first_bad, "abc"), (first_bad + 1, "abcdefghijk")]
    assert "invalid YouTube id" in report[0]["reason"] and "longer than 10 s" in report[1]["reason"]
    assert all(row["file"] == str(path) for row in report)


@pytest.mark.parametrize("text", ["", "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=0\n",
                                  "YTID, start_seconds, end_seconds, positive_labels\n"],
                         ids=["0 bytes", "only comments", "only a header"])
def test_a_segments_file_without_rows_is_an_error_unless_allowed(source: Path, tmp_path: Path, text: str,
                                                                  capsys: pytest.CaptureFixture,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A truncated download must not become a split of 0 clips that every later stage accepts."""
    path = source / "eval_segments.csv"
    path.write_text(text)
    out = tmp_path / "meta"
    args = ["metadata", "--source", str(source), "--out-dir", str(out), "--splits", "eval", "balanced_train"]
    assert main(args) == 2
    assert f"{path}: no segment rows" in capsys.readouterr().err and not out.exists()

    assert main([*args, "--allow-empty"]) == 0
    assert len(read_metadata_csv(out / "eval.csv")) == 0 and len(read_metadata_csv(out / "balanced_train.csv")) == 2
    assert f"eval: {path} yields no clips" in caplog.text


def test_a_segments_file_whose_rows_are_all_skipped_is_an_error(source: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    path = source / "eval_segments.csv"
    path.write_text("# comment\n" + BAD_ROWS[1][0] + BAD_ROWS[5][0])
    args = ["metadata", "--source", str(source), "--out-dir", str(tmp_path / "meta"), "--splits", "eval"]
    assert main([*args, "--skip-invalid"]) == 2
    assert f"{path}: none of its 2 row(s) is valid (first: line 2: invalid YouTube id 'abc')" in capsys.readouterr().err
    assert main([*args, "--skip-invalid", "--allow-empty"]) == 0


def test_label_csv_problems_name_the_line(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels = source / "class_labels_indices.csv"
    labels.write_text(labels.read_text() + '7,/m/0abc,"Out of order"\n')
    assert main(["metadata", "--source", str(source), "--out-dir", str(tmp_path / "m")]) == 2
    assert f"{labels}:{len(CLASSES) + 2}: index '7' out of order" in capsys.readouterr().err


def test_missing_source_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_label_csv(tmp_path / "class_labels_indices.csv", CLASSES)
    assert main(["metadata", "--source", str(tmp_path), "--out-dir", str(tmp_path / "m"), "--splits", "eval"]) == 2
    assert f"{tmp_path / 'eval_segments.csv'}: not found" in capsys.readouterr().err


def test_official_files_are_fetched_once_into_raw_dir(source: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    with MediaServer() as server:
        for path in source.iterdir():
            server.add_file(path.name, path)
        args = ["metadata", "--base-url", f"{server.base_url}/files/", "--raw-dir", str(raw),
                "--out-dir", str(tmp_path / "meta"), "--splits", "eval", "balanced_train"]
        assert main(args) == 0
        assert sorted(p.name for p in raw.iterdir()) == ["balanced_train_segments.csv", "class_labels_indices.csv",
                                                          "eval_segments.csv"]
        assert (raw / "eval_segments.csv").read_bytes() == (source / "eval_segments.csv").read_bytes()
        requests = len(server.log)
        assert requests == 3
        assert main(args) == 0  # present files are not fetched again
        assert len(server.log) == requests
        assert len(read_metadata_csv(tmp_path / "meta" / "eval.csv")) == len(ROWS)


def test_failed_fetch_names_the_url_and_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "raw"
    with MediaServer() as server:  # serves no files: every request is a 404
        assert main(["metadata", "--base-url", f"{server.base_url}/files/", "--raw-dir", str(raw),
                     "--out-dir", str(tmp_path / "meta")]) == 2
    error = capsys.readouterr().err
    assert f"{server.base_url}/files/class_labels_indices.csv: HTTP 404" in error and "--source" in error
    assert not raw.exists() or list(raw.iterdir()) == []


def test_read_metadata_csv_checks_header_ids_and_windows(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    path.write_text("ytid,start,end,labels\n")
    with pytest.raises(FatError, match=r"eval.csv:1: expected the header"):
        read_metadata_csv(path)
    path.write_text('ytid,start_seconds,end_seconds,positive_labels\n-0BIyqJj9ZU,0,10,"/m/a"\nbad id!!!!!,0,10,"/m/a"\n')
    with pytest.raises(FatError, match=r"eval.csv:3: invalid YouTube id 'bad id!!!!!'"):
        read_metadata_csv(path)
    path.write_text('ytid,start_seconds,end_seconds,positive_labels\n-0BIyqJj9ZU,5,4,"/m/a"\n')
    with pytest.raises(FatError, match=r"eval.csv:2: start_seconds 5 is not before"):
        read_metadata_csv(path)
    with pytest.raises(FatError, match="run `fat metadata` first"):
        read_metadata_csv(tmp_path / "missing.csv")


HEADER = "ytid,start_seconds,end_seconds,positive_labels\n"
GOOD = '-0BIyqJj9ZU,0,10,"/m/a"\n'


@pytest.mark.parametrize(("text", "expected"), [
    (HEADER + GOOD + 'abcdefghijk,0,10,"/m/a",x\n', ":3: expected 4 fields (ytid,start_seconds,end_seconds,"
                                                    "positive_labels), found 5"),
    (HEADER + GOOD + 'abcdefghijk,0,10,"/m/a\nabcdefghijl,0,10,"/m/a"\n', ":3: malformed CSV"),
    (HEADER + GOOD + 'abcdefghijk,0,10,"/m/a\n/m/b"\n', ":3: a quoted field runs on to line 4"),
    (HEADER + "\n" + GOOD + "\nabcdefghijk,x,10,/m/a\n", ":5: start_seconds 'x' is not a number"),
    ("", ":1: expected the header ytid,start_seconds,end_seconds,positive_labels, found nothing"),
], ids=["extra field", "quote left open", "field over two lines", "blank lines counted", "empty"])
def test_a_malformed_metadata_csv_is_one_line_naming_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "eval.csv"
    path.write_text(text)
    with pytest.raises(FatError) as info:
        read_metadata_csv(path)
    assert str(info.value).startswith(f"{path}{expected}") and "\n" not in str(info.value), str(info.value)


def _skewed_rows(tmp_path: Path) -> tuple[Path, list[str]]:
    """40 classes with Zipf-like frequencies; the two rarest have only 2 and 3 clips."""
    import numpy as np

    rng = np.random.default_rng(7)
    mids = [f"/m/c{index:02d}" for index in range(40)]
    weights = 1.0 / (np.arange(40) + 1.0) ** 1.3
    rows = []
    for index in range(3000):
        count = int(rng.integers(1, 4))
        labels = list(dict.fromkeys(rng.choice(38, size=count, p=weights[:38] / weights[:38].sum())))
        rows.append((f"id{index:09d}", 0.0, 10.0, [mids[int(i)] for i in labels]))
    for index in range(2):
        rows.append((f"rare{index:07d}", 0.0, 10.0, [mids[38]]))
    for index in range(3):
        rows.append((f"rarer{index:06d}", 0.0, 10.0, [mids[39], mids[0]]))
    path = write_raw_segments(tmp_path / "unbalanced_train_segments.csv", rows)
    return path, mids


def test_balanced_subset_covers_every_class_evenly(tmp_path: Path) -> None:
    path, mids = _skewed_rows(tmp_path)
    frame, _ = parse_segments_csv(path, mids)
    full = class_counts(frame, mids)
    subset = balanced_subset(frame, 400, seed=1)
    counts = class_counts(subset, mids)

    assert len(subset) == 400 and subset["ytid"].is_unique
    assert (counts > 0).all()                       # every class is covered
    assert counts["/m/c38"] == 2 and counts["/m/c39"] == 3  # rare classes get every clip they have
    not_exhausted = counts[counts < full]
    # Even: classes that still had clips to give differ by little, unlike the source's 100:1 skew.
    assert not_exhausted.min() >= 0.5 * not_exhausted.median()
    assert full.max() / full.min() > 100
    # A plain random subset of the same size leaves rare classes out.
    assert (class_counts(frame.sample(400, random_state=1), mids) == 0).any()
    # Deterministic for a seed, and the input order is kept.
    assert subset.equals(balanced_subset(frame, 400, seed=1))
    assert not subset.equals(balanced_subset(frame, 400, seed=2))
    positions = [frame.index[frame["ytid"] == ytid][0] for ytid in subset["ytid"]]
    assert positions == sorted(positions)


def test_balanced_subset_via_cli(tmp_path: Path) -> None:
    path, mids = _skewed_rows(tmp_path)
    write_label_csv(tmp_path / "class_labels_indices.csv", [(mid, mid) for mid in mids])
    out = tmp_path / "meta"
    assert main(["metadata", "--source", str(tmp_path), "--out-dir", str(out), "--splits", "unbalanced_train",
                 "--balanced-subset", "200", "--seed", "3"]) == 0
    frame = read_metadata_csv(out / "unbalanced_train.csv")
    assert len(frame) == 200
    assert set(Counter(mid for labels in frame["positive_labels"] for mid in labels.split(","))) == set(mids)
