"""Hugging Face AST checkpoints (`ASTForAudioClassification`) read into our AST and written from it.

A transformers AST is the same network as ours (same Conv2d patch embedding over the (B, 1, F, T)
fbank image, same token order [cls, dist, patches frequency-first], same pre-norm blocks, same head
on the mean of the class and distillation tokens) under other names, with q, k and v kept apart
where our timm blocks fuse them into one `qkv` (in that order), and `config.layer_norm_eps` on every
LayerNorm. The mapping here is strict both ways: every tensor of the file is used and every tensor of
our model is filled, except timm's two unused ImageNet heads (`v.head.*`, `v.head_dist.*`), which
have no counterpart. Files are read locally (config.json + model.safetensors or pytorch_model.bin,
preprocessor_config.json for the fbank normalisation); transformers itself is never imported.

Files are written with the hub's key names, which transformers 4 and 5 both load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from student.ast import CUSTOM_SIZE, MODEL_SIZES, NUM_PREFIX_TOKENS, PATCH, ASTModel, patch_grid
from student.errors import StudentError
from student.tensor_files import load_tensor_file

MODEL_TYPE = "audio-spectrogram-transformer"
ARCHITECTURE = "ASTForAudioClassification"
PREFIX = "audio_spectrogram_transformer."
CONFIG_NAME, PREPROCESSOR_NAME = "config.json", "preprocessor_config.json"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
UNMAPPED = ("v.head.", "v.head_dist.")  # timm's ImageNet heads: no HF counterpart
SAMPLE_RATE = 16000
TIMM_EPS = 1e-6  # timm ViT blocks' LayerNorm eps

# Our key → HF key, outside the blocks.
_TOP = {
    "v.cls_token": "embeddings.cls_token",
    "v.dist_token": "embeddings.distillation_token",
    "v.pos_embed": "embeddings.position_embeddings",
    "v.patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "v.patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "v.norm.weight": "layernorm.weight",
    "v.norm.bias": "layernorm.bias",
}
_HEAD = {
    "mlp_head.0.weight": "classifier.layernorm.weight",
    "mlp_head.0.bias": "classifier.layernorm.bias",
    "mlp_head.1.weight": "classifier.dense.weight",
    "mlp_head.1.bias": "classifier.dense.bias",
}
# Our block-relative key → HF layer-relative key (qkv handled apart).
_BLOCK = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_QKV = ("query", "key", "value")


@dataclass
class HFCheckpoint:
    """What a Hugging Face AST checkpoint holds, in our terms."""

    folder: Path
    weights: Path
    config: dict[str, Any]
    model_kwargs: dict[str, Any]  # ASTModel(**model_kwargs) has exactly the file's structure
    norm: tuple[float, float] | None  # fbank (mean, std) of its feature extractor; None if it has none
    labels: list[str] = field(default_factory=list)  # id2label in index order


def is_hf_checkpoint(source: object) -> bool:
    """A folder with a config.json, or a config.json / model file that has one beside it."""
    if isinstance(source, Mapping) or source is None:
        return False
    path = Path(source)  # type: ignore[arg-type]
    folder = path if path.is_dir() else path.parent
    return (folder / CONFIG_NAME).is_file() and (path.is_dir() or path.name in (CONFIG_NAME, *WEIGHT_NAMES))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudentError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise StudentError(f"{path}: expected a JSON object")
    return data


def _int(config: Mapping[str, Any], key: str, where: Path, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise StudentError(f"{where}: {key} must be an integer, got {value!r}")
    return value


def model_kwargs_from_config(config: Mapping[str, Any], where: Path) -> dict[str, Any]:
    """ASTModel arguments of a transformers AST config; anything our AST cannot be is an error naming the file."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or [ARCHITECTURE]
    if model_type != MODEL_TYPE or ARCHITECTURE not in architectures:
        raise StudentError(f"{where}: not a Hugging Face AST audio classifier (model_type {model_type!r}, "
                           f"architectures {architectures}; expected {MODEL_TYPE!r} / {ARCHITECTURE})")
    patch = _int(config, "patch_size", where, PATCH)
    if patch != PATCH:
        raise StudentError(f"{where}: patch_size {patch}, but this AST uses {PATCH}×{PATCH} patches")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise StudentError(f"{where}: hidden_act {act!r}; this AST's blocks use exact GELU ('gelu')")
    if config.get("qkv_bias", True) is not True:
        raise StudentError(f"{where}: qkv_bias false; this AST's attention has q/k/v biases")
    width = _int(config, "hidden_size", where)
    depth = _int(config, "num_hidden_layers", where)
    heads = _int(config, "num_attention_heads", where)
    hidden = _int(config, "intermediate_size", where, 4 * width)
    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise StudentError(f"{where}: layer_norm_eps must be a positive number, got {eps!r}")
    labels = config.get("id2label")
    num_classes = len(labels) if isinstance(labels, dict) and labels else _int(config, "num_labels", where, 2)
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "input_fdim": _int(config, "num_mel_bins", where, 128),
        "input_tdim": _int(config, "max_length", where, 1024),
        "fstride": _int(config, "frequency_stride", where, 10),
        "tstride": _int(config, "time_stride", where, 10),
        "layer_norm_eps": float(eps),
    }
    named = [name for name, spec in MODEL_SIZES.items()
             if (spec.embed_dim, spec.depth, spec.num_heads, spec.mlp_ratio * spec.embed_dim) == (width, depth, heads, hidden)]
    if named:  # any named size with this structure builds the same modules; base384 first for the AudioSet models
        kwargs["size"] = "base384" if "base384" in named else named[0]
    else:
        if hidden % width:
            raise StudentError(f"{where}: intermediate_size {hidden} is not a whole multiple of hidden_size {width}")
        kwargs.update(size=CUSTOM_SIZE, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=hidden / width)
    try:
        patch_grid(kwargs["input_fdim"], kwargs["input_tdim"], kwargs["fstride"], kwargs["tstride"])
    except StudentError as exc:
        raise StudentError(f"{where}: {exc}") from None
    return kwargs


def _norm_from_preprocessor(path: Path, kwargs: Mapping[str, Any]) -> tuple[float, float] | None:
    """(mean, std) of an ASTFeatureExtractor config; frames and mel bins must agree with the model's."""
    if not path.is_file():
        return None
    pre = _read_json(path)
    kind = pre.get("feature_extractor_type", "ASTFeatureExtractor")
    if kind != "ASTFeatureExtractor":
        raise StudentError(f"{path}: feature_extractor_type {kind!r}, expected 'ASTFeatureExtractor'")
    for key, ours in (("num_mel_bins", "input_fdim"), ("max_length", "input_tdim")):
        if key in pre and pre[key] != kwargs[ours]:
            raise StudentError(f"{path}: {key} {pre[key]} but the model config says {kwargs[ours]}")
    if pre.get("sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise StudentError(f"{path}: sampling_rate {pre['sampling_rate']}, this AST's fbank is at {SAMPLE_RATE} Hz")
    if not pre.get("do_normalize", True):
        return 0.0, 0.5  # (x − 0) / (2 · 0.5): the fbank as it is
    mean, std = pre.get("mean", -4.2677393), pre.get("std", 4.5689974)
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)) or not std > 0:
        raise StudentError(f"{path}: mean/std must be numbers with std > 0, got {mean!r}/{std!r}")
    return float(mean), float(std)


def checkpoint_files(source: str | Path) -> tuple[Path, Path]:
    """(folder, weights file) of a HF checkpoint given as its folder, its config.json or its weights file."""
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if not (folder / CONFIG_NAME).is_file():
        raise StudentError(f"{path}: not a Hugging Face checkpoint (no {CONFIG_NAME} in {folder})")
    if path.is_file() and path.name in WEIGHT_NAMES:
        return folder, path
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder, folder / name
    raise StudentError(f"{folder}: no {' or '.join(WEIGHT_NAMES)} beside {CONFIG_NAME} (a sharded checkpoint is "
                       f"not supported)")


def read_hf_checkpoint(source: str | Path) -> HFCheckpoint:
    """Config, structure and normalisation of a HF AST checkpoint (weights are read by `load_hf_state`)."""
    folder, weights = checkpoint_files(source)
    config = _read_json(folder / CONFIG_NAME)
    kwargs = model_kwargs_from_config(config, folder / CONFIG_NAME)
    norm = _norm_from_preprocessor(folder / PREPROCESSOR_NAME, kwargs)
    id2label = config.get("id2label") or {}
    try:
        labels = [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        raise StudentError(f"{folder / CONFIG_NAME}: id2label keys must be class numbers") from None
    return HFCheckpoint(folder, weights, config, kwargs, norm, labels)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors / pytorch_model.bin (torch files with weights_only)."""
    try:
        state = load_tensor_file(path)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise StudentError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StudentError(f"{path}: not a state dict of tensors")
    return dict(state)


def key_map(depth: int) -> dict[str, str]:
    """Our key → HF key for every mapped tensor of a `depth`-block AST (qkv excluded)."""
    mapping = {ours: PREFIX + theirs for ours, theirs in _TOP.items()}
    mapping.update(_HEAD)
    for i in range(depth):
        for ours, theirs in _BLOCK.items():
            for leaf in ("weight", "bias"):
                mapping[f"v.blocks.{i}.{ours}.{leaf}"] = f"{PREFIX}encoder.layer.{i}.{theirs}.{leaf}"
    return mapping


def _qkv_keys(i: int, leaf: str) -> list[str]:
    return [f"{PREFIX}encoder.layer.{i}.attention.attention.{name}.{leaf}" for name in _QKV]


def hf_to_ours(state: Mapping[str, torch.Tensor], depth: int, where: Path | str) -> dict[str, torch.Tensor]:
    """Rename (and fuse q, k, v of) a HF AST state dict into ours; every HF tensor must be used."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for ours, theirs in key_map(depth).items():
        if theirs in state:
            out[ours] = state.pop(theirs)
        else:
            missing.append(theirs)
    for i in range(depth):
        for leaf in ("weight", "bias"):
            parts = _qkv_keys(i, leaf)
            if all(key in state for key in parts):
                out[f"v.blocks.{i}.attn.qkv.{leaf}"] = torch.cat([state.pop(key) for key in parts], dim=0)
            else:
                missing += [key for key in parts if key not in state]
    if missing or state:
        parts_text = []
        if missing:
            parts_text.append(f"missing {missing[:4]}{' …' if len(missing) > 4 else ''} ({len(missing)})")
        if state:
            extra = sorted(state)
            parts_text.append(f"unused {extra[:4]}{' …' if len(extra) > 4 else ''} ({len(extra)})")
        raise StudentError(f"{where}: the tensors do not match a {depth}-layer Hugging Face AST classifier: "
                           + "; ".join(parts_text))
    return out


def ours_to_hf(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Our AST state dict under HF hub names (q, k, v split); the unused ImageNet heads are left out."""
    out = {theirs: state[ours] for ours, theirs in key_map(depth).items()}
    for i in range(depth):
        for leaf in ("weight", "bias"):
            for key, part in zip(_qkv_keys(i, leaf), state[f"v.blocks.{i}.attn.qkv.{leaf}"].chunk(3, dim=0)):
                out[key] = part
    left = sorted(k for k in state if k not in key_map(depth) and ".attn.qkv." not in k and not k.startswith(UNMAPPED))
    if left:
        raise StudentError(f"these tensors have no Hugging Face counterpart: {left[:6]}")
    return {key: value.detach().to("cpu").contiguous() for key, value in out.items()}


def load_hf_state(checkpoint: HFCheckpoint, model: ASTModel) -> dict[str, torch.Tensor]:
    """The file's tensors under our names, checked against `model`'s shapes (patch kernel, grid, head)."""
    weights = read_weights(checkpoint.weights)
    state = hf_to_ours(weights, model.depth, checkpoint.weights)
    own = model.state_dict()
    pos = state["v.pos_embed"]
    if pos.shape != own["v.pos_embed"].shape:
        config = checkpoint.folder / CONFIG_NAME
        raise StudentError(
            f"{checkpoint.weights}: position_embeddings {tuple(pos.shape)} ≠ {tuple(own['v.pos_embed'].shape)} = "
            f"{NUM_PREFIX_TOKENS} + {model.f_dim}×{model.t_dim} patches of the {model.input_fdim} mel bins × "
            f"{model.input_tdim} frames, strides {model.fstride}/{model.tstride} in {config}: config and weights "
            f"disagree on the input length or strides")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise StudentError(f"{checkpoint.weights}: shapes do not match {checkpoint.folder / CONFIG_NAME}: "
                           + ", ".join(wrong[:4]))
    return state


def hf_config(model: ASTModel, labels: list[str] | None = None) -> dict[str, Any]:
    """config.json of `model` as a transformers AST classifier."""
    names = labels if labels and len(labels) == model.num_classes else [f"LABEL_{i}" for i in range(model.num_classes)]
    # A model built with timm's eps (1e-6 in the blocks, 1e-5 in the head) gets the blocks' 1e-6 everywhere:
    # only the head norm changes, by far less than the 1e-4 the export checks its logits against.
    eps = model.layer_norm_eps if model.layer_norm_eps is not None else TIMM_EPS
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "hidden_size": model.embed_dim,
        "num_hidden_layers": model.depth,
        "num_attention_heads": model.num_heads,
        "intermediate_size": int(model.embed_dim * model.spec.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "patch_size": PATCH,
        "qkv_bias": True,
        "frequency_stride": model.fstride,
        "time_stride": model.tstride,
        "max_length": model.input_tdim,
        "num_mel_bins": model.input_fdim,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)} if len(set(names)) == len(names) else {},
        "torch_dtype": "float32",
    }


def hf_preprocessor_config(model: ASTModel, mean: float, std: float) -> dict[str, Any]:
    """preprocessor_config.json: HF's AST feature extractor with our frames, mel bins and normalisation."""
    return {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "num_mel_bins": model.input_fdim,
        "max_length": model.input_tdim,
        "padding_value": 0.0,
        "do_normalize": True,
        "mean": float(mean),
        "std": float(std),
        "return_attention_mask": False,
    }
