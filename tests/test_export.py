"""`fat export` and the student's own safetensors file: what comes out runs elsewhere and gives our logits.

ONNX files run in ONNX Runtime and torch.export programs after torch.export.load, each compared
with the eager student at the same merge rate r; token counts per block are checked in eager mode.
A small random student keeps the exports quick; the graph is the same at any size.
"""

from __future__ import annotations

import json
import logging
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
from student.ast import ASTModel
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


# ------------------------------------------------------------------ ties in the token merging


class ExportsWrong(ASTModel):
    """A student whose traced graph is not its eager self (logits + 1e-3 only while exporting):
    the kind of export the read-back check is there to refuse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits + 1e-3 if torch.compiler.is_exporting() else logits


def tie_student(triples: int = 8) -> ASTModel:
    """The small student with ties planted in the first clip `fat export` checks on (its probe).

    For that clip, the position embedding sets the tokens of `triples` (A, B1, B2) places to chosen
    vectors, and block 0's keys have no bias, so the merge metric is linear in them: B2's metric is
    B1's mirrored about A's line, and A is as similar to B1 as to B2 in exact arithmetic. float32
    rounding picks one per triple, each implementation its own way (eager torch and ONNX Runtime
    1.31 here differ by ~1e-3 in that clip's logits; before ties were judged apart, the export was
    refused). B1 is A plus noise, so A's proposal is among the best: the tie decides a merge.
    """
    from pipeline.export import _probe

    torch.manual_seed(3)
    model = create_ast("custom", 5, 128, FRAMES, embed_dim=64, depth=2, num_heads=4).eval()
    dim, heads = model.embed_dim, model.num_heads
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        attn = model.v.blocks[0].attn
        attn.qkv.bias[dim:2 * dim] = 0
        keys = attn.qkv.weight[dim:2 * dim].double().reshape(heads, dim // heads, dim).mean(0)  # metric = keys @ y
        # ... and mean(y) = 0, so that LayerNorm keeps y's direction
        zero_mean = torch.cat((keys, torch.ones(1, dim, dtype=torch.float64)))
        patches = model.v.patch_embed(_probe(model)[:1].unsqueeze(1).transpose(2, 3))[0].double()
        pos = model.v.pos_embed[0].double()
        for j in range(triples):
            a, b1, b2 = 10 + 12 * j, 11 + 12 * j, 13 + 12 * j  # even = A, odd = B
            ya = torch.randn(dim, generator=generator, dtype=torch.float64)
            ya -= ya.mean()
            yb1 = ya + 0.3 * torch.randn(dim, generator=generator, dtype=torch.float64)
            yb1 -= yb1.mean()
            ma, mb1 = keys @ ya, keys @ yb1
            line = ma / ma.norm()
            mirrored = 2 * (mb1 @ line) * line - mb1
            yb2 = torch.linalg.lstsq(zero_mean, torch.cat((mirrored, mirrored.new_zeros(1)))).solution
            for place, y in ((a, ya), (b1, yb1), (b2, yb2)):
                pos[place] = y - patches[place - 2]  # token = patch embedding + position = y
        model.v.pos_embed[0] = pos.float()
    return model


@pytest.fixture(scope="module")
def tie_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tie") / "student.pt"
    save_student(path, tie_student(), CONFIG, {"epochs": 1})
    return path


def test_reference_is_the_students_forward_and_finds_the_planted_ties(tie_pt: Path) -> None:
    from pipeline.export import _probe
    from student.export import TIE_MARGIN, reference

    model, _ = load_student(tie_pt)
    probe = _probe(model)
    ref = reference(model, probe, 16)
    logits, _ = eager(tie_pt, 16, probe)
    assert np.array_equal(ref.logits, logits)  # the check compares with the student's own forward
    assert ref.tied.tolist() == [True, False, False] and ref.block[0] == 0 and ref.margin[0] < TIE_MARGIN
    assert (ref.margin[1:] > 1e-4).all()  # random clips are far from a tie: scores differ by > 100 × TIE_MARGIN
    plain = reference(model, probe, 0)
    assert np.isinf(plain.margin).all() and (plain.block == -1).all() and not plain.tied.any()


@pytest.mark.parametrize("kind", ["onnx", "torch-export"])
def test_a_merge_tie_does_not_refuse_a_right_export(tmp_path: Path, tie_pt: Path, kind: str, capsys, caplog) -> None:
    """A tie in the probe's first clip: the export is judged on tie-free clips and kept; a difference the
    tie explains is named as one (the onnx file differs there on this machine; torch.export's does not)."""
    out = tmp_path / ("tie.onnx" if kind == "onnx" else "tie.pt2")
    caplog.set_level(logging.INFO)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(tie_pt), "--format", kind, "--r", "16", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout is the report alone: nothing of the exporters'
    assert out.is_file() and report["max_logit_difference"] <= 1e-4
    assert report["tie_free_clips"] >= 3 and report["probe_clips"] == report["tie_free_clips"] + 1
    for tie in report["tie_clips"]:  # only the planted clip may differ, and only as a tie
        assert (tie["clip"], tie["block"]) == (0, 0) and tie["score_gap"] < 1e-5 and tie["logit_difference"] > 1e-4
        assert "probe clip 0 differs from the student by" in caplog.text and "because of a tie" in caplog.text
    # quiet: not a line of torch.onnx / onnxscript / onnx_ir's log reached the user
    assert captured.err == ""
    assert [record.name for record in caplog.records if not record.name.startswith("pipeline")] == []
    x = fbank(3, seed=21)  # and the kept file is the student, on clips without ties
    logits, _ = eager(tie_pt, 16, x)
    if kind == "onnx":
        from pipeline.export import OnnxStudent

        got = OnnxStudent(out, r=16).logits(x.numpy())
    else:
        from student.export import load_program

        with torch.no_grad():
            got = load_program(out, r=16)[0](x).numpy()
    assert np.abs(got - logits).max() <= 1e-4


def test_a_wrong_graph_is_refused_even_beside_a_tie(tmp_path: Path, tie_pt: Path) -> None:
    from pipeline.export import export_graph

    tied, config = load_student(tie_pt)
    wrong = ExportsWrong("custom", 5, 128, FRAMES, embed_dim=64, depth=2, num_heads=4).eval()
    wrong.load_state_dict(tied.state_dict())
    out = tmp_path / "wrong.pt2"
    with pytest.raises(FatError, match=r"wrong.pt2: logits differ from the student's by 1\.0\de-03 \(> 0.0001\) "
                                       r"on probe clip [1-9]\d*, whose token merging has no tie \(its closest merge "
                                       r"decision, in block \d, won by .*\); nothing written"):
        export_graph(wrong, config, out, "torch-export", 16)
    assert list(tmp_path.iterdir()) == []


def test_differences_where_every_clip_is_tied_are_refused() -> None:
    """Keys that ignore the input make every similarity equal: each clip's merging is all ties, no clip can
    tell a wrong graph from a tie, and a graph that differs is refused, saying why."""
    from pipeline.export import MAX_EXTRA_PROBES, check_graph
    from student.export import export_program

    torch.manual_seed(3)
    wrong = ExportsWrong("custom", 5, 128, 96, embed_dim=64, depth=2, num_heads=4).eval()  # 12 × 9 patches
    with torch.no_grad():
        for block in wrong.v.blocks:
            block.attn.qkv.weight[64:128] = 0  # every key is the bias: one direction for all tokens
            block.attn.qkv.bias[64:128] = 1
    module = export_program(wrong, 16).module()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).numpy()

    with pytest.raises(FatError, match=rf"g.onnx: logits differ from the student's by [\d.]+e-0\d \(> 0.0001\), "
                                       rf"and every one of the {3 + MAX_EXTRA_PROBES} probe clips has a tie in its "
                                       r"token merging \(e.g. clip 0, block 0: two similarity scores [\d.e+-]+ apart"):
        check_graph("g.onnx", wrong, 16, run)


def test_the_exporters_log_is_shown_only_when_asked(capsys, caplog) -> None:
    """`fat export --verbose` (or `fat -v export`) lets the exporters' log through; a failed export
    shows it anyway."""
    import warnings

    from pipeline.cli import build_parser
    from student.export import exporter_output

    def chatter() -> None:
        logging.getLogger("onnxscript.rewriter").info("Replaced initializer 'val_9'")
        logging.getLogger("onnx_ir.passes").info("Removed 4 unused nodes")
        print("[torch.onnx] Obtain model graph")
        warnings.warn("isinstance(treespec, LeafSpec) is deprecated", FutureWarning, stacklevel=1)

    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with exporter_output(verbose=False):
            chatter()
        assert shown == [] and caplog.records == [] and capsys.readouterr() == ("", "")
        with exporter_output(verbose=True):
            chatter()
        assert len(shown) == 1 and "Replaced initializer" in caplog.text
        assert capsys.readouterr() == ("", "[torch.onnx] Obtain model graph\n")  # stdout stays the report's
        caplog.clear()
        with pytest.raises(RuntimeError, match="exporter broke"), exporter_output(verbose=False):
            chatter()
            raise RuntimeError("exporter broke")
        err = capsys.readouterr().err
        assert "Replaced initializer 'val_9'" in err and "Obtain model graph" in err
    assert logging.getLogger("onnxscript.rewriter").propagate  # the loggers are given back as they were
    parser = build_parser()
    assert parser.parse_args(["export", "--verbose"]).exporter_log
    parsed = parser.parse_args(["-v", "export"])
    assert parsed.verbose and not parsed.exporter_log  # the global -v is not overwritten by export's own flag


# ------------------------------------------------------------------ where exports go: outside DVC's outputs

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_outputs_read_from_the_files_are_the_ones_dvc_resolves(tmp_path: Path) -> None:
    """pipeline.dvc_outputs parses dvc.yaml itself (params, foreach): it must find what DVC finds."""
    import os
    import shutil

    from dvc.repo import Repo

    from pipeline.dvc_outputs import stage_outputs

    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".dvc/config"):
        shutil.copy2(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    with Repo(str(repo)) as dvc_repo:
        expected = {(stage.name, os.path.relpath(out.fs_path, dvc_repo.root_dir))
                    for stage in dvc_repo.index.stages for out in stage.outs}
    found = {(output.stage, str(output.out.relative_to(repo.resolve()))) for output in stage_outputs(repo)}
    assert ("train", "models/student") in expected
    assert found == expected


def test_exports_default_outside_dvc_outputs_and_warn_inside_one(tmp_path: Path, student_pt: Path, monkeypatch,
                                                                   caplog) -> None:
    """An export into models/student/ vanished at the next `dvc repro` (train cached: checked out again)."""
    import shutil

    from pipeline.dvc_outputs import dvc_output_holding

    repo = tmp_path / "project"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "params.yaml").write_text("train:\n  out: models/run\nsplits: [a, b]\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  train:\n    cmd: fat train\n    outs:\n      - ${train.out}\n"
        "  pack:\n    foreach: ${splits}\n    do:\n      cmd: fat pack ${item}\n      outs:\n"
        "        - data/packed/${item}:\n            persist: true\n")
    (repo / "models/run").mkdir(parents=True)
    shutil.copy2(student_pt, repo / "models/run/student.pt")
    monkeypatch.chdir(repo)
    caplog.set_level(logging.WARNING)
    assert main(["export", "--checkpoint", "models/run/student.pt", "--format", "safetensors"]) == 0
    assert (repo / "models/exports/run/student.safetensors").is_file() and caplog.text == ""
    assert main(["export", "--checkpoint", "models/run/student.pt", "--format", "safetensors",
                 "--out", "models/run/copy.safetensors"]) == 0  # asked for: written, with a warning
    assert (repo / "models/run/copy.safetensors").is_file()
    assert f"models/run/copy.safetensors: inside {repo.resolve() / 'models/run'}, an output of DVC stage 'train'" \
        in caplog.text
    assert dvc_output_holding(Path("data/packed/b/shard0.h5")).stage == "pack@b"
    assert dvc_output_holding(Path("data/packed")) is None and dvc_output_holding(Path("models/exports/x")) is None
    (repo / "dvc.yaml").write_text("stages: [not, a, mapping")  # unreadable: no warning, no error
    assert dvc_output_holding(Path("models/run/x")) is None


def test_the_readme_export_examples_run_on_the_demo_layout() -> None:
    """Each `fat export` / `fat predict` line of the README's export block parses, reads a label CSV the
    demo pipeline writes, writes outside every DVC output where its comment says, and predict runs
    the file the onnx line wrote."""
    import re
    import shlex

    from pipeline.cli import build_parser
    from pipeline.commands.export import ExportSettings, default_out
    from pipeline.dvc_outputs import dvc_output_holding
    from pipeline.settings import from_args

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"A trained student goes out with `fat export`.*?```\n(.*?)```", text, flags=re.S)
    assert block, "the README's export block moved: update this test"
    lines = [line for line in block.group(1).splitlines() if line.startswith("fat ")]
    parser, written = build_parser(), {}
    for line in lines:
        command, _, comment = line.partition("#")
        argv = shlex.split(command)[1:]
        if argv[0] == "predict":
            model = argv[argv.index("--model") + 1]
            assert model.startswith("onnx:") and model[len("onnx:"):] == written["onnx"], line
            continue
        args = from_args(ExportSettings, parser.parse_args(argv))
        assert dvc_output_holding(ROOT / args.checkpoint).stage == "train", line
        out = args.out or default_out(args.checkpoint, args.format, args.r)
        written[args.format] = str(out)
        assert dvc_output_holding(ROOT / out) is None, line
        assert comment.split()[0].rstrip(":/") == str(out), line
        if args.labels is not None:
            holder = dvc_output_holding(ROOT / args.labels)
            assert holder is not None and holder.stage == "metadata", line  # fat metadata writes it there
    assert set(written) == {"safetensors", "hf", "onnx", "torch-export"}
