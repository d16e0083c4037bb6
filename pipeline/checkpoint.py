"""Trained student files: the weights plus everything needed to rebuild the model and its input.

Two forms, chosen by the file name (`save_student`), both read by `load_student`:
- `*.safetensors` (what `fat train` writes): the tensors in safetensors, and {"format":
  SAFETENSORS_FORMAT, "config": JSON, "extra": JSON} in its header metadata: one self-contained
  file read without any pickle.
- anything else (the `student.pt` of older runs): a torch pickle of plain types only (loadable with weights_only=True):
  {"format": FORMAT, "config": {...}, "state_dict": {...}, "extra": {...}}.
`config` always contains the model's own constructor settings (size, num_classes, input_fdim,
input_tdim, fstride, tstride; a custom size or LayerNorm eps adds theirs) and whatever the trainer
adds (norm mean/std, label CSV sha256, multi_label, the r used in training, ...).

`load_student` also takes a Hugging Face AST checkpoint folder (student.hf): its config becomes a
student config, its feature extractor's mean/std the normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import json

import torch
from torch import nn

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import FatError
from pipeline.dataset import Features
from student import create_ast
from student.errors import StudentError

FORMAT = "fat-student/1"
SAFETENSORS_FORMAT = "fat-student-safetensors/1"
MODEL_KEYS = ("size", "num_classes", "input_fdim", "input_tdim", "fstride", "tstride")
OPTIONAL_MODEL_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "layer_norm_eps")  # custom sizes, HF eps


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in unwrap(model).state_dict().items()}


def save_student(path: str | Path, model: nn.Module, config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write a student file atomically; `config` is merged over the model's own config()."""
    bare = unwrap(model)
    full_config = dict(bare.config()) if hasattr(bare, "config") else {}
    full_config.update(config)
    missing = [key for key in MODEL_KEYS if key not in full_config]
    if missing:
        raise ValueError(f"student config lacks {', '.join(missing)}")
    if Path(path).suffix == ".safetensors":
        _save_safetensors(Path(path), cpu_state_dict(bare), full_config, dict(extra or {}))
        return
    payload = {"format": FORMAT, "config": full_config, "state_dict": cpu_state_dict(bare), "extra": dict(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _save_safetensors(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any], extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    try:
        metadata = {"format": SAFETENSORS_FORMAT, "config": json.dumps(config, default=str),
                    "extra": json.dumps(extra, default=str)}
    except TypeError as exc:
        raise ValueError(f"{path}: the student config/extra must be JSON for a safetensors file ({exc})") from None
    with atomic_path(path) as tmp:
        save_file({key: value.contiguous() for key, value in state.items()}, str(tmp), metadata=metadata)


def _read_safetensors(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The payload of a safetensors student file, in the same shape as a .pt one's."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != SAFETENSORS_FORMAT:
                raise FatError(f"{path}: not a fat student safetensors file (header format "
                               f"{metadata.get('format')!r}, expected {SAFETENSORS_FORMAT!r})")
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        config, extra = json.loads(metadata["config"]), json.loads(metadata.get("extra", "{}"))
    except FatError:
        raise
    except Exception as exc:  # truncated, half-written or foreign: say which file and why
        raise FatError(f"{path}: not a readable student safetensors file ({type(exc).__name__}: {exc})") from None
    if not isinstance(config, dict):
        raise FatError(f"{path}: the header's config is not a JSON object")
    state = {key: value.to(map_location) for key, value in state.items()}
    return {"format": SAFETENSORS_FORMAT, "config": config, "state_dict": state, "extra": extra}


def read_student_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw payload of a student file, checked to be one."""
    path = Path(path)
    if not path.is_file():
        raise FatError(f"{path}: no such student checkpoint")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, map_location)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise FatError(f"{path}: not a readable student checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise FatError(f"{path}: not a fat student checkpoint (format {found!r}, expected {FORMAT!r})")
    return payload


def student_features(config: dict[str, Any], norm: tuple[float, float] | None = None) -> Features:
    """How a clip becomes this student's input, as its file records it: frames, mel bins and the
    fbank mean/std it was trained with. The one reader of these keys (evaluate, predict, merges).

    `norm` stands in for a file that records no normalisation (a released AST checkpoint);
    without it such a file is an error.
    """
    frames = int(config.get("target_frames", config["input_tdim"]))
    bins = int(config.get("num_mel_bins", config.get("input_fdim", 128)))
    if "norm_mean" in config and "norm_std" in config:
        mean, std = float(config["norm_mean"]), float(config["norm_std"])
    elif norm is not None:
        mean, std = norm
    else:
        raise FatError("the student checkpoint does not record its fbank normalisation (norm_mean / norm_std)")
    return Features(target_frames=frames, num_mel_bins=bins, mean=mean, std=std)


def is_student_source(path: str | Path) -> bool:
    """Whether `path` is something load_student reads: a fat student file (either form) or a HF AST folder."""
    from student import hf

    path = Path(path)
    if hf.is_hf_checkpoint(path):
        return True
    try:
        read_student_file(path)
    except FatError:
        return False
    return True


def load_hf_student(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A Hugging Face AST checkpoint as a student: the model and a student config (frames, mel bins, mean/std)."""
    from student import hf

    try:
        checkpoint = hf.read_hf_checkpoint(path)
        model = create_ast(hf_checkpoint=path)
    except StudentError as exc:
        raise FatError(str(exc)) from None
    config = dict(model.config())
    multi_label = checkpoint.config.get("problem_type") != "single_label_classification"
    config.update(target_frames=model.input_tdim, num_mel_bins=model.input_fdim, multi_label=multi_label,
                  source="huggingface", labels=checkpoint.labels)
    if checkpoint.norm is not None:
        config["norm_mean"], config["norm_std"] = checkpoint.norm
    return model.to(map_location).eval(), config


def load_student(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the AST from a student file (.pt or .safetensors) or a Hugging Face AST folder;
    returns (model in eval mode with r = 0, config).

    The r used in training is config["tome_r"]; apply any r with student.tome.set_tome_r.
    """
    from student import hf

    if hf.is_hf_checkpoint(path):
        return load_hf_student(path, map_location)
    payload = read_student_file(path, map_location)
    config = payload["config"]
    try:
        model = create_ast(**{key: config[key] for key in MODEL_KEYS},
                           **{key: config[key] for key in OPTIONAL_MODEL_KEYS if key in config})
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError, StudentError) as exc:
        raise FatError(f"{path}: the weights do not fit the model its config describes ({exc})") from None
    return model.to(map_location).eval(), config
