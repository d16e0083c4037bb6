"""Building an AST (`create_ast`) and initialising it from ImageNet DeiT weights or from an
AudioSet-trained AST, as AST does: the builder sits with the loaders it calls (timm's layout),
and the model module (`student.ast`) never imports them.

The loaders read local files only (no hub access): a timm/DeiT state dict, a released AST
checkpoint (a DataParallel state dict: every key starts with `module.`), or a Hugging Face AST
checkpoint folder (student.hf maps its names onto ours).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from student import hf
from student.ast import NUM_PREFIX_TOKENS, PATCH, ASTModel
from student.errors import StudentError
from student.tensor_files import load_tensor_file

StateDict = Mapping[str, torch.Tensor]


def read_state_dict(source: str | Path | StateDict) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt (torch, weights only) or .safetensors file, unwrapped and unprefixed.

    Accepts `{"model": ...}` / `{"state_dict": ...}` wrappers and strips a `module.` prefix.
    """
    if isinstance(source, Mapping):
        state = dict(source)
        where = "the given state dict"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise StudentError(f"checkpoint not found: {path}")
        try:
            state = load_tensor_file(path)
        except Exception as exc:  # a corrupt or foreign file: say which one
            raise StudentError(f"cannot read checkpoint {path}: {exc}") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = dict(state[wrapper])
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StudentError(f"{where} is not a state dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def resize_pos_grid(grid: torch.Tensor, f_dim: int, t_dim: int) -> torch.Tensor:
    """Fit a (1, D, F0, T0) position grid to (f_dim, t_dim) the way AST does.

    Time first: keep the centre columns if the new grid is narrower, else interpolate bilinearly;
    then the same for frequency rows.
    """
    _, _, f0, t0 = grid.shape
    if t_dim <= t0:
        start = t0 // 2 - t_dim // 2
        grid = grid[:, :, :, start:start + t_dim]
    else:
        grid = F.interpolate(grid, size=(f0, t_dim), mode="bilinear")
    if f_dim <= f0:
        start = f0 // 2 - f_dim // 2
        grid = grid[:, :, start:start + f_dim, :]
    else:
        grid = F.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
    return grid


def adapt_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """(1, 2 + F0·T0, D) → (1, 2 + f·t, D); the class/distillation entries are kept as they are."""
    dim = pos_embed.shape[-1]
    prefix, patches = pos_embed[:, :NUM_PREFIX_TOKENS], pos_embed[:, NUM_PREFIX_TOKENS:]
    grid = patches.transpose(1, 2).reshape(1, dim, *old_grid)
    grid = resize_pos_grid(grid, *new_grid)
    return torch.cat((prefix, grid.reshape(1, dim, -1).transpose(1, 2)), dim=1)


def _check_shapes(model_state: StateDict, state: StateDict, where: str, skip: set[str]) -> None:
    missing = sorted(set(model_state) - set(state) - skip)
    unexpected = sorted(set(state) - set(model_state) - skip)
    wrong = sorted(k for k in set(model_state) & set(state) - skip if model_state[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' …' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{' …' if len(unexpected) > 6 else ''}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(model_state[k].shape)}" for k in wrong[:6]))
        raise StudentError(f"{where} does not fit this AST: " + "; ".join(parts))


def load_imagenet_weights(model: ASTModel, source: str | Path | StateDict) -> None:
    """Start from a timm DeiT-distilled ImageNet model of the same size (a local state-dict file)."""
    where = str(source) if not isinstance(source, Mapping) else "ImageNet state dict"
    state = read_state_dict(source)
    backbone = model.v.state_dict()
    kernel = state.get("patch_embed.proj.weight")
    pos = state.get("pos_embed")
    if kernel is None or pos is None:
        raise StudentError(f"{where} is not a timm DeiT state dict (no patch_embed.proj.weight / pos_embed)")
    if kernel.ndim != 4 or kernel.shape[0] != model.embed_dim or kernel.shape[2:] != (PATCH, PATCH):
        raise StudentError(f"{where}: patch kernel {tuple(kernel.shape)} does not fit {model.size} "
                           f"(width {model.embed_dim}, {PATCH}×{PATCH} patches)")
    side = round((pos.shape[1] - NUM_PREFIX_TOKENS) ** 0.5)
    if side * side + NUM_PREFIX_TOKENS != pos.shape[1]:
        raise StudentError(f"{where}: pos_embed of {pos.shape[1]} entries is not 2 + a square grid (not a distilled DeiT?)")
    state["patch_embed.proj.weight"] = kernel.sum(dim=1, keepdim=True)  # RGB → one channel
    state["pos_embed"] = adapt_pos_embed(pos, (side, side), (model.f_dim, model.t_dim))
    # The 1000-class ImageNet heads are unused by AST; a file without them still initialises the backbone.
    optional = {k for k in backbone if k.startswith(("head.", "head_dist.")) and k not in state}
    _check_shapes(backbone, state, where, optional)
    model.v.load_state_dict({**{k: backbone[k] for k in optional}, **state}, strict=True)


def _checkpoint_grid(num_patches: int, model: ASTModel) -> tuple[int, int]:
    """The (f, t) grid of a checkpoint's position embedding, assuming the same mel bins as the model.

    The model's own frequency stride is tried first, then AST's released strides 10/12/14/16, then any.
    """
    for stride in dict.fromkeys([model.fstride, 10, 12, 14, 16, *range(1, PATCH + 1)]):
        f_dim = (model.input_fdim - PATCH) // stride + 1
        if num_patches % f_dim == 0:
            return f_dim, num_patches // f_dim
    raise StudentError(f"cannot infer the patch grid of a position embedding with {num_patches} patches")


def load_ast_checkpoint(model: ASTModel, source: str | Path | StateDict) -> dict[str, list[str]]:
    """Load an AST state dict (released layout: `v.*` backbone + `mlp_head.*`, `module.` prefix optional).

    Same label count and patch grid: everything loads with strict=True. Another frame count or
    stride: the position grid is cut/interpolated as AST does. Another label count: a fresh head
    (`mlp_head`) is kept, as AST does for fine-tuning. A Hugging Face AST checkpoint (its folder,
    config.json or weights file) is renamed onto our keys first, and loads the same way; its
    `layer_norm_eps` must then be the model's (create_ast sees to that). Returns {"adapted": [...], "fresh": [...]}.
    """
    where = str(source) if not isinstance(source, Mapping) else "AST state dict"
    if hf.is_hf_checkpoint(source):
        checkpoint = hf.read_hf_checkpoint(source)  # type: ignore[arg-type]
        where = str(checkpoint.weights)
        state = hf.hf_to_ours(hf.read_weights(checkpoint.weights), model.depth, where)
        own = model.state_dict()
        state.update({k: own[k] for k in own if k.startswith(hf.UNMAPPED)})  # no HF counterpart
    else:
        state = read_state_dict(source)
    if "v.pos_embed" not in state:
        raise StudentError(f"{where} is not an AST checkpoint (no v.pos_embed key; keys start with "
                           f"{sorted({k.split('.')[0] for k in state})[:5]})")
    own = model.state_dict()
    report: dict[str, list[str]] = {"adapted": [], "fresh": []}
    pos = state["v.pos_embed"]
    if pos.shape != own["v.pos_embed"].shape:
        if pos.ndim != 3 or pos.shape[-1] != model.embed_dim:
            raise StudentError(f"{where}: v.pos_embed {tuple(pos.shape)} does not fit {model.size} (width {model.embed_dim})")
        old_grid = _checkpoint_grid(pos.shape[1] - NUM_PREFIX_TOKENS, model)
        state["v.pos_embed"] = adapt_pos_embed(pos, old_grid, (model.f_dim, model.t_dim))
        report["adapted"].append(f"v.pos_embed {old_grid[0]}×{old_grid[1]} → {model.f_dim}×{model.t_dim}")
    head = state.get("mlp_head.1.weight")
    if head is not None and head.shape[0] != model.num_classes:
        for key in [k for k in state if k.startswith("mlp_head.")]:
            del state[key]
        report["fresh"] = [k for k in own if k.startswith("mlp_head.")]
        state.update({k: own[k] for k in report["fresh"]})
    _check_shapes(own, state, where, set())
    model.load_state_dict(state, strict=True)
    return report


def _from_hf(source: str | Path, given: dict[str, object], drop_path_rate: float) -> ASTModel:
    """The AST a HF checkpoint describes, loaded strictly; `given` structure settings must agree with its config."""
    checkpoint = hf.read_hf_checkpoint(source)
    kwargs = dict(checkpoint.model_kwargs)
    clash = [f"{key} {value} (config: {kwargs.get(key)})" for key, value in given.items()
             if value is not None and value != kwargs.get(key)]
    if clash:
        raise StudentError(f"{checkpoint.folder / hf.CONFIG_NAME} does not describe the AST asked for: "
                           + ", ".join(clash))
    model = ASTModel(**kwargs, drop_path_rate=drop_path_rate)
    state = hf.load_hf_state(checkpoint, model)
    own = model.state_dict()
    model.load_state_dict({**{k: own[k] for k in own if k.startswith(hf.UNMAPPED)}, **state}, strict=True)
    return model


def create_ast(
    size: str = "base384",
    num_classes: int = 527,
    input_fdim: int = 128,
    input_tdim: int = 1024,
    fstride: int = 10,
    tstride: int = 10,
    imagenet_weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    ast_checkpoint: str | Path | Mapping[str, torch.Tensor] | None = None,
    drop_path_rate: float = 0.0,
    hf_checkpoint: str | Path | None = None,
    **structure: object,
) -> ASTModel:
    """Build an AST and initialise it as AST does.

    - `imagenet_weights`: a local timm/DeiT state-dict file (or dict) of the matching DeiT-distilled
      model; the RGB patch kernel is summed to one channel, the position grid cut or interpolated.
    - `ast_checkpoint`: a released AST file (or any AST state dict, `module.` prefix or not); loaded
      strictly when label count and patch grid match, else the grid is adapted and, for another
      label count, a fresh head is built (fine-tuning).
    - `hf_checkpoint`: a Hugging Face `ASTForAudioClassification` folder (config.json + model.safetensors
      or pytorch_model.bin); the model is built from its config (size, depth, frames, mel bins, strides,
      classes, layer_norm_eps) and every tensor maps strictly; the other arguments are ignored unless
      given in `structure` (then they must agree with the config).
    - neither: random initialisation (timm's ViT init, trunc-normal position embedding).
    The ImageNet start is applied first, so both can be given (the checkpoint then overrides).
    `structure`: ASTModel's embed_dim / depth / num_heads / mlp_ratio (size "custom") and layer_norm_eps.
    An `ast_checkpoint` that is a Hugging Face folder also sets layer_norm_eps from its config.
    """
    if hf_checkpoint is not None:
        if imagenet_weights is not None or ast_checkpoint is not None:
            raise StudentError("hf_checkpoint is a whole model: give it without imagenet_weights / ast_checkpoint")
        return _from_hf(hf_checkpoint, dict(structure), drop_path_rate)
    if ast_checkpoint is not None and hf.is_hf_checkpoint(ast_checkpoint) and structure.get("layer_norm_eps") is None:
        structure["layer_norm_eps"] = hf.read_hf_checkpoint(ast_checkpoint).model_kwargs["layer_norm_eps"]
    model = ASTModel(size, num_classes, input_fdim, input_tdim, fstride, tstride, drop_path_rate=drop_path_rate,
                     **structure)  # type: ignore[arg-type]
    if imagenet_weights is not None:
        load_imagenet_weights(model, imagenet_weights)
    if ast_checkpoint is not None:
        load_ast_checkpoint(model, ast_checkpoint)
    return model
