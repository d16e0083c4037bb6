"""`fat predict` on generated audio: windows, pooling, names, formats, the student plug-in, errors."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.cli import main
from pipeline.core.audio import read_audio
from pipeline.core.ffmpeg import ffmpeg_binary
from pipeline.predict import window_starts
from teacher import load_teacher

NAMES = [("/m/a", "Alpha sound"), ("/m/b", "Beta sound"), ("/m/c", "Gamma sound")]


@pytest.fixture()
def labels(tmp_path):
    path = tmp_path / "class_labels_indices.csv"
    path.write_text("index,mid,display_name\n" + "".join(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(NAMES)))
    return path


def tone_file(path, seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.4 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.3 * t)) / 2
    sf.write(path, np.stack([audio] * channels, axis=1) if channels > 1 else audio, rate)
    return path


def predict_json(capsys, *args) -> dict:
    assert main(["predict", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_window_starts_cover_the_file():
    assert window_starts(5, 10, 5) == [0]
    assert window_starts(10, 10, 5) == [0]
    assert window_starts(23, 10, 5) == [0, 5, 10, 13]
    assert window_starts(20, 10, 5) == [0, 5, 10]


def test_long_compressed_file_is_tagged_per_window_and_pooled(tmp_path, labels, capsys):
    wav = tone_file(tmp_path / "src.wav", 23.0, 44100, channels=2)
    ogg = tmp_path / "street.ogg"
    subprocess.run([ffmpeg_binary(), "-loglevel", "error", "-i", str(wav), "-c:a", "libvorbis", str(ogg)], check=True)
    result = predict_json(capsys, ogg, "--teacher", "mn01_as", "--random-init", "--labels", labels,
                          "--top-k", "3", "--hop", "5")
    assert result["model"]["random_init"] and result["labels"] == str(labels)
    (clip,) = result["files"]
    assert abs(clip["duration_s"] - 23.0) < 0.05
    assert [w["start_s"] for w in clip["windows"]][:3] == [0.0, 5.0, 10.0] and len(clip["windows"]) == 4
    assert clip["windows"][-1]["end_s"] == clip["duration_s"]  # the last window ends at the end
    pooled = {t["mid"]: t["probability"] for t in clip["pooled"]["top"]}
    per_window = [{t["mid"]: t["probability"] for t in w["top"]} for w in clip["windows"]]
    for mid, probability in pooled.items():  # k = all classes, so the max is over every window
        assert probability == max(w[mid] for w in per_window)
    assert {t["name"] for t in clip["pooled"]["top"]} == {n for _, n in NAMES}
    probs = [t["probability"] for t in clip["pooled"]["top"]]
    assert probs == sorted(probs, reverse=True)
    # the first window's probabilities are the teacher's own on the first 10 s at 32 kHz
    audio, _ = read_audio(ogg, sample_rate=32000)
    with torch.no_grad():
        logits = load_teacher("mn01_as", random_init=True, num_classes=3)(torch.from_numpy(audio[:320000])[None])[0]
    expected = torch.sigmoid(logits).numpy()
    for entry in clip["windows"][0]["top"]:
        assert abs(entry["probability"] - expected[entry["index"]]) < 1e-4


def test_short_file_is_one_padded_window_in_text_form(tmp_path, labels, capsys):
    short = tone_file(tmp_path / "short.wav", 2.0, 16000)
    assert main(["predict", str(short), "--teacher", "mn01_as", "--random-init", "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM-INIT" in out and "(2.0 s; 1 window)" in out
    listed = [line.split() for line in out.splitlines() if line.startswith("    0.")]
    assert len(listed) == 3 and [row[1] for row in listed] != []
    assert all(any(name in line for _, name in NAMES) for line in out.splitlines() if line.startswith("    0."))


def test_checkpoint_without_labels_shows_class_numbers(tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAT_CACHE", str(tmp_path / "cache"))
    source = load_teacher("mn01_as", random_init=True)
    torch.save(source.model.state_dict(), tmp_path / "mn01.pt")
    clip = tone_file(tmp_path / "a.flac", 1.0, 22050)
    result = predict_json(capsys, clip, "--teacher", "mn01_as", "--checkpoint", tmp_path / "mn01.pt", "--top-k", "2")
    assert not result["model"]["random_init"] and result["labels"] is None
    assert result["files"][0]["pooled"]["top"][0]["name"].startswith("class ")
    assert "pass --labels" in caplog.text


def test_a_trained_student_plugs_in(tmp_path, labels, capsys):
    from pipeline.checkpoint import save_student
    from student import create_ast

    model = create_ast(size="tiny224", num_classes=3, input_tdim=64, fstride=16, tstride=16)
    path = tmp_path / "student.pt"
    save_student(path, model, {"norm_mean": -4.27, "norm_std": 4.57, "multi_label": False, "target_frames": 64,
                               "num_mel_bins": 128})
    clip = tone_file(tmp_path / "a.wav", 1.5, 32000)
    result = predict_json(capsys, clip, "--model", f"student:{path}", "--labels", labels, "--top-k", "3")
    assert result["model"]["kind"] == "student" and result["window_s"] == 0.64
    windows = result["files"][0]["windows"]
    assert [w["start_s"] for w in windows] == [0.0, 0.32, 0.64, 0.86]
    assert abs(sum(t["probability"] for t in windows[0]["top"]) - 1.0) < 1e-4  # single-label: softmax


def test_bad_inputs_are_clear_errors(tmp_path, labels, capsys):
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3 not really an mp3")
    assert main(["predict", str(broken), "--teacher", "mn01_as", "--random-init", "--labels", str(labels)]) == 2
    assert "broken.mp3" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "absent.wav")]) == 2
    assert "absent.wav: no such audio file" in capsys.readouterr().err
    clip = tone_file(tmp_path / "a.wav", 1.0, 32000)
    assert main(["predict", str(clip), "--model", "resnet:x"]) == 2
    assert "teacher:NAME or student:PATH" in capsys.readouterr().err
    assert main(["predict", str(clip), "--teacher", "mn01_as", "--random-init", "--labels", str(labels),
                 "--window", "0"]) == 2
    assert "--window and --hop must be positive" in capsys.readouterr().err
