"""The shared building blocks every stage relies on: ids, atomic writes, ffmpeg, audio I/O, CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline import metrics
from pipeline.cli import build_parser, main
from pipeline.core import atomic, audio, ffmpeg, ids
from pipeline.core.errors import FatError


@pytest.mark.parametrize("good", ["--4gqARaEJE", "abcdefghijk", "A_b-C_d-E_f", "-0Qx2kCxA7s"])
def test_valid_ytids_accepted(good: str) -> None:
    assert ids.check_ytid(good) == good


@pytest.mark.parametrize("bad", ["", "short", "abcdefghijkl", "../../etc/pa", "abc def ghi", "abc;rm -rf/", "ab/cd/ef/gh"])
def test_invalid_ytids_rejected_with_the_id_named(bad: str) -> None:
    with pytest.raises(FatError, match="invalid YouTube id") as info:
        ids.check_ytid(bad, where="eval.csv:7")
    assert "eval.csv:7" in str(info.value)


@pytest.mark.parametrize("name", ["balanced_train", "eval", "speechcommands_train", "shard.1-of-2"])
def test_split_names_that_name_files_are_accepted(name: str) -> None:
    assert ids.check_split_name(name) == name


@pytest.mark.parametrize("name", ["", "../eval", "a/b", ".hidden", "-rf", "a\nb", "a b"])
def test_split_names_that_could_escape_or_confuse_are_refused(name: str) -> None:
    with pytest.raises(FatError, match="--split"):
        ids.check_split_name(name)


def test_label_lists_are_split_and_stripped_the_same_everywhere() -> None:
    assert ids.split_labels(" /m/a, /m/b ,") == ("/m/a", "/m/b") and ids.split_labels("") == ()
    import pandas as pd

    from pipeline.metadata import class_counts

    frame = pd.DataFrame({"positive_labels": ["/m/a,/m/b", "/m/a, /m/b"]})  # a hand-edited space
    assert class_counts(frame).to_dict() == {"/m/a": 2, "/m/b": 2}


def test_subprocess_path_never_starts_with_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ids.subprocess_path("-0Qx2kCxA7s.wav").startswith("/")


def test_atomic_write_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic.write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"], "no temporary file left behind"


def test_ffmpeg_is_found_and_put_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAT_CACHE", str(tmp_path / "cache"))
    binary = ffmpeg.ensure_ffmpeg_on_path()
    on_path = shutil.which("ffmpeg")
    assert on_path is not None and Path(on_path).resolve() == Path(binary).resolve()
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ffmpeg version")


def _sine(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_read_audio_wav_resamples_and_downmixes(tmp_path: Path) -> None:
    stereo = np.stack([_sine(44100, 1.0), _sine(44100, 1.0)], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100)
    wave, rate = audio.read_audio(path, sample_rate=32000)
    assert rate == 32000 and wave.ndim == 1
    assert abs(wave.shape[0] - 32000) <= 1
    assert 0.45 < np.abs(wave).max() < 0.55


def test_read_audio_decodes_compressed_formats_with_ffmpeg(tmp_path: Path) -> None:
    src = tmp_path / "src.wav"
    sf.write(src, _sine(48000, 1.0), 48000)
    m4a = tmp_path / "-leading-dash.m4a"
    subprocess.run([ffmpeg.ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(src), "-c:a", "aac", ids.subprocess_path(m4a)], check=True)
    wave, rate = audio.read_audio(m4a, sample_rate=16000)
    assert rate == 16000
    assert abs(wave.shape[0] / 16000 - 1.0) < 0.05


@pytest.mark.parametrize("layout", ["3.0", "4.1", "hexagonal"])
def test_multichannel_layouts_decode_to_the_right_length(tmp_path: Path, layout: str) -> None:
    """ffmpeg's output width must match the reshape: a wrong count would stretch or scramble the clip."""
    src = tmp_path / "src.wav"
    sf.write(src, _sine(48000, 1.0), 48000)
    coded = tmp_path / f"{layout}.m4a"
    subprocess.run([ffmpeg.ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-i", str(src), "-af",
                    f"aformat=channel_layouts={layout}", "-c:a", "aac", str(coded)], check=True)
    wave, rate = audio.read_audio(coded)
    assert rate == 48000 and abs(wave.shape[0] / 48000 - 1.0) < 0.05


def test_read_audio_names_the_file_that_is_not_audio(tmp_path: Path) -> None:
    page = tmp_path / "clip.wav"
    page.write_text("<html>Video unavailable</html>")
    with pytest.raises(FatError, match="clip.wav"):
        audio.read_audio(page)


def test_fit_length_pads_and_cuts() -> None:
    assert audio.fit_length(np.ones(5, np.float32), 8).tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert audio.fit_length(np.ones(9, np.float32), 4).shape == (4,)


def test_multilabel_metrics_perfect_and_chance() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((400, 5)) < 0.3).astype(int)
    perfect = metrics.multilabel_metrics(targets, targets + 0.01 * rng.random(targets.shape))
    assert perfect["mAP"] == pytest.approx(1.0) and perfect["mAUC"] == pytest.approx(1.0)
    chance = metrics.multilabel_metrics(targets, rng.random(targets.shape))
    assert 0.2 < chance["mAP"] < 0.45 and 0.4 < chance["mAUC"] < 0.6 and abs(chance["d_prime"]) < 0.5


def test_cli_lists_every_registered_stage(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import COMMANDS

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name.replace("_", "-") in out  # module finetune_teacher is the command finetune-teacher
    assert build_parser().prog == "fat"


def test_fat_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "fat" in result.stdout
