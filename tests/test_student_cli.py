"""The student's commands: `fat bench student`, `fat merges`, `fat stats`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.core.audio import write_wav
from student import create_ast
from student.benchmark import Setting, time_settings
from student.features import kaldi_fbank
from student.tome import tokens_per_layer


def tone(path: Path, freq: float, seconds: float = 1.5, rate: int = 32000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.3 * np.sin(2 * np.pi * freq * t) * (t < seconds / 2) + 0.2 * np.sin(2 * np.pi * 3 * freq * t) * (t > seconds / 3)
    write_wav(path, audio.astype(np.float32), rate)
    return path


def test_bench_student_times_every_r_and_the_plain_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    rc = main(["bench", "student", "--size", "tiny224", "--frames", "64", "--r", "0", "4", "3:-1",
               "--batch", "1", "--rounds", "1", "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| timm |" in printed and "| r=3:-1 |" in printed
    result = json.loads(out.read_text())
    assert [row["setting"] for row in result["rows"]] == ["timm", "r=0", "r=4", "r=3:-1"]
    tokens = {row["setting"]: row["tokens_out"] for row in result["rows"]}
    model = create_ast("tiny224", input_tdim=64)
    assert tokens == {"timm": 62, "r=0": 62, "r=4": tokens_per_layer(model, 4)[-1],
                      "r=3:-1": tokens_per_layer(model, (3, -1.0))[-1]}
    assert all(row["clips_per_s"] > 0 and row["gflops_per_clip"] > 0 for row in result["rows"])
    assert result["model"]["size"] == "tiny224"



def test_one_timer_rotates_the_settings_and_keeps_each_ones_median_round() -> None:
    """`time_settings` (used by fat bench student and fat evaluate): warm-up rounds are not timed,
    every round starts with another setting, each measurement is `steps` batches after the
    setting's own untimed preparation, and a setting's figure is the median of its rounds."""
    events: list[str] = []
    calls = dict.fromkeys("abc", 0)

    def step(name: str):
        def run() -> None:
            events.append(name)
            calls[name] += 1
            if name == "a" and calls[name] in (3, 4):  # the first timed round of "a" is slow
                time.sleep(0.05)

        return run

    settings = [Setting(name, step(name), lambda name=name: events.append(f"prepare {name}")) for name in "abc"]
    timings = time_settings(settings, "cpu", rounds=3, warmup=1, steps=2)
    rounds = [events[i:i + 9] for i in range(0, len(events), 9)]
    assert len(rounds) == 4 and [r[0] for r in rounds] == ["prepare a", "prepare b", "prepare c", "prepare a"]
    assert rounds[1] == ["prepare b", "b", "b", "prepare c", "c", "c", "prepare a", "a", "a"]
    assert set(timings) == {"a", "b", "c"} and all(count == 8 for count in calls.values())
    assert timings["a"].seconds < 0.05  # the slow round is not the median
    assert all(t.seconds >= 0 and t.cpu_seconds >= 0 for t in timings.values())


@pytest.mark.parametrize("argv,message", [
    (["--r", "x"], "cannot read r 'x'"),
    (["--r", "1,1,1,1,1,1,1,1,1,1,1,1,1"], "13 values but the model has 12 blocks"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    (["--batch", "0"], "--batch must be ≥ 1"),
    (["--size", "tiny224", "--frames", "8"], "smaller than one 16×16 patch"),
])
def test_bench_student_refuses_bad_settings(argv: list[str], message: str, capsys) -> None:
    rc = main(["bench", "student", "--size", "tiny224", "--frames", "64", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def _png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_merges_draws_a_png_for_a_clip(tmp_path: Path, capsys) -> None:
    audio = tone(tmp_path / "clip.wav", 440.0)
    out = tmp_path / "pictures" / "merges.png"
    rc = main(["merges", str(audio), "--size", "tiny224", "--frames", "128", "--r", "8", "--out", str(out)])
    assert rc == 0
    assert len(_png(out)) > 10_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["merges.png"]  # no temp file left
    assert f"146 → {146 - 12 * 8} tokens" in capsys.readouterr().out


def test_merges_reads_released_and_trained_checkpoints(tmp_path: Path) -> None:
    from pipeline.checkpoint import save_student

    audio = tone(tmp_path / "clip.wav", 880.0)
    torch.manual_seed(0)
    model = create_ast("tiny224", num_classes=5, input_tdim=100)
    released = tmp_path / "released.pth"
    torch.save(torch.nn.DataParallel(model).state_dict(), released)
    assert main(["merges", str(audio), "--checkpoint", str(released), "--size", "tiny224", "--frames", "100",
                 "--num-classes", "5", "--r", "4", "--out", str(tmp_path / "a.png")]) == 0
    trained = tmp_path / "student.pt"
    save_student(trained, model, {"norm_mean": -5.0, "norm_std": 4.0})
    assert main(["merges", str(audio), "--checkpoint", str(trained), "--r", "4:-1", "--out", str(tmp_path / "b.png")]) == 0
    _png(tmp_path / "a.png"), _png(tmp_path / "b.png")


@pytest.mark.parametrize("argv,message", [
    (["{audio}", "--r", "0"], "--r 0 merges nothing"),
    (["{dir}/absent.wav"], "no such audio file"),
    (["{audio}", "--out", "{dir}/m.jpg"], "name it *.png"),
    (["{audio}", "--start", "10"], "shorter than one 25 ms window"),
])
def test_merges_bad_input_is_a_clear_error(tmp_path: Path, argv: list[str], message: str, capsys) -> None:
    audio = tone(tmp_path / "clip.wav", 440.0)
    argv = [a.format(audio=audio, dir=tmp_path) for a in argv]
    out_default = ["--out", str(tmp_path / "m.png")] if "--out" not in argv else []
    rc = main(["merges", *argv, "--size", "tiny224", "--frames", "64", *out_default])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def _datafile(tmp_path: Path, waves: dict[str, float]) -> Path:
    folder = tmp_path / "audio"
    folder.mkdir()
    entries = []
    for name, freq in waves.items():
        tone(folder / f"{name}.wav", freq, seconds=0.8, rate=16000)
        entries.append({"wav": f"audio/{name}.wav", "labels": "/m/09x0r"})
    (tmp_path / "labels.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n')
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": entries}))
    return path


def test_stats_are_the_mean_and_std_of_the_padded_fbanks(tmp_path: Path, capsys) -> None:
    from pipeline.core.audio import read_audio

    datafile = _datafile(tmp_path, {"a": 300.0, "b": 1200.0, "c": 2500.0})
    out = tmp_path / "stats.json"
    assert main(["stats", str(datafile), "--frames", "100", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    from student.frontend import BatchFbank, fit_frames_batch

    waves = [torch.from_numpy(read_audio(tmp_path / "audio" / f"{n}.wav", 16000)[0]) for n in "abc"]
    # The statistics are exact sums over the features training uses (student.frontend's) ...
    frontend = BatchFbank(100)
    fbanks = [fit_frames_batch(frontend.fbank(w[None], torch.tensor([len(w)]), 16000)[0], 100)[0] for w in waves]
    cells = torch.stack(fbanks).double()
    assert result["clips"] == 3 and result["cells"] == 3 * 100 * 128
    assert result["mean"] == pytest.approx(cells.mean().item(), abs=1e-9)
    assert result["std"] == pytest.approx(cells.std(unbiased=False).item(), abs=1e-9)
    # ... and match those of torchaudio's per-clip kaldi fbank within 1e-4 in normalised units (×2σ);
    # single cells of these pure tones sit at the log floor, where fp32 rounding moves them more.
    reference = torch.stack([kaldi_fbank(w, 100) for w in waves]).double()
    tolerance = 1e-4 * 2 * reference.std().item()
    assert result["mean"] == pytest.approx(reference.mean().item(), abs=tolerance)
    assert result["std"] == pytest.approx(reference.std(unbiased=False).item(), abs=tolerance)
    assert json.loads(capsys.readouterr().out)["mean"] == pytest.approx(result["mean"])

    assert main(["stats", str(datafile), "--frames", "0", "--limit", "2"]) == 0
    unpadded = json.loads(capsys.readouterr().out)
    assert unpadded["clips"] == 2 and unpadded["cells"] == 2 * 78 * 128  # 0.8 s: 1 + (12800 − 400) // 160
    assert not math.isclose(unpadded["mean"], result["mean"])


def test_stats_names_the_clip_it_cannot_read(tmp_path: Path, capsys) -> None:
    datafile = _datafile(tmp_path, {"good": 440.0, "bad": 880.0})
    (tmp_path / "audio" / "bad.wav").write_bytes(b"RIFF but not really a wave file")
    assert main(["stats", str(datafile)]) == 2
    assert "bad" in capsys.readouterr().err
