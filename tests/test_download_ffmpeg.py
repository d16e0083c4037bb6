"""Which ffmpeg `fat download` runs, and that its outcomes do not depend on that ffmpeg's version.

The failure routes whose classification once hung on one version's wording (a zero-byte body, an
HTML page behind a media URL, an HTTP error on the media read) and the window cut itself are run
with imageio-ffmpeg's build and, where the machine has one, with the system's ffmpeg (Debian 12
ships 5.1): a machine with another ffmpeg keeps being checked. So are windows on the player's
timeline in every container the demo serves (an MP3's first sample is 25 ms into its clock), at
its start, ending at its end and reaching past it, and that both builds cut the same samples.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf

from pipeline.cli import main
from pipeline.core.errors import FatError
from pipeline.core.ffmpeg import bundled_ffmpeg, ensure_ffmpeg_on_path, ffmpeg_binary, ffmpeg_description
from tests import media_server as ms
from tests.test_download import RATE, assert_window, decode_reference, download_args, status_rows, write_split


def system_ffmpeg() -> str | None:
    """The first `ffmpeg` on PATH that is not imageio-ffmpeg's build (fat's own links resolve to theirs)."""
    bundled = Path(bundled_ffmpeg()).resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder or ".") / "ffmpeg"
        if candidate.is_file() and os.access(candidate, os.X_OK) and candidate.resolve() != bundled:
            return str(candidate.resolve())
    return None


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH restored afterwards (ensure_ffmpeg_on_path edits it), links in a private cache, no FAT_FFMPEG."""
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    monkeypatch.setenv("FAT_CACHE", str(tmp_path / "cache"))
    # setenv first so that monkeypatch records FAT_FFMPEG's state and restores it: the tests set
    # it through os.environ, which would otherwise leak into every later test.
    monkeypatch.setenv("FAT_FFMPEG", "")
    monkeypatch.delenv("FAT_FFMPEG")


def software_tag(binary: str, folder: Path) -> str:
    """The encoder tag (libavformat version) `binary` writes into a WAV, e.g. 'Lavf59.27.100'."""
    wav = folder / "tag.wav"
    subprocess.run([binary, "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=d=0.1",
                    "-map_metadata", "-1", "-c:a", "pcm_s16le", str(wav)], check=True, capture_output=True)
    with sf.SoundFile(str(wav)) as handle:
        return handle.software


# ---------------------------------------------------------------------- choosing the binary


def test_default_is_imageio_ffmpegs_build_even_with_another_ffmpeg_first_on_path(tmp_path: Path, clean_env) -> None:
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "ffmpeg").symlink_to(shutil.which("echo"))  # some other program called ffmpeg, first on PATH
    os.environ["PATH"] = f"{other}{os.pathsep}{os.environ['PATH']}"
    assert ffmpeg_binary() == bundled_ffmpeg()
    assert Path(bundled_ffmpeg()).is_relative_to(Path(imageio_ffmpeg.__file__).parent)

    binary = ensure_ffmpeg_on_path()
    assert binary == bundled_ffmpeg()
    assert Path(shutil.which("ffmpeg")).resolve() == Path(binary).resolve()
    # What yt-dlp (and any child) gets when it runs `ffmpeg` is the chosen build, not the other one.
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout
    assert ffmpeg_description().endswith(f"({version.splitlines()[0]})")
    path_once = os.environ["PATH"]
    ensure_ffmpeg_on_path()  # every worker calls it again: PATH does not grow
    assert os.environ["PATH"] == path_once


def test_fat_ffmpeg_takes_a_path_or_a_command_name(tmp_path: Path, clean_env) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "my-ffmpeg").symlink_to(bundled_ffmpeg())
    os.environ["PATH"] = f"{tools}{os.pathsep}{os.environ['PATH']}"
    os.environ["FAT_FFMPEG"] = str(tools / "my-ffmpeg")
    assert ffmpeg_binary() == str(tools / "my-ffmpeg")
    os.environ["FAT_FFMPEG"] = "my-ffmpeg"
    assert ffmpeg_binary() == str(tools / "my-ffmpeg")
    assert ensure_ffmpeg_on_path() == str(tools / "my-ffmpeg")
    assert Path(shutil.which("ffmpeg")).resolve() == Path(bundled_ffmpeg()).resolve()


def test_a_command_name_is_not_answered_by_fats_own_link(tmp_path: Path, clean_env) -> None:
    """After a link to the default build went first on PATH, FAT_FFMPEG=ffmpeg still means the system's."""
    system = tmp_path / "system-bin"
    system.mkdir()
    (system / "ffmpeg").symlink_to(shutil.which("echo"))  # stands for the system's: not a working ffmpeg
    os.environ["PATH"] = str(system)
    ensure_ffmpeg_on_path()
    link_folder = os.environ["PATH"].split(os.pathsep)[0]
    assert os.environ["PATH"] == f"{link_folder}{os.pathsep}{system}"  # the link to imageio-ffmpeg's build first
    os.environ["FAT_FFMPEG"] = "ffmpeg"
    expected = f"FAT_FFMPEG=ffmpeg ({system / 'ffmpeg'}) is not a working ffmpeg"
    with pytest.raises(FatError, match=re.escape(expected)):
        ffmpeg_binary()


@pytest.mark.parametrize(("value", "message"), [
    ("/nonexistent/ffmpeg", "FAT_FFMPEG=/nonexistent/ffmpeg: no such file"),
    ("fat-no-such-program", "FAT_FFMPEG=fat-no-such-program: no program of that name on PATH"),
    ("{plain}", "FAT_FFMPEG={plain}: not executable"),
    ("{echo}", "FAT_FFMPEG={echo} ({echo}) is not a working ffmpeg"),
])
def test_an_unusable_fat_ffmpeg_is_a_clear_error(tmp_path: Path, clean_env, value: str, message: str) -> None:
    plain = tmp_path / "ffmpeg"
    plain.write_text("not a program\n")
    names = {"plain": str(plain), "echo": shutil.which("echo")}
    os.environ["FAT_FFMPEG"] = value.format(**names)
    with pytest.raises(FatError, match=re.escape(message.format(**names))):
        ffmpeg_binary()


def test_fat_download_refuses_an_unusable_fat_ffmpeg_before_any_request(
        tmp_path: Path, clean_env, capsys: pytest.CaptureFixture) -> None:
    os.environ["FAT_FFMPEG"] = str(tmp_path / "missing" / "ffmpeg")
    write_split(tmp_path, "eval", [("abcdefghijk", 0, 10)])
    with ms.MediaServer() as server:
        assert main(download_args(tmp_path, server.clip_template)) == 2
        assert server.log == []
    assert f"FAT_FFMPEG={tmp_path / 'missing' / 'ffmpeg'}: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------- the same outcomes with either build


def required_system_ffmpeg() -> str:
    """The system's ffmpeg, or skip: the second build is checked wherever a machine has one (Debian
    12's 5.1 was); imageio-ffmpeg's build alone is covered by the other cases, which always run."""
    binary = system_ffmpeg()
    if binary is None:
        pytest.skip("no system ffmpeg on PATH besides imageio-ffmpeg's build: only that build is checked here")
    return binary


def choose_ffmpeg(which: str) -> None:
    """Run fat with the named build: the default (imageio-ffmpeg's) or the system's via FAT_FFMPEG."""
    if which == "system":
        os.environ["FAT_FFMPEG"] = required_system_ffmpeg()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    return {"webm": ms.make_media(folder / "src16.webm", 16.0), "m4a": ms.make_media(folder / "src16.m4a", 16.0),
            "short": ms.make_media(folder / "src12.webm", 12.0)}


@pytest.mark.parametrize("which", ["imageio-ffmpeg", "system"])
def test_routes_are_classified_alike_with_either_ffmpeg(
        tmp_path: Path, clean_env, sources: dict[str, Path], which: str) -> None:
    choose_ffmpeg(which)
    binary = ffmpeg_binary()
    routes = {
        "webmclip001": (sources["webm"], ms.SERVE, 5, 15), "m4aclip0001": (sources["m4a"], ms.SERVE, 3.25, 13.25),
        "endofvideo1": (sources["short"], ms.SERVE, 8, 18), "zerobytes01": (sources["webm"], ms.EMPTY, 5, 15),
        "htmlmedia01": (sources["webm"], ms.HTML_AS_MEDIA, 5, 15), "truncated01": (sources["webm"], ms.TRUNCATED, 5, 15),
        "expired0001": (sources["webm"], ms.EXPIRES, 5, 15),
    }
    with ms.MediaServer() as server:
        for ytid, (source, behaviour, _, _) in routes.items():
            server.add(ytid, source, behaviour)
        write_split(tmp_path, "eval", [(ytid, start, end) for ytid, (_, _, start, end) in routes.items()])
        assert main(download_args(tmp_path, server.clip_template, "--workers", "3", "--clip-timeout", "30")) == 0
        requests = {ytid: server.requests_for(ytid) for ytid in routes}

    rows = status_rows(tmp_path)
    assert {ytid: (row["status"], row["reason"]) for ytid, row in rows.items()} == {
        "webmclip001": ("ok", "section"), "m4aclip0001": ("ok", "section"), "endofvideo1": ("ok", "section"),
        "zerobytes01": ("failed", "empty"), "htmlmedia01": ("failed", "not-media"),
        "truncated01": ("failed", "truncated"), "expired0001": ("failed", "http-403"),
    }
    # ffmpeg read nothing from these; the whole-file fetch that followed told what they were.
    assert requests["zerobytes01"] >= 3 and requests["htmlmedia01"] >= 3 and requests["expired0001"] >= 3
    assert "HTTP Error 403" in rows["expired0001"]["message"]  # the status came from yt-dlp's HTTP error
    audio = tmp_path / "audio" / "eval"
    assert_window(audio / "webmclip001.wav", sources["webm"], 5, 10.0)
    assert_window(audio / "m4aclip0001.wav", sources["m4a"], 3.25, 10.0)
    assert_window(audio / "endofvideo1.wav", sources["short"], 8, 4.0)
    with sf.SoundFile(str(audio / "webmclip001.wav")) as handle:  # written by the chosen build
        assert handle.software == software_tag(binary, tmp_path)


# ---------------------------------------------------------------------- windows on the player's timeline

# (name, start, end) on a 12 s source: from its first presented sample, ending exactly at its end, and
# reaching past its end (the 4 s there are all there is, and the clip passes).
TIMELINE_WINDOWS = (("start", 0.0, 10.0), ("end", 2.0, 12.0), ("past", 8.0, 18.0))
WEBM_CLOCK = RATE // 1000  # webm stamps packets in whole ms: after a seek a cut is as exact as that clock
AAC_FRAME = 1024 * RATE // 44100  # ffmpeg 5.1 presents an m4a's end padding (under one AAC frame), 9.0 drops it


def length_allowance(kind: str, start: float, end: float) -> int:
    """Samples a clip may run over its window's length on the timeline (one for rounding, else why)."""
    if end <= 12.0:
        return 1
    return {"webm": WEBM_CLOCK, "m4a": AAC_FRAME}.get(kind, 1)  # the source ends inside: what precedes it


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 s in every container at the demo's 44.1 kHz (where 5.1 claims 12.04 s for the MP3: delay and padding)."""
    folder = tmp_path_factory.mktemp("containers")
    return {kind: ms.make_media(folder / f"src12.{kind}", 12.0, sample_rate=44100) for kind in ms.AUDIO_CONTAINERS}


def timeline_clips() -> dict[str, tuple[str, float, float]]:
    """Clip id -> (container, start, end) for every container and window."""
    return {f"{kind}{name}".ljust(11, "0"): (kind, start, end)
            for kind in ms.AUDIO_CONTAINERS for name, start, end in TIMELINE_WINDOWS}


def window_lag(wav: Path, reference: np.ndarray, start: float) -> int:
    """How many samples (at the WAV's rate) the clip sits after where `start` is in `reference`.

    The clip's second second is matched at every lag within ±40 ms, wide enough to see MP3's 25 ms of
    encoder delay; the tones repeat every 4.5 ms but the noise in the signal does not.
    """
    audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    offset = min(rate, audio.shape[0] - rate)
    piece = audio[offset:offset + rate, 0]
    first = int(round(start * rate)) + offset
    span = int(0.04 * rate)
    lags = [lag for lag in range(-span, span + 1) if 0 <= first + lag and first + lag + piece.size <= reference.size]
    errors = np.array([np.mean((reference[first + lag:first + lag + piece.size] - piece) ** 2) for lag in lags])
    best = int(np.argmin(errors))
    assert errors[best] < 1e-3 * float(np.mean(piece ** 2)) + 1e-6, f"{wav.name}: no lag within ±40 ms matches"
    return lags[best]


def cut_everywhere(root: Path, folder: Path, sources: dict[str, Path]) -> dict[str, dict]:
    """Every timeline clip through the loopback server (sections) and through file:// (whole files)."""
    clips = timeline_clips()
    for ytid, (kind, _, _) in clips.items():
        os.link(sources[kind], folder / ytid)  # no extension, as a video URL: ffmpeg reads the container
    rows = [(ytid, start, end) for ytid, (_, start, end) in clips.items()]
    with ms.MediaServer() as server:
        for ytid, (kind, _, _) in clips.items():
            server.add(ytid, sources[kind])
        write_split(root / "http", "eval", rows)
        assert main(download_args(root / "http", server.clip_template, "--workers", "4", "--clip-timeout", "60")) == 0
    write_split(root / "file", "eval", rows)
    assert main(download_args(root / "file", f"file://{folder}/{{id}}", "--workers", "4", "--clip-timeout", "60")) == 0
    return {"http": status_rows(root / "http"), "file": status_rows(root / "file")}


@pytest.mark.parametrize("which", ["imageio-ffmpeg", "system"])
def test_windows_are_cut_on_the_players_timeline_in_every_container(
        tmp_path: Path, clean_env, containers: dict[str, Path], which: str) -> None:
    """t = 0 is the first presented sample (25 ms into an MP3's clock); a window ending at the media's end is whole."""
    choose_ffmpeg(which)
    folder = tmp_path / "videos"
    folder.mkdir()
    rows = cut_everywhere(tmp_path, folder, containers)
    references = {kind: decode_reference(path) for kind, path in containers.items()}  # a player's samples
    for mode, reason in (("http", "section"), ("file", "whole")):
        for ytid, (kind, start, end) in timeline_clips().items():
            row = rows[mode][ytid]
            assert (row["status"], row["reason"]) == ("ok", reason), f"{mode} {ytid}: {row['message']}"
            wav = tmp_path / mode / "audio" / "eval" / f"{ytid}.wav"
            over = sf.info(str(wav)).frames - (min(end, 12.0) - start) * RATE
            assert -1 <= over <= length_allowance(kind, start, end), f"{mode} {ytid}: {over:+.0f} samples"
            lag = window_lag(wav, references[kind], start)
            assert abs(lag) <= (WEBM_CLOCK if kind == "webm" else 1), f"{mode} {ytid}: {lag / RATE * 1000:+.2f} ms"


def test_both_ffmpegs_cut_the_same_samples(tmp_path: Path, clean_env, containers: dict[str, Path]) -> None:
    """Within one sample, in every container: neither version's re-basing nor its packet times decide the cut."""
    system = required_system_ffmpeg()
    clips = timeline_clips()
    write_split(tmp_path / "bundled", "eval", [(ytid, start, end) for ytid, (_, start, end) in clips.items()])
    write_split(tmp_path / "system", "eval", [(ytid, start, end) for ytid, (_, start, end) in clips.items()])
    folder = tmp_path / "videos"
    folder.mkdir()
    for ytid, (kind, _, _) in clips.items():
        os.link(containers[kind], folder / ytid)
    template = f"file://{folder}/{{id}}"
    assert main(download_args(tmp_path / "bundled", template, "--workers", "4")) == 0
    os.environ["FAT_FFMPEG"] = system
    assert main(download_args(tmp_path / "system", template, "--workers", "4")) == 0
    for ytid, (kind, _, end) in clips.items():
        bundled, _ = sf.read(str(tmp_path / "bundled" / "audio" / "eval" / f"{ytid}.wav"), dtype="float32")
        system_wav = tmp_path / "system" / "audio" / "eval" / f"{ytid}.wav"
        over = sf.info(str(system_wav)).frames - bundled.size
        assert -1 <= over <= (AAC_FRAME if kind == "m4a" and end > 12.0 else 1), f"{ytid}: {over:+d} samples"
        assert abs(window_lag(system_wav, bundled, 0.0)) <= 1, ytid
