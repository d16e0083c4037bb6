"""Hugging Face AST checkpoints in and out, checked against transformers' own ASTForAudioClassification.

transformers is a test extra only: the import and export code (student.hf) never imports it, so
these tests are the evidence that our key mapping, q/k/v fusion, LayerNorm eps and head agree with
the real model. Models are random-init; weights are perturbed away from HF's tiny init so that a
wrong mapping shows in the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from student import StudentError, create_ast
from student.hf import hf_to_ours, ours_to_hf

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")

AUDIOSET_LABELS = 527


def hf_model(tmp_path: Path, name: str, *, frames: int = 100, width: int = 64, depth: int = 2, heads: int = 4,
             classes: int = 7, safe: bool = True, preprocessor: dict | None = None, **config: object) -> tuple[Path, torch.nn.Module]:
    """A random ASTForAudioClassification saved with save_pretrained (weights spread so mistakes show)."""
    cfg = transformers.ASTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                 intermediate_size=4 * width, max_length=frames, num_mel_bins=128,
                                 num_labels=classes, **config)
    torch.manual_seed(0)
    model = transformers.ASTForAudioClassification(cfg).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    folder = tmp_path / name
    model.save_pretrained(folder)
    if not safe:  # the older hub layout (transformers 5 writes safetensors only): a torch pickle of the same tensors
        from safetensors.torch import load_file

        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder, model


def logits_gap(ours: torch.nn.Module, theirs: torch.nn.Module, frames: int, batch: int = 2) -> float:
    fbank = torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours.eval()(fbank) - theirs(fbank).logits).abs().max().item()


@pytest.mark.parametrize("frames", [100, 48])
def test_hf_checkpoint_gives_hf_logits(tmp_path: Path, frames: int) -> None:
    folder, theirs = hf_model(tmp_path, f"ast{frames}", frames=frames, depth=3)
    ours = create_ast(hf_checkpoint=folder)
    assert ours.config() == {"size": "custom", "num_classes": 7, "input_fdim": 128, "input_tdim": frames,
                             "fstride": 10, "tstride": 10, "embed_dim": 64, "depth": 3, "num_heads": 4,
                             "mlp_ratio": 4.0, "layer_norm_eps": 1e-12}
    assert logits_gap(ours, theirs, frames) <= 1e-4


def test_pytorch_model_bin_and_other_strides_and_eps(tmp_path: Path) -> None:
    folder, theirs = hf_model(tmp_path, "bin", frames=64, safe=False, frequency_stride=12, time_stride=16,
                              layer_norm_eps=1e-5)
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    ours = create_ast(hf_checkpoint=folder)
    assert (ours.fstride, ours.tstride, ours.layer_norm_eps) == (12, 16, 1e-5)
    assert all(m.eps == 1e-5 for m in ours.modules() if isinstance(m, torch.nn.LayerNorm))
    assert logits_gap(ours, theirs, 64) <= 1e-4


def test_audioset_config_maps_every_tensor(tmp_path: Path) -> None:
    """The released AudioSet model's structure (ASTConfig's defaults, 527 labels): every tensor is used,
    our only unfilled ones are timm's ImageNet heads, and the logits agree on a full 1024-frame input."""
    cfg = transformers.ASTConfig(num_labels=AUDIOSET_LABELS)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.max_length, cfg.layer_norm_eps) == (768, 12, 1024, 1e-12)
    torch.manual_seed(0)
    theirs = transformers.ASTForAudioClassification(cfg).eval()
    folder = tmp_path / "audioset"
    theirs.save_pretrained(folder)
    ours = create_ast(hf_checkpoint=folder)
    assert ours.config() == {"size": "base384", "num_classes": 527, "input_fdim": 128, "input_tdim": 1024,
                             "fstride": 10, "tstride": 10, "layer_norm_eps": 1e-12}
    state = ours.state_dict()
    exported = ours_to_hf(state, ours.depth)
    from safetensors.torch import load_file

    on_disk = load_file(str(folder / "model.safetensors"))
    assert set(exported) == set(on_disk)
    assert all(torch.equal(exported[key], on_disk[key]) for key in on_disk)
    assert sorted(set(state) - set(hf_to_ours(on_disk, 12, "x"))) == [
        "v.head.bias", "v.head.weight", "v.head_dist.bias", "v.head_dist.weight"]
    assert logits_gap(ours, theirs, 1024, batch=1) <= 1e-4


def test_ast_checkpoint_from_hf_adapts_like_a_released_file(tmp_path: Path) -> None:
    """`fat train --ast-checkpoint DIR/model.safetensors`: another frame count cuts the position grid,
    another label count gets a fresh head, and the LayerNorm eps comes from the HF config."""
    folder, _ = hf_model(tmp_path, "init", frames=100)
    model = create_ast("custom", 3, 128, 64, embed_dim=64, depth=2, num_heads=4,
                       ast_checkpoint=folder / "model.safetensors")
    assert model.layer_norm_eps == 1e-12
    reference = create_ast(hf_checkpoint=folder)
    assert torch.equal(model.v.blocks[1].attn.qkv.weight, reference.v.blocks[1].attn.qkv.weight)
    with pytest.raises(StudentError, match="model.safetensors: the tensors do not match a 3-layer"):
        create_ast("custom", 3, 128, 64, embed_dim=64, depth=3, num_heads=4, ast_checkpoint=folder)


def test_load_student_reads_a_hf_folder_with_its_normalisation(tmp_path: Path) -> None:
    from pipeline.checkpoint import is_student_source, load_student, student_features

    pre = {"feature_extractor_type": "ASTFeatureExtractor", "num_mel_bins": 128, "max_length": 100,
           "sampling_rate": 16000, "do_normalize": True, "mean": -3.5, "std": 2.25}
    folder, theirs = hf_model(tmp_path, "tagger", preprocessor=pre)
    assert is_student_source(folder)
    model, config = load_student(folder)
    features = student_features(config)
    assert (features.target_frames, features.num_mel_bins, features.mean, features.std) == (100, 128, -3.5, 2.25)
    assert config["labels"] == [f"LABEL_{i}" for i in range(7)] and config["multi_label"]
    assert logits_gap(model, theirs, 100) <= 1e-4
    # HF's extractor without a preprocessor file: the normalisation is unknown, and said so.
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(Exception, match="normalisation"):
        student_features(load_student(folder)[1])


def test_bad_hf_checkpoints_name_the_file_and_the_mismatch(tmp_path: Path) -> None:
    folder, _ = hf_model(tmp_path, "good")
    config = json.loads((folder / "config.json").read_text())

    def variant(name: str, **changes: object) -> Path:
        other = tmp_path / name
        other.mkdir()
        (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
        (other / "config.json").write_text(json.dumps({**config, **changes}))
        return other

    vit = variant("vit", model_type="vit", architectures=["ViTForImageClassification"])
    with pytest.raises(StudentError, match=r"vit/config.json: not a Hugging Face AST.*'vit'"):
        create_ast(hf_checkpoint=vit)
    with pytest.raises(StudentError, match=r"patch32/config.json: patch_size 32"):
        create_ast(hf_checkpoint=variant("patch32", patch_size=32))
    with pytest.raises(StudentError, match=r"frames/model.safetensors: position_embeddings \(1, 110, 64\).*input length"):
        create_ast(hf_checkpoint=variant("frames", max_length=200))
    with pytest.raises(StudentError, match=r"deeper/model.safetensors: .*missing.*layer\.2"):
        create_ast(hf_checkpoint=variant("deeper", num_hidden_layers=3))
    half = variant("half")
    data = (half / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(StudentError, match=r"half/model.safetensors: cannot read the weights"):
        create_ast(hf_checkpoint=half)
    with pytest.raises(StudentError, match="not a Hugging Face checkpoint"):
        create_ast(hf_checkpoint=tmp_path / "nowhere")
    with pytest.raises(StudentError, match=r"good/config.json does not describe.*layer_norm_eps 1e-06"):
        create_ast(hf_checkpoint=folder, layer_norm_eps=1e-6)


def test_fat_export_hf_loads_cleanly_in_transformers(tmp_path: Path) -> None:
    """`fat export --format hf`: from_pretrained reports no missing/unexpected/mismatched key, the logits
    are ours at r = 0, and the feature extractor carries our frames, mel bins and normalisation."""
    from pipeline.checkpoint import save_student
    from pipeline.cli import main

    torch.manual_seed(5)
    student = create_ast("custom", 4, 128, 96, embed_dim=64, depth=2, num_heads=4, fstride=12, tstride=12)
    labels = tmp_path / "class_labels_indices.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},Sound {i}\n" for i in range(4)))
    checkpoint = tmp_path / "student.pt"
    save_student(checkpoint, student, {"norm_mean": -3.0, "norm_std": 2.0, "multi_label": True, "target_frames": 96,
                                       "num_mel_bins": 128})
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--out", str(out),
                 "--labels", str(labels)]) == 0
    theirs, info = transformers.ASTForAudioClassification.from_pretrained(out, output_loading_info=True)
    assert {"missing_keys", "unexpected_keys", "mismatched_keys"} <= set(info)
    assert all(not value for value in info.values()), info  # nothing filled at random, nothing left over
    assert theirs.config.id2label[3] == "Sound 3" and theirs.config.problem_type == "multi_label_classification"
    assert logits_gap(student, theirs.eval(), 96) <= 1e-4
    extractor = transformers.ASTFeatureExtractor.from_pretrained(out)
    assert (extractor.mean, extractor.std, extractor.max_length, extractor.num_mel_bins) == (-3.0, 2.0, 96, 128)
    # an existing folder with other files is never overwritten
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--out", str(tmp_path / "busy")]) == 2
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_fat_predict_tags_with_a_hf_folder_and_its_class_names(tmp_path: Path, capsys) -> None:
    import numpy as np
    import soundfile

    from pipeline.cli import main

    pre = {"feature_extractor_type": "ASTFeatureExtractor", "num_mel_bins": 128, "max_length": 100,
           "sampling_rate": 16000, "do_normalize": True, "mean": -4.27, "std": 4.57}
    names = {str(i): f"Sound {i}" for i in range(7)}
    folder, _ = hf_model(tmp_path, "named", preprocessor=pre, id2label=names,
                         label2id={v: int(k) for k, v in names.items()})
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    assert main(["predict", str(wav), "--model", f"student:{folder}", "--json", "--top-k", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labels"] == "the model's id2label"
    assert {t["name"] for t in result["files"][0]["pooled"]["top"]} <= set(names.values())


def test_bench_and_merges_build_a_hf_folder_and_a_safetensors_student(tmp_path: Path) -> None:
    """`fat bench student` / `fat merges --checkpoint` take the same sources as load_student."""
    from pipeline.checkpoint import save_student
    from pipeline.commands.bench import StudentChoice, build_model

    folder, _ = hf_model(tmp_path, "bench")
    model, config = build_model(StudentChoice(checkpoint=folder))
    assert (config["size"], config["depth"], config["source"]) == ("custom", 2, "huggingface")
    saved = tmp_path / "student.safetensors"
    save_student(saved, model, {"norm_mean": -4.27, "norm_std": 4.57})
    again, config_again = build_model(StudentChoice(checkpoint=saved))
    assert config_again["layer_norm_eps"] == 1e-12 and again.layer_norm_eps == 1e-12
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_fat_train_fine_tunes_from_a_hf_folder(tmp_path: Path) -> None:
    """`fat train --ast-checkpoint DIR`: the folder itself is accepted, the HF model's LayerNorm eps is
    kept, a new label count gets a fresh head, and that head is not prior-initialised (it is AST's); the
    fbank mean/std are the folder's preprocessor_config.json's."""
    from pipeline.checkpoint import load_student
    from pipeline.cli import main
    from tests.train_fixtures import make_task

    task = make_task(tmp_path / "task", n_train=6, n_valid=3, num_classes=3, seed=4)
    folder, _ = hf_model(tmp_path, "tiny", frames=96, width=192, depth=12, heads=3, classes=5,
                         preprocessor={"mean": -6.5, "std": 5.25, "max_length": 96, "num_mel_bins": 128})
    out = tmp_path / "run"
    args = ["train", "--train", str(task.train), "--valid", str(task.valid), "--out", str(out),
            "--ast-checkpoint", str(folder), "--loss", "bce", "--kd-lambda", "1", "--model-size", "tiny224",
            "--fstride", "10", "--tstride", "10", "--target-frames", "96", "--epochs", "1", "--batch-size", "3",
            "--no-wa", "--num-workers", "0", "--no-progress", "--threads", "1"]
    assert main(args) == 0
    model, config = load_student(out / "student.safetensors")
    assert model.layer_norm_eps == 1e-12 and model.num_classes == 3
    assert (config["norm_mean"], config["norm_std"]) == (-6.5, 5.25)  # the folder's, which its weights saw
    assert config["norm_source"] == f"from {folder / 'preprocessor_config.json'} (--ast-checkpoint)"
    assert config["head_init"]["init"] == "default" and config["head_init"]["from_checkpoint"]
