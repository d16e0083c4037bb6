"""`fat export` and the student's own safetensors file: what comes out runs elsewhere and gives our logits.

ONNX files run in ONNX Runtime and torch.export programs after torch.export.load, each compared
with the eager student at the same merge rate r; token counts per block are checked in eager mode.
A small random student keeps the exports quick; the graph is the same at any size.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.checkpoint import load_student, read_student_file, save_student
from pipeline.cli import main
from pipeline.core.errors import FatError
from student import create_ast
from student.tome import set_tome_r, tokens_per_layer

FRAMES = 200  # 12 × 19 patches + 2 = 230 tokens: r = 32 still merges in every block
CONFIG = {"norm_mean": -4.27, "norm_std": 4.57, "multi_label": True, "target_frames": FRAMES, "num_mel_bins": 128,
          "tome_r": "0"}


def small_student(path: Path) -> Path:
    torch.manual_seed(3)
    model = create_ast("custom", 5, 128, FRAMES, embed_dim=64, depth=2, num_heads=4)
    save_student(path, model, CONFIG, {"epochs": 1})
    return path


@pytest.fixture(scope="module")
def student_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_student(tmp_path_factory.mktemp("student") / "student.pt")


def fbank(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 128, generator=torch.Generator().manual_seed(seed))


def eager(path: Path, r: int, x: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    model, _ = load_student(path)
    set_tome_r(model, r)
    with torch.no_grad():
        logits, state = model.forward_traced(x)
    tokens = state.tokens if state is not None else [model.num_tokens] * model.depth
    return logits.numpy(), tokens


# ------------------------------------------------------------------ safetensors student files


def test_safetensors_student_loads_without_pickle(tmp_path: Path, student_pt: Path, monkeypatch) -> None:
    out = tmp_path / "student.safetensors"
    assert main(["export", "--checkpoint", str(student_pt), "--format", "safetensors", "--out", str(out)]) == 0
    reference, config = load_student(student_pt)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a safetensors student file must load without pickle")

    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model, loaded = load_student(out)
    assert loaded == config and read_student_file(out)["extra"] == {"epochs": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_old_pt_and_bad_safetensors_files(tmp_path: Path, student_pt: Path) -> None:
    assert read_student_file(student_pt)["format"] == "fat-student/1"  # the old form still loads
    out = small_student(tmp_path / "direct.safetensors")
    data = out.read_bytes()
    (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FatError, match=r"half.safetensors: not a readable student safetensors file"):
        load_student(tmp_path / "half.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(FatError, match=r"foreign.safetensors: not a fat student safetensors file"):
        load_student(tmp_path / "foreign.safetensors")


# ------------------------------------------------------------------ ONNX and torch.export

EXPORTED: dict[int, tuple[Path, dict]] = {}  # r → (ONNX file, fat export's report), exported once per module


def onnx_file(student_pt: Path, r: int, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict]:
    if r not in EXPORTED:
        out = student_pt.parent / f"student_r{r}.onnx"
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(student_pt), "--format", "onnx", "--r", str(r),
                     "--out", str(out)]) == 0
        EXPORTED[r] = out, json.loads(capsys.readouterr().out)
    return EXPORTED[r]


@pytest.mark.parametrize("r", [0, 16, 32])
def test_onnx_runtime_matches_eager_at_each_r(student_pt: Path, r: int, capsys) -> None:
    from pipeline.export import OnnxStudent

    out, report = onnx_file(student_pt, r, capsys)
    assert report["max_logit_difference"] <= 1e-4 and report["tome_r"] == str(r)
    runner = OnnxStudent(out, r=r)
    model, _ = load_student(student_pt)
    expected_tokens = tokens_per_layer(model, r)
    assert report["tokens_per_layer"] == runner.info["tokens_per_layer"] == expected_tokens
    assert (expected_tokens[-1] < model.num_tokens) == (r > 0)
    for batch in (1, 4):  # the batch is dynamic
        x = fbank(batch, seed=batch)
        logits, tokens = eager(student_pt, r, x)
        assert tokens == expected_tokens  # the eager model merged what the file says
        assert np.abs(runner.logits(x.numpy()) - logits).max() <= 1e-4
    assert runner.config["norm_mean"] == CONFIG["norm_mean"]


def test_onnx_file_runs_with_onnxruntime_alone(tmp_path: Path, student_pt: Path, capsys) -> None:
    """The README's snippet: numpy + onnxruntime, no torch imported."""
    out, _ = onnx_file(student_pt, 16, capsys)
    x = fbank(2)
    np.save(tmp_path / "x.npy", x.numpy())
    script = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(out)!r}, providers=['CPUExecutionProvider'])\n"
        "info = json.loads(s.get_modelmeta().custom_metadata_map['fat_student'])\n"
        f"y = s.run(None, {{'fbank': np.load({str(tmp_path / 'x.npy')!r})}})[0]\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "assert 'torch' not in sys.modules\n"
        "print(info['tome_r'], y.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "16"
    logits, _ = eager(student_pt, 16, x)
    assert np.abs(np.load(tmp_path / "y.npy") - logits).max() <= 1e-4


@pytest.mark.parametrize("r", [0, 16, 32])
def test_torch_export_program_matches_eager(tmp_path: Path, student_pt: Path, r: int) -> None:
    from student.export import load_program

    out = tmp_path / "student.pt2"
    assert main(["export", "--checkpoint", str(student_pt), "--format", "torch-export", "--r", str(r),
                 "--out", str(out)]) == 0
    module, info = load_program(out, r=r)
    assert info["tokens_per_layer"] == tokens_per_layer(load_student(student_pt)[0], r)
    for batch in (1, 3):
        x = fbank(batch, seed=10 + batch)
        logits, tokens = eager(student_pt, r, x)
        assert tokens == info["tokens_per_layer"]
        with torch.no_grad():
            got = module(x).numpy()
        assert np.abs(got - logits).max() <= 1e-4


def test_exported_files_refuse_another_r_and_bad_files(tmp_path: Path, student_pt: Path, capsys) -> None:
    from pipeline.export import OnnxStudent
    from student.errors import StudentError
    from student.export import load_program
    from student.tome import parse_r_spec

    exported, _ = onnx_file(student_pt, 16, capsys)
    with pytest.raises(FatError, match=r"student_r16.onnx: exported with r = 16 \(tokens per block \[.*\]\), but r = 8 "
                                       r"was asked for"):
        OnnxStudent(exported, r=8)
    OnnxStudent(exported, r=parse_r_spec("16,16"))  # the same schedule written per block is the same file
    (tmp_path / "cut.onnx").write_bytes(exported.read_bytes()[:5000])
    with pytest.raises(FatError, match=r"cut.onnx: not a readable ONNX model"):
        OnnxStudent(tmp_path / "cut.onnx")
    (tmp_path / "cut.pt2").write_bytes(b"PK\x03\x04 not a program")
    with pytest.raises(StudentError, match=r"cut.pt2: not a readable torch.export program"):
        load_program(tmp_path / "cut.pt2")
    # hf and safetensors hold the plain model: an r there is refused, not silently dropped
    assert main(["export", "--checkpoint", str(student_pt), "--format", "hf", "--r", "16",
                 "--out", str(tmp_path / "hf")]) == 2
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------ fat predict --model onnx:PATH


def test_predict_runs_the_onnx_file_like_the_student(tmp_path: Path, student_pt: Path, capsys) -> None:
    import soundfile

    exported, _ = onnx_file(student_pt, 16, capsys)
    rng = np.random.default_rng(0)
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, (0.1 * rng.standard_normal(40000)).astype(np.float32), 16000)  # 2.5 s: two 2 s windows
    results = {}
    for spec in (f"onnx:{exported}", f"student:{student_pt}"):
        capsys.readouterr()
        assert main(["predict", str(wav), "--model", spec, "--r", "16", "--json", "--top-k", "5"]) == 0
        results[spec.split(":")[0]] = json.loads(capsys.readouterr().out)
    onnx_run, eager_run = results["onnx"], results["student"]
    assert onnx_run["model"]["kind"] == "onnx" and onnx_run["model"]["tome_r"] == "16"
    assert len(onnx_run["files"][0]["windows"]) == 2
    for a, b in zip(onnx_run["files"][0]["windows"] + [onnx_run["files"][0]["pooled"]],
                    eager_run["files"][0]["windows"] + [eager_run["files"][0]["pooled"]]):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert max(abs(x["probability"] - y["probability"]) for x, y in zip(a["top"], b["top"])) <= 1e-4
    assert main(["predict", str(wav), "--model", f"onnx:{exported}", "--r", "8"]) == 2
    assert "exported with r = 16" in capsys.readouterr().err
