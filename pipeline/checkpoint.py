"""Trained student files: the weights plus everything needed to rebuild the model and its input.

A student file is a torch pickle of plain types only (loadable with weights_only=True):
{"format": FORMAT, "config": {...}, "state_dict": {...}, "extra": {...}}. `config` always
contains the model's own constructor settings (size, num_classes, input_fdim, input_tdim,
fstride, tstride) and whatever the trainer adds (norm mean/std, label CSV sha256, multi_label,
the r used in training, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import FatError
from pipeline.dataset import Features
from student import create_ast
from student.errors import StudentError

FORMAT = "fat-student/1"
MODEL_KEYS = ("size", "num_classes", "input_fdim", "input_tdim", "fstride", "tstride")


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
    payload = {"format": FORMAT, "config": full_config, "state_dict": cpu_state_dict(bare), "extra": dict(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_student_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw payload of a student file, checked to be one."""
    path = Path(path)
    if not path.is_file():
        raise FatError(f"{path}: no such student checkpoint")
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


def load_student(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the AST from a student file; returns (model in eval mode with r = 0, config).

    The r used in training is config["tome_r"]; apply any r with student.tome.set_tome_r.
    """
    payload = read_student_file(path, map_location)
    config = payload["config"]
    try:
        model = create_ast(**{key: config[key] for key in MODEL_KEYS})
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError, StudentError) as exc:
        raise FatError(f"{path}: the weights do not fit the model its config describes ({exc})") from None
    return model.to(map_location).eval(), config
