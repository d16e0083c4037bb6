"""fat validate: one planted file per reason code beside good files and edge cases that must pass.

Everything is generated here (numpy + soundfile, ffmpeg for a compressed file). The tests check
each reason, that good clips all pass, that no file was deleted or modified, and that the
datafile is valid AST format that the reader loads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.cli import main
from pipeline.core.ffmpeg import ffmpeg_binary
from pipeline.datafile import load_datafile, load_label_csv
from pipeline.validate import REASONS, Thresholds, ValidateSettings, run_validate, source_from_metadata
from pipeline.validate.checks import check_file, sniff

RATE = 32000
LABELS = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/0jbk,"Animal"\n'
TOL = Thresholds().length_tolerance


def noise(seconds: float, level: float = 0.1, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """Band-limited noise with a slow envelope: a stand-in for a real recording."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    x = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * np.arange(n) / rate)
    x *= envelope
    return (level * x / np.sqrt(np.mean(x**2))).astype(np.float32)


def write(path: Path, audio: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> None:
    sf.write(str(path), audio, rate, subtype=subtype, format="WAV")


def frames(n: int, seed: int = 1) -> np.ndarray:
    return noise(n / RATE, seed=seed)[:n] if n else np.zeros(0, np.float32)


def plant(audio: Path) -> tuple[list[tuple[str, float, float, str]], dict[str, str], list[str]]:
    """Write the corpus. Returns metadata rows, {id: expected reason} and the ids that must pass, in order."""
    audio.mkdir(parents=True)
    rows: list[tuple[str, float, float, str]] = []
    expect: dict[str, str] = {}
    good: list[str] = []

    def clip(name: str, reason: str, start: float = 0.0, end: float = 1.0, labels: str = "/m/09x0r") -> str:
        ytid = (name + "_" * 11)[:11]
        rows.append((ytid, start, end, labels))
        (good.append(ytid) if reason == "" else expect.__setitem__(ytid, reason))
        return ytid

    path = lambda ytid: audio / f"{ytid}.wav"  # noqa: E731
    # --- clips that must pass
    write(path(clip("good-1", "")), noise(1.0, seed=1))
    write(path(clip("-leadingdash", "", labels="/m/09x0r,/m/04rlf")), noise(1.0, seed=2))
    # a quiet but real recording: RMS about -50 dBFS, peak near -38 dBFS
    write(path(clip("quiet", "")), noise(1.0, level=10 ** (-50 / 20), seed=3))
    # the end of a video: its window is shorter than 10 s and the clip matches it
    write(path(clip("videoend", "", start=7.0, end=7.6)), noise(0.6, seed=4))
    # exactly at the length tolerance on both sides
    at_tol = round(TOL * RATE)
    write(path(clip("short-ok", "")), frames(RATE - at_tol))
    write(path(clip("long-ok", "")), frames(RATE + at_tol))
    # loud, some clipped samples but far below the clipping threshold
    loud = noise(1.0, level=0.1, seed=5)
    write(path(clip("loud", "")), np.clip(loud * 3, -1, 1))
    # --- one planted file per reason code (and variants)
    clip("missing", "missing")
    path(clip("zerobytes", "unreadable")).write_bytes(b"")
    path(clip("htmlpage", "unreadable")).write_text("<!DOCTYPE html><html><body>Video unavailable</body></html>")
    path(clip("plaintext", "unreadable")).write_text("ERROR: Sign in to confirm you're not a bot\n")
    good_bytes = _wav_bytes(noise(1.0, seed=6))
    path(clip("cut-header", "unreadable")).write_bytes(good_bytes[:30])
    flac = io.BytesIO()
    sf.write(flac, noise(1.0, seed=7), RATE, format="FLAC")
    garbled = bytearray(flac.getvalue())
    middle = len(garbled) // 2
    garbled[middle:middle + 400] = bytes((b * 7 + 13) % 256 for b in garbled[middle:middle + 400])
    path(clip("flac-nosync", "unreadable")).write_bytes(bytes(garbled))  # the decoder fails mid-stream
    write(path(clip("rate16k", "sample-rate")), noise(1.0, rate=16000), rate=16000)
    write(path(clip("stereo", "channels")), np.stack([noise(1.0), noise(1.0, seed=9)], axis=1))
    write(path(clip("truncated", "too-short", end=2.0)), noise(0.7))  # the source ended inside the window
    write(path(clip("short-1", "too-short")), frames(RATE - at_tol - 1))
    write(path(clip("tiny", "too-short", start=3.0, end=3.3)), noise(0.3))  # below --min-seconds
    write(path(clip("long-1", "too-long")), frames(RATE + at_tol + 1))
    nan = noise(1.0)
    nan[1000] = np.nan
    write(path(clip("nan", "non-finite")), nan, subtype="FLOAT")
    write(path(clip("zeros", "silent", labels="/m/0jbk")), np.zeros(RATE, np.float32))  # Animal's only clip
    dither = np.random.default_rng(0).integers(-1, 2, RATE).astype(np.float32) / 32768
    write(path(clip("dither", "silent")), dither)
    write(path(clip("dcline", "dc")), np.full(RATE, 0.3, np.float32))
    wall = np.sign(np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)
    write(path(clip("squarewall", "clipping")), wall)
    write(path(clip("badlabel", "unknown-label", labels="/m/09x0r,/m/notaclass")), noise(1.0))
    return rows, expect, good


def _wav_bytes(audio: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, audio, RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def tree(tmp_path: Path) -> tuple[Path, dict[str, str], list[str]]:
    root = tmp_path / "data"
    rows, expect, good = plant(root / "audio" / "eval")
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "class_labels_indices.csv").write_text(LABELS)
    lines = ["ytid,start_seconds,end_seconds,positive_labels"]
    lines += [f'{ytid},{start:.3f},{end:.3f},"{labels}"' for ytid, start, end, labels in rows]
    (root / "metadata" / "eval.csv").write_text("\n".join(lines) + "\n")
    return root, expect, good


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def read_report(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_reason_is_found_good_clips_pass_and_nothing_is_touched(tmp_path: Path) -> None:
    root, expect, good = tree(tmp_path)
    before = hashes(root / "audio" / "eval")
    code = main(["validate", "--split", "eval", "--metadata-dir", str(root / "metadata"),
                 "--audio-dir", str(root / "audio"), "--out-dir", str(root / "datafiles"),
                 "--report-dir", str(root / "reports"), "--workers", "2", "--batch-size", "3", "--no-progress"])
    assert code == 0
    assert hashes(root / "audio" / "eval") == before  # nothing deleted, moved or modified

    report = read_report(root / "reports" / "eval.rejected.csv")
    assert {row["id"]: row["reason"] for row in report} == expect
    details = {row["id"].rstrip("_"): row["detail"] for row in report}  # ids are names padded with _
    assert details["zerobytes"] == "zero bytes"
    assert "HTML" in details["htmlpage"] and "text" in details["plaintext"]
    assert "truncated" in details["cut-header"]
    assert "decoding failed" in details["flac-nosync"]
    assert "16000 Hz" in details["rate16k"] and "2 channels" in details["stereo"]
    assert "minimum" in details["tiny"] and "window" in details["truncated"]
    assert "digital silence" in details["zeros"] and "-90" in details["dither"]
    assert "/m/notaclass" in details["badlabel"]
    assert all(row["path"].endswith(f"{row['id']}.wav") for row in report)
    # report rows keep the input order
    order = [line.split(",", 1)[0] for line in (root / "metadata" / "eval.csv").read_text().splitlines()[1:]]
    assert [row["id"] for row in report] == [i for i in order if i in expect]

    # a valid AST datafile of exactly the good clips, in input order, relative paths that resolve
    document = json.loads((root / "datafiles" / "eval.json").read_text())
    assert set(document) == {"data"}
    assert [entry["id"] for entry in document["data"]] == good
    assert all(set(entry) == {"wav", "labels", "id"} and not entry["wav"].startswith("/") for entry in document["data"])
    assert (root / "datafiles" / "class_labels_indices.csv").read_text() == LABELS
    labels = load_label_csv(root / "datafiles" / "class_labels_indices.csv")
    data = load_datafile(root / "datafiles" / "eval.json", labels)
    data.check_files_exist()
    assert data.labels[1] == ("/m/09x0r", "/m/04rlf")

    summary = json.loads((root / "reports" / "eval.validate.json").read_text())
    assert summary["clips"] == len(good) + len(expect) and summary["passed"] == len(good)
    assert set(summary["reasons"]) == set(REASONS)
    for reason in REASONS:
        assert summary["reasons"][reason] == sum(1 for r in expect.values() if r == reason)

    # per class: what was listed and what is left, so a class that lost every clip is named
    assert summary["classes"] == {"listed": 3, "kept": 2, "lost": 1}
    classes = read_report(root / "reports" / "eval.classes.csv")
    assert [(c["mid"], c["listed"], c["kept"]) for c in classes] == [
        ("/m/09x0r", str(len(good) + len(expect) - 1), str(len(good))), ("/m/04rlf", "1", "1"), ("/m/0jbk", "1", "0")]
    assert classes[2]["display_name"] == "Animal" and classes[2]["kept_fraction"] == "0.0000"


def test_parallel_and_serial_runs_write_identical_outputs_and_a_fixed_clip_passes_next_time(tmp_path: Path) -> None:
    root, expect, good = tree(tmp_path)

    def run(out: str, workers: int) -> tuple[bytes, bytes]:
        settings = ValidateSettings(
            split="eval", source=source_from_metadata(root / "metadata" / "eval.csv", root / "audio" / "eval"),
            labels=root / "metadata" / "class_labels_indices.csv", out_dir=root / out, report_dir=root / out,
            workers=workers, batch_size=2)
        run_validate(settings)
        return (root / out / "eval.json").read_bytes(), (root / out / "eval.rejected.csv").read_bytes()

    assert run("serial", 1) == run("parallel", 2)
    write(root / "audio" / "eval" / "zeros______.wav", noise(1.0, seed=11))  # re-downloaded, now good
    run("serial", 1)
    assert "zeros______" in load_datafile(root / "serial" / "eval.json").ids
    assert "zeros______" not in {row["id"] for row in read_report(root / "serial" / "eval.rejected.csv")}
    assert not [p for p in (root / "serial").iterdir() if ".fat-tmp-" in p.name]


def test_datafile_input_reports_duplicates_and_unlabelled_clips_and_reads_other_formats(tmp_path: Path) -> None:
    audio = tmp_path / "clips"
    audio.mkdir()
    write(audio / "a.wav", noise(1.0))
    sf.write(str(audio / "b.flac"), noise(0.8, seed=2), RATE, subtype="PCM_24")
    write(audio / "c.wav", noise(1.0, seed=3))
    source = audio / "c.wav"
    subprocess.run([ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(source), "-c:a", "aac",
                    "-b:a", "96k", str(audio / "d.m4a")], check=True)
    (tmp_path / "class_labels_indices.csv").write_text(LABELS)
    entries = [
        {"wav": "clips/a.wav", "labels": "/m/09x0r"},
        {"wav": str(audio / "b.flac"), "labels": "/m/04rlf"},
        {"wav": "clips/a.wav", "labels": "/m/04rlf"},  # same id (clips/a) again
        {"wav": "clips/c.wav", "labels": ""},
        {"wav": "clips/d.m4a", "labels": "/m/0jbk"},  # soundfile cannot read it: ffmpeg decodes it
    ]
    (tmp_path / "in.json").write_text(json.dumps({"data": entries}))
    before = hashes(audio)
    code = main(["validate", "--split", "mine", "--datafile", str(tmp_path / "in.json"), "--workers", "1",
                 "--out-dir", str(tmp_path / "out"), "--report-dir", str(tmp_path / "out"), "--absolute-paths",
                 "--progress"])
    assert code == 0 and hashes(audio) == before
    reasons = {(row["id"], row["reason"]) for row in read_report(tmp_path / "out" / "mine.rejected.csv")}
    assert reasons == {("clips/a", "duplicate-id"), ("clips/c", "no-labels")}
    data = load_datafile(tmp_path / "out" / "mine.json")
    assert list(data.ids) == ["clips/a", "clips/b", "clips/d"]
    assert list(data.paths) == [str(audio / "a.wav"), str(audio / "b.flac"), str(audio / "d.m4a")]
    # the output never replaces its input
    assert main(["validate", "--split", "in", "--datafile", str(tmp_path / "in.json"),
                 "--out-dir", str(tmp_path), "--report-dir", str(tmp_path / "out")]) == 2
    assert json.loads((tmp_path / "in.json").read_text()) == {"data": entries}


def test_content_thresholds_are_options(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.wav"
    write(quiet, noise(1.0, level=10 ** (-50 / 20)))
    assert check_file(str(quiet), 1.0, Thresholds()).reason == ""
    assert check_file(str(quiet), 1.0, Thresholds(silence_rms_dbfs=-45)).reason == "silent"
    assert check_file(str(quiet), float("nan"), Thresholds(max_seconds=0.9)).reason == "too-long"
    assert check_file(str(quiet), float("nan"), Thresholds(sample_rate=16000)).reason == "sample-rate"
    clipped = tmp_path / "clipped.wav"
    signal = noise(1.0, level=0.1, seed=5)
    write(clipped, np.clip(signal * 3, -1, 1))
    fraction = float(np.mean(np.abs(np.clip(signal * 3, -1, 1)) >= 0.999))
    assert 0 < fraction < 0.02
    assert check_file(str(clipped), 1.0, Thresholds(max_clipped_fraction=fraction / 2)).reason == "clipping"
    offset = tmp_path / "offset.wav"
    write(offset, noise(1.0, level=0.05) + 0.4)
    verdict = check_file(str(offset), 1.0, Thresholds())
    assert verdict.reason == "dc" and "+0.4" in verdict.detail
    assert check_file(str(offset), 1.0, Thresholds(max_dc_offset=0.5)).reason == ""
    assert main(["validate", "--split", "x", "--datafile", str(tmp_path / "none.json")]) == 2
    (tmp_path / "empty.json").write_text('{"data": []}')
    (tmp_path / "class_labels_indices.csv").write_text(LABELS)
    assert main(["validate", "--split", "x", "--datafile", str(tmp_path / "empty.json"), "--clip-level", "0"]) == 2


@pytest.mark.parametrize(("head", "expected"), [
    (b"<!doctype html>\n<html>", "HTML"), (b'{"error": "gone"}', "JSON"), (b"RIFF\x24\x00\x00\x00WAVE", "truncated"),
    (b"\x00\x01\x02\xff\xfe" * 20, ""), (b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb", ""),
])
def test_sniff_describes_what_a_non_audio_file_is(head: bytes, expected: str) -> None:
    assert expected in sniff(head) if expected else sniff(head) == ""
