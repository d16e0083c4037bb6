"""Packed audio: `fat pack` writes id-keyed shards of FLAC / Vorbis; `PackedAudio` reads them back.

Real files throughout: WAV/FLAC sources written with soundfile, real HDF5 shards, a real
`kill -9` of a `fat pack` subprocess, real corruption of bytes on disk, real DataLoader workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.cli import main
from pipeline.clip_audio import open_clip_audio
from pipeline.core.audio import fit_length, read_audio
from pipeline.core.errors import FatError
from pipeline.datafile import load_datafile
from pipeline.packed.codecs import encode_clip, normalise_ogg_serial
from pipeline.packed.format import CodecSettings
from pipeline.packed.reader import PackedAudio
from pipeline.packed.shard import seal_of

RATE = 32000
# (id, file name, rate, subtype, channels): AudioSet's own kind first, then what other datasets bring
SOURCES = [
    ("-0Qx2kCxA7s", "-0Qx2kCxA7s.wav", RATE, "PCM_16", 1),  # an id that starts with '-'
    ("abcdefghijk", "abcdefghijk.wav", RATE, "PCM_16", 1),
    ("stereo_44k", "stereo_44k.wav", 44100, "PCM_16", 2),  # read_audio mixes to mono: so must the reader
    ("deep_24bit", "deep_24bit.flac", 16000, "PCM_24", 1),
    ("eight_bit", "eight_bit.wav", 22050, "PCM_U8", 1),
    ("ünïcode-id", "unicode.wav", RATE, "PCM_16", 1),
]


def signal_for(i: int, rate: int, seconds: float, channels: int) -> np.ndarray:
    """A tone over noise with a silent gap; different per clip."""
    rng = np.random.default_rng(i)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.05 * rng.standard_normal(t.size)
    wave[t.size // 3:t.size // 2] = 0.0
    if channels == 2:
        return np.stack([wave, 0.5 * np.roll(wave, 17)], axis=1)
    return wave


def write_corpus(root: Path, sources=SOURCES, seconds: float = 0.6, name: str = "clips") -> Path:
    """Audio files, an AST datafile listing them and a label CSV; returns the datafile."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (clip_id, file_name, rate, subtype, channels) in enumerate(sources):
        sf.write(audio / file_name, signal_for(i, rate, seconds * (1 + i % 3 / 4), channels), rate, subtype=subtype)
        entries.append({"wav": f"audio/{file_name}", "labels": "/m/a", "id": clip_id})
    datafile = root / f"{name}.json"
    datafile.write_text(json.dumps({"data": entries}, ensure_ascii=False))
    (root / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/a,"A"\n')
    return datafile


def simple_sources(count: int, prefix: str = "c") -> list[tuple[str, str, int, str, int]]:
    return [(f"{prefix}{i:03d}", f"{prefix}{i:03d}.wav", RATE, "PCM_16", 1) for i in range(count)]


def pack(datafile: Path, out: Path, *extra: str) -> int:
    return main(["pack", "--datafile", str(datafile), "--out-dir", str(out), "--workers", "1", *extra])


def h5(path: Path, mode: str = "r") -> h5py.File:
    """Open a shard as the reader does (no HDF5 file locking, which would clash with its open handles)."""
    return h5py.File(path, mode, locking=False)


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.h5"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("packed-corpus"))


@pytest.fixture(scope="module")
def flac_store(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flac") / "store"
    assert pack(corpus, out, "--shard-clips", "4") == 0
    return out


# -- round trips ---------------------------------------------------------------------------

def test_flac_pack_reads_back_bit_for_bit_what_read_audio_gives(corpus, flac_store):
    data = load_datafile(corpus)
    store = PackedAudio(flac_store, [corpus])
    assert len(store) == len(data) and store.lossless and [f.name for f in shard_files(flac_store)] == \
        ["shard-00000-of-00002.h5", "shard-00001-of-00002.h5"]
    for clip_id, path in zip(data.ids, data.paths, strict=True):
        packed, rate = store.read(clip_id)
        wav, wav_rate = read_audio(path)
        assert packed.dtype == np.float32 and rate == wav_rate
        np.testing.assert_array_equal(packed, wav)
        resampled, new_rate = store.read(clip_id, sample_rate=16000)
        np.testing.assert_array_equal(resampled, read_audio(path, sample_rate=16000)[0])
        assert new_rate == 16000
    with h5(shard_files(flac_store)[0]) as shard:
        assert shard.attrs["complete"] and shard.attrs["codec"] == "flac" and shard.attrs["clips"] == 4
        assert shard["channels"][2] == 2  # the stereo clip keeps both channels: that is what makes it exact
        assert shard.attrs["datafile_sha256"] == json.loads((flac_store / "index.json").read_text())["datafile_sha256"]


def test_vorbis_pack_keeps_rate_length_and_the_signal(corpus, tmp_path, flac_store):
    out = tmp_path / "vorbis"
    assert pack(corpus, out, "--codec", "vorbis", "--shard-clips", "4") == 0
    store = PackedAudio(out, [corpus])
    assert not store.lossless and store.codecs == [{"codec": "vorbis", "quality": 4.0}]
    data = load_datafile(corpus)
    for clip_id, path in zip(data.ids, data.paths, strict=True):
        packed, rate = store.read(clip_id)
        wav, wav_rate = read_audio(path)
        assert rate == wav_rate and packed.shape == wav.shape and np.isfinite(packed).all()
        error = np.sqrt(np.mean((packed - wav) ** 2)) / np.sqrt(np.mean(wav**2))
        assert error < 0.3, f"{clip_id}: relative error {error:.3f}"  # the clip itself, not another
    vorbis_bytes = json.loads((out / "index.json").read_text())["bytes"]
    flac_bytes = json.loads((flac_store / "index.json").read_text())["bytes"]
    assert vorbis_bytes < 0.5 * flac_bytes


def test_packing_twice_gives_identical_files_for_both_codecs(corpus, tmp_path):
    for codec in ("flac", "vorbis"):
        first, second = tmp_path / f"{codec}1", tmp_path / f"{codec}2"
        for out in (first, second):
            assert pack(corpus, out, "--codec", codec, "--shard-clips", "4") == 0
        names = sorted(p.name for p in first.iterdir())
        assert names == sorted(p.name for p in second.iterdir())
        for name in names:
            assert (first / name).read_bytes() == (second / name).read_bytes(), f"{codec}: {name} differs"


def test_ogg_serial_normalisation_keeps_the_stream_decodable(tmp_path):
    wave = signal_for(3, RATE, 1.0, 1).astype(np.float32)
    raw_path, fixed_path = tmp_path / "raw.ogg", tmp_path / "fixed.ogg"
    sf.write(raw_path, wave, RATE, format="OGG", subtype="VORBIS")
    raw = raw_path.read_bytes()
    fixed = normalise_ogg_serial(raw)
    assert fixed != raw and len(fixed) == len(raw) and fixed[14:18] == (0x66617431).to_bytes(4, "little")
    fixed_path.write_bytes(fixed)
    decoded, rate = sf.read(fixed_path, dtype="float32")  # libogg checks every page's CRC
    assert rate == RATE and decoded.shape == wave.shape
    np.testing.assert_array_equal(decoded, sf.read(raw_path, dtype="float32")[0])
    assert normalise_ogg_serial(fixed) == fixed


def test_a_rerun_keeps_finished_shards_and_rewrites_nothing(corpus, flac_store, capsys):
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in flac_store.iterdir()}
    assert pack(corpus, flac_store, "--shard-clips", "4") == 0
    assert "2 kept, 0 written" in capsys.readouterr().out
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in flac_store.iterdir()}
    assert after == before


def test_params_yaml_spelling_of_the_options_packs_the_same_store(corpus, flac_store, tmp_path):
    out = tmp_path / "dvc"  # dvc.yaml passes the params.yaml `pack:` section as --snake_case options
    assert main(["pack", "--datafile", str(corpus), "--out_dir", str(out), "--shard_clips", "4", "--workers", "1",
                 "--flac_level", "8", "--no-overwrite"]) == 0
    for path in shard_files(flac_store):
        assert (out / path.name).read_bytes() == path.read_bytes()


# -- crash safety and failures -------------------------------------------------------------

def run_pack_process(datafile: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "pack", "--datafile", str(datafile),
                             "--out-dir", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(FileNotFoundError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                queue += children
    return found


@pytest.mark.parametrize("workers", ["1", "2"])
def test_kill_9_mid_run_then_rerun_gives_the_files_of_an_uninterrupted_run(tmp_path, workers):
    datafile = write_corpus(tmp_path / "src", simple_sources(40), seconds=3.0)
    args = ("--shard-clips", "4", "--workers", workers, "--batch-size", "2")
    killed = tmp_path / "killed"
    process = run_pack_process(datafile, killed, *args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not shard_files(killed):
        time.sleep(0.002)  # until the first of 10 shards carries its final name
    assert process.poll() is None, "the run ended before it could be killed"
    helpers = descendants(process.pid)
    assert len(helpers) == (0 if workers == "1" else 4)  # fork server, resource tracker, two workers
    try:
        os.kill(process.pid, signal.SIGKILL)  # the run alone: its workers must notice and end
        process.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in helpers):
            time.sleep(0.05)
        assert not [pid for pid in helpers if Path(f"/proc/{pid}").exists()], "processes outlived the run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    survivors = shard_files(killed)
    assert 1 <= len(survivors) < 10
    for path in survivors:  # a shard with its final name is whole; anything else is a temporary file
        with h5(path) as shard:
            assert shard.attrs["complete"] and len(shard["ids"]) == 4
    with pytest.raises(FatError, match="incomplete"):
        PackedAudio(killed)
    assert main(["pack", "--datafile", str(datafile), "--out-dir", str(killed), *args]) == 0
    whole = tmp_path / "whole"
    assert main(["pack", "--datafile", str(datafile), "--out-dir", str(whole), *args]) == 0
    names = sorted(p.name for p in whole.iterdir())
    assert sorted(p.name for p in killed.iterdir()) == names and len(names) == 11  # no temporary file left
    for name in names:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    for path in survivors:
        assert path.stat().st_ino == (killed / path.name).stat().st_ino  # kept, not rewritten


def test_a_clip_that_fails_ends_the_run_quickly_naming_it(tmp_path):
    datafile = write_corpus(tmp_path / "src", simple_sources(12), seconds=1.0)
    broken = tmp_path / "src" / "audio" / "c006.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    out = tmp_path / "out"
    started = time.monotonic()
    process = run_pack_process(datafile, out, "--shard-clips", "2", "--workers", "2", "--batch-size", "1")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    assert time.monotonic() - started < 30
    assert "c006" in err and str(broken) in err and "Traceback" not in err
    assert [p.name for p in shard_files(out)] == [f"shard-0000{i}-of-00006.h5" for i in range(3)]  # those before it
    assert not [p for p in out.iterdir() if ".fat-tmp-" in p.name]
    with pytest.raises(FatError, match="incomplete"):
        PackedAudio(out)


def test_flac_refuses_a_float_source_and_vorbis_packs_it(tmp_path, capsys):
    datafile = write_corpus(tmp_path, [("floaty", "floaty.wav", RATE, "FLOAT", 1)])
    assert pack(datafile, tmp_path / "flac") == 2
    err = capsys.readouterr().err
    assert "floaty" in err and "FLOAT" in err and "--codec vorbis" in err
    assert pack(datafile, tmp_path / "vorbis", "--codec", "vorbis") == 0
    packed, _ = PackedAudio(tmp_path / "vorbis").read("floaty")
    assert packed.shape == read_audio(tmp_path / "audio" / "floaty.wav")[0].shape


def test_a_folder_holding_another_pack_is_refused_unless_overwrite(corpus, tmp_path, capsys):
    out = tmp_path / "store"
    assert pack(corpus, out, "--shard-clips", "2") == 0
    assert pack(corpus, out, "--shard-clips", "4") == 2
    err = capsys.readouterr().err
    assert "another datafile or with other settings" in err and "--shard-clips 2 in the store, 4 asked" in err
    assert pack(corpus, out, "--shard-clips", "2", "--codec", "vorbis") == 2
    assert "--codec/--flac-level/--vorbis-quality flac level 8 in the store, vorbis quality 4.0 asked" in \
        capsys.readouterr().err
    assert len(shard_files(out)) == 3  # untouched
    assert pack(corpus, out, "--shard-clips", "4", "--overwrite") == 0
    assert [p.name for p in shard_files(out)] == ["shard-00000-of-00002.h5", "shard-00001-of-00002.h5"]
    assert len(PackedAudio(out, [corpus])) == len(SOURCES)


def test_a_second_run_on_the_same_folder_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "store"
    out.mkdir()
    handle = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as a running `fat pack` holds it
        assert pack(corpus, out) == 2
        assert "another `fat pack`" in capsys.readouterr().err
    finally:
        os.close(handle)
    assert pack(corpus, out) == 0


# -- bad stores give errors naming shard and clip ------------------------------------------

@pytest.fixture()
def store_copy(flac_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in flac_store.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


def clip_file_offset(shard: Path, clip_id: str) -> tuple[int, int]:
    """Where a clip's encoded bytes lie in the shard file: (file offset, length)."""
    with h5(shard) as handle:
        row = list(handle["ids"].asstr()[()]).index(clip_id)
        start, stop = (int(v) for v in handle["offsets"][row:row + 2])
        return handle["audio"].id.get_offset() + start, stop - start  # one contiguous extent


def reseal(store: Path, shard: Path) -> None:
    """Record a shard's current seal in index.json, as if `fat pack` had written the edited file (the edits
    below test the checks behind the seal)."""
    index = json.loads((store / "index.json").read_text())
    for entry in index["shards"]:
        if entry["file"] == shard.name:
            entry["seal"] = seal_of(shard).as_dict()
    (store / "index.json").write_text(json.dumps(index))


def unseal(store: Path) -> None:
    """index.json as a store packed before seals has it."""
    index = json.loads((store / "index.json").read_text())
    for entry in index["shards"]:
        del entry["seal"]
    (store / "index.json").write_text(json.dumps(index))


def test_corrupt_bytes_of_one_clip_are_an_error_naming_shard_and_clip(store_copy, corpus):
    shard = store_copy / "shard-00000-of-00002.h5"
    offset, length = clip_file_offset(shard, "abcdefghijk")
    with open(shard, "r+b") as handle:
        handle.seek(offset + length // 2)
        original = handle.read(8)
        handle.seek(offset + length // 2)
        handle.write(bytes(b ^ 0x5A for b in original))
    store = PackedAudio(store_copy, [corpus])
    with pytest.raises(FatError, match=r"shard-00000-of-00002\.h5: clip abcdefghijk: its bytes fail their CRC32"):
        store.read("abcdefghijk")
    intact = read_audio(corpus.parent / "audio" / "-0Qx2kCxA7s.wav")[0]
    np.testing.assert_array_equal(store.read("-0Qx2kCxA7s")[0], intact)  # the other clips still read
    assert pack(corpus, store_copy, "--shard-clips", "4", "--verify-existing") == 0  # rewritten
    np.testing.assert_array_equal(PackedAudio(store_copy).read("abcdefghijk")[0],
                                  read_audio(corpus.parent / "audio" / "abcdefghijk.wav")[0])


def test_bytes_that_pass_the_checksum_but_do_not_decode_are_an_error(store_copy):
    shard = store_copy / "shard-00001-of-00002.h5"
    with h5(shard, "r+") as handle:
        row = list(handle["ids"].asstr()[()]).index("eight_bit")
        start, stop = (int(v) for v in handle["offsets"][row:row + 2])
        junk = np.frombuffer(b"fLaC" + bytes(range(256)) * ((stop - start) // 256 + 1), np.uint8)[:stop - start]
        handle["audio"][start:stop] = junk
        handle["crc32"][row] = zlib.crc32(junk.tobytes())
    reseal(store_copy, shard)
    with pytest.raises(FatError, match=r"shard-00001-of-00002\.h5: clip eight_bit: its flac bytes do not decode"):
        PackedAudio(store_copy).read("eight_bit")


def test_a_truncated_shard_is_an_error_naming_it(store_copy):
    shard = store_copy / "shard-00001-of-00002.h5"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    with pytest.raises(FatError, match=rf"shard-00001-of-00002\.h5: the shard is damaged \({size // 2} bytes, "
                                       rf"{size} when it was written"):
        PackedAudio(store_copy)
    unseal(store_copy)  # a store packed before seals: HDF5 finds it out
    with pytest.raises(FatError, match=r"shard-00001-of-00002\.h5: not a readable packed audio shard"):
        PackedAudio(store_copy)


def test_a_missing_shard_or_a_damaged_index_is_an_error_naming_it(store_copy):
    index = json.loads((store_copy / "index.json").read_text())
    (store_copy / "shard-00001-of-00002.h5").unlink()
    with pytest.raises(FatError, match=r"shard-00001-of-00002\.h5: a shard listed in index\.json is missing"):
        PackedAudio(store_copy)
    index["shards"][0]["file"] = "../elsewhere.h5"
    (store_copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(FatError, match=r"index\.json: the shard list is damaged"):
        PackedAudio(store_copy)
    (store_copy / "index.json").write_text('{"format": "fat-packed/1", "complete": tru')
    with pytest.raises(FatError, match=r"index\.json: not a readable index"):
        PackedAudio(store_copy)
    (store_copy / "index.json").unlink()
    with pytest.raises(FatError, match=r"copy: no index\.json: not a packed audio store"):
        PackedAudio(store_copy)


def test_a_missing_id_is_an_error_naming_it(flac_store, corpus):
    store = PackedAudio(flac_store)
    with pytest.raises(FatError, match=r"clip 'no-such-clip' is in none of the packed stores"):
        store.read("no-such-clip")
    assert store.missing(["abcdefghijk", "no-such-clip"]) == ["no-such-clip"]


def test_a_shard_or_store_of_another_datafile_is_refused(store_copy, corpus, tmp_path):
    other = write_corpus(tmp_path / "other", simple_sources(8, prefix="o"), name="other")
    other_store = tmp_path / "other-store"
    assert pack(other, other_store, "--shard-clips", "4") == 0
    with pytest.raises(FatError, match=r"packed from another datafile .*repack it"):
        PackedAudio(other_store, [corpus])
    (store_copy / "shard-00001-of-00002.h5").write_bytes((other_store / "shard-00001-of-00002.h5").read_bytes())
    with pytest.raises(FatError, match=r"shard-00001-of-00002\.h5: the shard is damaged \(.*replaced"):
        PackedAudio(store_copy)  # its seal differs first
    reseal(store_copy, store_copy / "shard-00001-of-00002.h5")
    with pytest.raises(FatError, match=r"shard-00001-of-00002\.h5: the shard belongs to another pack"):
        PackedAudio(store_copy)


def test_a_codec_the_reader_does_not_know_is_an_error_naming_the_shard(store_copy):
    with h5(store_copy / "shard-00000-of-00002.h5", "r+") as handle:
        handle.attrs["codec"] = "opus"
    reseal(store_copy, store_copy / "shard-00000-of-00002.h5")
    with pytest.raises(FatError, match=r"shard-00000-of-00002\.h5: clips are encoded as 'opus'.*cannot decode"):
        PackedAudio(store_copy)


def test_one_id_in_two_stores_is_refused(flac_store, store_copy):
    with pytest.raises(FatError, match=r"is in both .*store/shard-.* and .*copy/shard-"):
        PackedAudio([flac_store, store_copy])


# -- a shard's exact size and its seal -------------------------------------------------------

def test_a_shard_holds_exactly_its_clips_encoded_bytes_in_one_extent(flac_store, corpus):
    data = load_datafile(corpus)
    encoded = {clip_id: len(encode_clip(clip_id, str(path), CodecSettings()).data)
               for clip_id, path in zip(data.ids, data.paths, strict=True)}
    index = json.loads((flac_store / "index.json").read_text())
    for entry, path in zip(index["shards"], shard_files(flac_store), strict=True):
        with h5(path) as shard:
            clips = sum(encoded[i] for i in shard["ids"].asstr()[()])
            blob = shard["audio"]
            assert blob.chunks is None and blob.shape == (clips,) and blob.id.get_storage_size() == clips
            assert entry["seal"] == {"file_bytes": path.stat().st_size, "audio_offset": blob.id.get_offset(),
                                     "audio_bytes": clips, "metadata_sha256": entry["seal"]["metadata_sha256"]}
        assert path.stat().st_size - clips < 16 << 10  # HDF5's structure and the per-clip columns: no padding


def flip(path: Path, offsets: list[int]) -> None:
    with open(path, "r+b") as handle:
        for offset in offsets:
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_damaged_hdf5_structure_is_an_error_naming_the_shard_and_nothing_is_deleted(store_copy, flac_store,
                                                                                        corpus, capsys):
    shard = store_copy / "shard-00000-of-00002.h5"
    seal = json.loads((store_copy / "index.json").read_text())["shards"][0]["seal"]
    after_audio = seal["audio_offset"] + seal["audio_bytes"]
    flip(shard, [seal["audio_offset"] // 2, seal["audio_offset"] - 7, (after_audio + seal["file_bytes"]) // 2])
    before = {p.name: p.read_bytes() for p in store_copy.iterdir()}
    with pytest.raises(FatError, match=r"shard-00000-of-00002\.h5: the shard is damaged \(the sha256 of its HDF5 "
                                       r"structure is .*nothing was read from it"):
        PackedAudio(store_copy)
    for extra in ((), ("--verify-existing",)):
        assert pack(corpus, store_copy, "--shard-clips", "4", *extra) == 2
        err = capsys.readouterr().err
        assert "shard-00000-of-00002.h5: the shard is damaged" in err and "--overwrite" in err, err
        assert {p.name: p.read_bytes() for p in store_copy.iterdir()} == before  # nothing deleted or rewritten
    assert pack(corpus, store_copy, "--shard-clips", "4", "--overwrite") == 0
    assert shard.read_bytes() == (flac_store / shard.name).read_bytes()
    assert (store_copy / "index.json").read_bytes() == (flac_store / "index.json").read_bytes()


FLIP_CHILD = """
import json, shutil, sys
from pathlib import Path
from pipeline.core.errors import FatError
from pipeline.packed.reader import PackedAudio
from pipeline.packed.settings import PackSettings
from pipeline.packed.writer import run_pack

store, work, datafile = (Path(a) for a in sys.argv[1:4])
shard = sorted(store.glob("shard-*.h5"))[0].name
original = (store / shard).read_bytes()
unsealed = json.loads((store / "index.json").read_text())
for entry in unsealed["shards"]:
    del entry["seal"]
for flip in sys.argv[4:]:  # "sealed:<offset>" or "unsealed:<offset>"
    mode, offset = flip.split(":")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(store, work)
    if mode == "unsealed":  # as a store packed before seals
        (work / "index.json").write_text(json.dumps(unsealed))
    data = bytearray(original)
    data[int(offset)] ^= 0xFF
    (work / shard).write_bytes(bytes(data))
    outcome = {"flip": flip}

    def read():
        with PackedAudio(work) as packed:
            for clip_id in packed.ids:
                packed.read(clip_id)

    def rerun():
        run_pack(PackSettings(datafile=datafile, out_dir=work, shard_clips=3, workers=1, verify_existing=True))

    for name, step in (("reader", read), ("rerun", rerun)):
        try:
            step()
            outcome[name] = "ok"
        except FatError as exc:
            outcome[name] = "FatError: " + str(exc)
        except Exception as exc:
            outcome[name] = f"raw {type(exc).__name__}: {exc}"
    print(json.dumps(outcome), flush=True)
"""


def flip_outcomes(store: Path, work: Path, datafile: Path, flips: list[str],
                  quiet_seconds: float = 10.0) -> tuple[list[dict], list[str]]:
    """Each flip's outcome from a child process, and the flips where the child crashed or hung inside HDF5
    (then it is killed and a new child goes on after that flip)."""
    outcomes, died = [], []
    todo = list(flips)
    while todo:
        child = subprocess.Popen([sys.executable, "-c", FLIP_CHILD, str(store), str(work), str(datafile), *todo],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        done = 0
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=lambda out=child.stdout: [lines.put(line) for line in out] + [lines.put(None)],
                         daemon=True).start()
        deadline = 120.0  # the first line waits for the imports too
        while True:
            try:
                line = lines.get(timeout=deadline)
            except queue.Empty:
                child.kill()
                break
            if line is None:
                break
            outcomes.append(json.loads(line))
            done += 1
            deadline = quiet_seconds
        if child.wait() == 0 and done == len(todo):
            break
        died.append(todo[done])
        todo = todo[done + 1:]
    return outcomes, died


def test_no_byte_flip_in_a_shards_structure_escapes_as_a_raw_error(tmp_path):
    datafile = write_corpus(tmp_path / "src", simple_sources(3), seconds=0.3)
    store = tmp_path / "store"
    assert pack(datafile, store, "--shard-clips", "3") == 0
    seal = json.loads((store / "index.json").read_text())["shards"][0]["seal"]
    after_audio = seal["audio_offset"] + seal["audio_bytes"]
    structure = [*range(seal["audio_offset"]), *range(after_audio, seal["file_bytes"])]
    offsets = np.random.default_rng(23).choice(structure, 80, replace=False).tolist()
    flips = [f"sealed:{o}" for o in offsets[:40]] + [f"unsealed:{o}" for o in offsets[40:]]
    outcomes, died = flip_outcomes(store, tmp_path / "work", datafile, flips)
    sealed = [o for o in outcomes if o["flip"].startswith("sealed")]
    # Sealed: every flip is found before HDF5 parses the file, by the reader and by a rerun.
    assert len(sealed) == 40 and not [f for f in died if f.startswith("sealed")]
    assert all(o[step].startswith("FatError: ") and "shard-00000-of-00001.h5: the shard is damaged" in o[step]
               for o in sealed for step in ("reader", "rerun")), [o for o in sealed if "damaged" not in o["reader"]]
    # Unsealed (packed before seals): HDF5 parses the damage; what it raises must still come out as a FatError
    # (a crash or hang inside HDF5 is what only the seal prevents).
    unsealed = [o for o in outcomes if o["flip"].startswith("unsealed")]
    assert len(unsealed) + len(died) == 40
    assert not [o for o in unsealed for step in ("reader", "rerun") if o[step].startswith("raw")]
    assert sum(o["reader"].startswith("FatError") for o in unsealed) >= 5  # the flips did hit what HDF5 reads


def write_chunked_like_before_seals(shard: Path) -> None:
    """Rewrite a shard as `fat pack` wrote it before seals: the audio in 1 MiB chunks, padded."""
    with h5(shard) as old:
        columns = {name: old[name][()] for name in old if name != "audio"}
        audio, attrs = old["audio"][()], dict(old.attrs)
    with h5(shard, "w") as new:
        new.create_dataset("ids", data=columns.pop("ids"), dtype=h5py.string_dtype("utf-8"))
        blob = new.create_dataset("audio", shape=audio.shape, maxshape=(None,), dtype=np.uint8, chunks=(1 << 20,))
        blob[:] = audio
        for name, values in columns.items():
            new.create_dataset(name, data=values)
        new.attrs.update(attrs)


def test_a_store_packed_before_seals_reads_with_one_warning_and_a_rerun_keeps_it(store_copy, corpus, caplog,
                                                                                  capsys):
    for shard in shard_files(store_copy):
        write_chunked_like_before_seals(shard)
    unseal(store_copy)
    before = {p.name: p.read_bytes() for p in store_copy.iterdir()}
    data = load_datafile(corpus)
    with caplog.at_level("WARNING"):
        store = PackedAudio(store_copy, [corpus])
        for clip_id, path in zip(data.ids, data.paths, strict=True):
            np.testing.assert_array_equal(store.read(clip_id)[0], read_audio(path)[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "2 shards were packed without a seal" in warnings[0], warnings
    assert pack(corpus, store_copy, "--shard-clips", "4", "--verify-existing") == 0
    assert "2 kept, 0 written" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in store_copy.iterdir()} == before


# -- readers in other processes, and the one interface stages use --------------------------

class RandomIds(torch.utils.data.Dataset):
    def __init__(self, store: PackedAudio, ids: list[str]) -> None:
        self.store, self.ids = store, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int]:
        wave, _ = self.store.read(self.ids[i])
        return os.getpid(), torch.from_numpy(fit_length(wave, 40000)), i


def test_dataloader_workers_each_read_through_their_own_handle(flac_store, corpus):
    store = PackedAudio(flac_store, [corpus])
    store.read("abcdefghijk")  # the parent holds an open handle when the workers fork
    ids = list(np.random.default_rng(0).choice(store.ids, size=24))
    loader = torch.utils.data.DataLoader(RandomIds(store, ids), batch_size=3, num_workers=2,
                                         multiprocessing_context="fork")
    path_of = dict(zip(load_datafile(corpus).ids, load_datafile(corpus).paths, strict=True))
    pids = set()
    for batch_pids, waves, rows in loader:
        pids.update(batch_pids.tolist())
        for wave, row in zip(waves, rows.tolist(), strict=True):
            np.testing.assert_array_equal(wave.numpy(), fit_length(read_audio(path_of[ids[row]])[0], 40000))
    assert len(pids) == 2 and os.getpid() not in pids


def read_in_child(store: PackedAudio, clip_id: str) -> np.ndarray:
    return store.read(clip_id)[0]


def test_a_spawned_process_gets_the_reader_by_pickle(flac_store):
    store = PackedAudio(flac_store)
    store.read("stereo_44k")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(read_in_child, (store, "stereo_44k"))
    np.testing.assert_array_equal(child, store.read("stereo_44k")[0])


def test_clip_audio_reads_the_same_samples_from_files_and_from_the_pack(corpus, flac_store, tmp_path):
    data = load_datafile(corpus)
    files = open_clip_audio(data)
    packed = open_clip_audio(data, [flac_store], datafiles=[corpus])
    assert files.exact and packed.exact and files.describe() == {"audio": "files"}
    assert packed.describe()["codecs"] == [{"codec": "flac", "level": 8}]
    for i in range(len(data)):
        for rate in (None, 32000):
            a, b = files.read(i, rate), packed.read(i, rate)
            assert a[1] == b[1]
            np.testing.assert_array_equal(a[0], b[0])
    packed.require_all()
    extra = write_corpus(tmp_path, SOURCES + simple_sources(1, prefix="new"), name="more")
    more = load_datafile(extra)
    with pytest.raises(FatError, match=r"the audio of 1 of 7 clips is missing:\n  new000: not in"):
        open_clip_audio(more, flac_store).require_all()
    (tmp_path / "audio" / "new000.wav").unlink()
    with pytest.raises(FatError, match=r"the audio of 1 of 7 clips is missing:\n  new000: .*new000\.wav"):
        open_clip_audio(more).require_all()


def test_teacher_logits_from_a_flac_pack_equal_those_from_the_wav_files(corpus, flac_store):
    from teacher import load_teacher

    teacher = load_teacher("mn01_as", random_init=True, num_classes=5, seed=1)
    data = load_datafile(corpus)
    files, packed = open_clip_audio(data), open_clip_audio(data, flac_store, [corpus])

    def batch(audio) -> torch.Tensor:
        return torch.from_numpy(np.stack([fit_length(audio.read(i, 32000)[0], 32000) for i in range(len(data))]))

    with torch.no_grad():
        from_files, from_pack = teacher(batch(files)), teacher(batch(packed))
    assert torch.equal(from_files, from_pack) and from_files.std() > 0
