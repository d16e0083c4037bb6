"""The Audio Spectrogram Transformer (AST) on timm 1.0's DeiT-distilled ViT.

The backbone is timm's own `VisionTransformerDistilled` (its blocks, fused attention and
key names), held as `v`, with a 1-channel overlapping patch embedding and a position
embedding sized to the f × t patch grid; `mlp_head` = LayerNorm + Linear on the mean of the
class and distillation tokens. The module tree, and so the state-dict keys, are exactly
those of the released AST checkpoints once their DataParallel `module.` prefix is removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from timm.layers import LayerNorm, trunc_normal_
from timm.models import checkpoint_seq
from timm.models.deit import VisionTransformerDistilled

from student import tome as tome_lib
from student.errors import StudentError

PATCH = 16  # AST's patch side, in mel bins and frames


@dataclass(frozen=True)
class SizeSpec:
    """One DeiT-distilled backbone: width, heads, depth, MLP width and the ImageNet position grid side.

    The named sizes are DeiT's; a custom spec (size "custom") describes any other backbone of the same
    layout, e.g. a Hugging Face AST config with fewer layers (`imagenet_grid` only sizes timm's
    throw-away ImageNet position table, `timm_name` is empty).
    """

    embed_dim: int
    num_heads: int
    depth: int
    imagenet_grid: int
    timm_name: str
    mlp_ratio: float = 4.0


MODEL_SIZES: dict[str, SizeSpec] = {
    "tiny224": SizeSpec(192, 3, 12, 14, "deit_tiny_distilled_patch16_224"),
    "small224": SizeSpec(384, 6, 12, 14, "deit_small_distilled_patch16_224"),
    "base224": SizeSpec(768, 12, 12, 14, "deit_base_distilled_patch16_224"),
    "base384": SizeSpec(768, 12, 12, 24, "deit_base_distilled_patch16_384"),
}

CUSTOM_SIZE = "custom"  # `size` of a backbone given by embed_dim / depth / num_heads / mlp_ratio
CUSTOM_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio")
NUM_PREFIX_TOKENS = 2  # class + distillation
IMAGENET_CLASSES = 1000  # the unused DeiT heads are kept so the released key layout loads strictly


def size_spec(size: str, embed_dim: int | None = None, depth: int | None = None, num_heads: int | None = None,
              mlp_ratio: float | None = None) -> SizeSpec:
    """The backbone of a named size, or of size "custom" from its width, depth, heads (and MLP ratio)."""
    if size in MODEL_SIZES:
        spec = MODEL_SIZES[size]
        given = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio}
        clash = [f"{k}={v} (it has {getattr(spec, k)})" for k, v in given.items()
                 if v is not None and v != getattr(spec, k)]
        if clash:
            raise StudentError(f"AST size {size!r} does not have {', '.join(clash)}; use size {CUSTOM_SIZE!r}")
        return spec
    if size != CUSTOM_SIZE:
        raise StudentError(f"unknown AST size {size!r}; choose one of {', '.join(MODEL_SIZES)} or {CUSTOM_SIZE!r}")
    if embed_dim is None or depth is None or num_heads is None:
        raise StudentError(f"AST size {CUSTOM_SIZE!r} needs embed_dim, depth and num_heads")
    if min(embed_dim, depth, num_heads) < 1 or embed_dim % num_heads:
        raise StudentError(f"a custom AST needs positive sizes and a width divisible by the heads, got "
                           f"embed_dim={embed_dim}, depth={depth}, num_heads={num_heads}")
    ratio = 4.0 if mlp_ratio is None else float(mlp_ratio)
    if ratio <= 0 or round(embed_dim * ratio) != embed_dim * ratio:
        raise StudentError(f"mlp_ratio {ratio} does not give a whole MLP width for embed_dim {embed_dim}")
    return SizeSpec(embed_dim, num_heads, depth, 14, "", ratio)


def size_with_depth(size: str, depth: int = 0) -> dict[str, Any]:
    """`create_ast` size arguments: a named size, or its width, heads and MLP at another depth (size "custom").

    Why: a from-scratch AST on a few hundred clips fits better with fewer blocks, which also take
    more optimiser steps in the same time (docs/benchmarks.md, the demo's student). 0 = the size's own depth.
    """
    spec = size_spec(size)
    if depth < 0:
        raise StudentError(f"depth must be ≥ 0 (0 = the size's own), got {depth}")
    if depth in (0, spec.depth):
        return {"size": size}
    return {"size": CUSTOM_SIZE, "embed_dim": spec.embed_dim, "depth": depth, "num_heads": spec.num_heads,
            "mlp_ratio": spec.mlp_ratio}


def patch_grid(input_fdim: int, input_tdim: int, fstride: int, tstride: int) -> tuple[int, int]:
    """(f, t) patches of a 16×16 conv without padding over a (mel bins × frames) input."""
    for name, value in (("fstride", fstride), ("tstride", tstride)):
        if not 1 <= value <= PATCH:
            raise StudentError(f"{name} must be between 1 and {PATCH}, got {value}")
    if input_fdim < PATCH:
        raise StudentError(f"input_fdim = {input_fdim} mel bins is smaller than one {PATCH}×{PATCH} patch")
    if input_tdim < PATCH:
        raise StudentError(f"input_tdim = {input_tdim} frames is smaller than one {PATCH}×{PATCH} patch")
    return (input_fdim - PATCH) // fstride + 1, (input_tdim - PATCH) // tstride + 1


class AudioPatchEmbed(nn.Module):
    """Overlapping 16×16 patches of a (B, 1, F, T) fbank image → (B, f·t, D), frequency-major.

    Replaces timm's PatchEmbed, which checks image sizes and cannot stride below the patch
    size; the conv is still called `proj` so the checkpoint keys stay the same.
    """

    def __init__(self, embed_dim: int, fstride: int, tstride: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=PATCH, stride=(fstride, tstride))
        self.grid_size = grid
        self.num_patches = grid[0] * grid[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ASTModel(nn.Module):
    """AST: fbank (B, T, F) → logits (B, num_classes). Token merging is set by `student.tome.set_tome_r`."""

    def __init__(
        self,
        size: str = "base384",
        num_classes: int = 527,
        input_fdim: int = 128,
        input_tdim: int = 1024,
        fstride: int = 10,
        tstride: int = 10,
        drop_path_rate: float = 0.0,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        layer_norm_eps: float | None = None,
    ) -> None:
        """`embed_dim`/`depth`/`num_heads`/`mlp_ratio` describe a size "custom" backbone; `layer_norm_eps`
        (None: timm's 1e-6 in the blocks and final norm, torch's 1e-5 in the head) sets every LayerNorm,
        as a Hugging Face AST config does."""
        super().__init__()
        spec = size_spec(size, embed_dim, depth, num_heads, mlp_ratio)
        if num_classes < 1:
            raise StudentError(f"num_classes must be ≥ 1, got {num_classes}")
        if layer_norm_eps is not None and not layer_norm_eps > 0:
            raise StudentError(f"layer_norm_eps must be positive, got {layer_norm_eps}")
        self.spec, self.layer_norm_eps = spec, layer_norm_eps
        self.f_dim, self.t_dim = patch_grid(input_fdim, input_tdim, fstride, tstride)
        self.size, self.num_classes = size, num_classes
        self.input_fdim, self.input_tdim, self.fstride, self.tstride = input_fdim, input_tdim, fstride, tstride
        self.embed_dim, self.depth, self.num_heads = spec.embed_dim, spec.depth, spec.num_heads
        self.num_patches = self.f_dim * self.t_dim

        self.v = VisionTransformerDistilled(
            img_size=PATCH * spec.imagenet_grid, patch_size=PATCH, embed_dim=spec.embed_dim, depth=spec.depth,
            num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, qkv_bias=True, num_classes=IMAGENET_CLASSES,
            drop_path_rate=drop_path_rate,
            norm_layer=None if layer_norm_eps is None else partial(LayerNorm, eps=layer_norm_eps),
        )
        self.v.patch_embed = AudioPatchEmbed(spec.embed_dim, fstride, tstride, (self.f_dim, self.t_dim))
        self.v.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + NUM_PREFIX_TOKENS, spec.embed_dim))
        trunc_normal_(self.v.pos_embed, std=0.02)
        head_eps = 1e-5 if layer_norm_eps is None else layer_norm_eps
        self.mlp_head = nn.Sequential(nn.LayerNorm(spec.embed_dim, eps=head_eps), nn.Linear(spec.embed_dim, num_classes))

        # Token merging: one r per block; all zeros = the plain timm path. See student.tome.
        self.tome_r: list[int] = [0] * spec.depth
        self.tome_prop_attn = True

    @property
    def num_tokens(self) -> int:
        return self.num_patches + NUM_PREFIX_TOKENS

    def config(self) -> dict[str, Any]:
        """What is needed to rebuild this model (without weights): `ASTModel(**config())`.

        A custom size adds its embed_dim/depth/num_heads/mlp_ratio, a set LayerNorm eps adds layer_norm_eps.
        """
        config: dict[str, Any] = {"size": self.size, "num_classes": self.num_classes, "input_fdim": self.input_fdim,
                                  "input_tdim": self.input_tdim, "fstride": self.fstride, "tstride": self.tstride}
        if self.size == CUSTOM_SIZE:
            config.update({key: getattr(self.spec, key) for key in CUSTOM_KEYS})
        if self.layer_norm_eps is not None:
            config["layer_norm_eps"] = self.layer_norm_eps
        return config

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.v.set_grad_checkpointing(enable)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != self.input_tdim or x.shape[2] != self.input_fdim:
            raise StudentError(
                f"AST expects fbank input of shape (batch, {self.input_tdim} frames, {self.input_fdim} mel bins), "
                f"got {tuple(x.shape)}"
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """fbank (B, T, F) → tokens (B, 2 + f·t, D): [cls, dist, patches] + position embedding."""
        self._check_input(x)
        x = self.v.patch_embed(x.unsqueeze(1).transpose(2, 3))
        prefix = torch.cat((self.v.cls_token, self.v.dist_token), dim=1).expand(x.shape[0], -1, -1)
        x = torch.cat((prefix, x), dim=1) + self.v.pos_embed
        return self.v.pos_drop(x)

    def forward_tokens(self, x: torch.Tensor, trace: bool = False) -> tuple[torch.Tensor, tome_lib.MergeState | None]:
        """Run the blocks: the plain timm path when r is zero everywhere, else ToMe blocks."""
        if not any(self.tome_r):
            if self.v.grad_checkpointing and self.training and not torch.jit.is_scripting():
                return checkpoint_seq(self.v.blocks, x), None
            return self.v.blocks(x), None
        state = tome_lib.MergeState.start(x, trace=trace)
        checkpointed = self.v.grad_checkpointing and self.training and torch.is_grad_enabled() and not trace
        for block, r in zip(self.v.blocks, self.tome_r):
            if checkpointed:  # recomputation must see this block's input sizes, so pass them explicitly
                x, state.size = torch.utils.checkpoint.checkpoint(
                    self._tome_block_sized, block, x, state.size, r, use_reentrant=False)
                state.tokens.append(x.shape[1])
            else:
                x = tome_lib.tome_block(block, x, r, state, prop_attn=self.tome_prop_attn)
        return x, state

    def _tome_block_sized(self, block: nn.Module, x: torch.Tensor, size: torch.Tensor | None,
                          r: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        state = tome_lib.MergeState(size=size)
        x = tome_lib.tome_block(block, x, r, state, prop_attn=self.tome_prop_attn)
        return x, state.size

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.v.norm(x)
        return self.mlp_head((x[:, 0] + x[:, 1]) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.forward_tokens(self.embed(x))
        return self.forward_head(tokens)

    def forward_traced(self, x: torch.Tensor) -> tuple[torch.Tensor, tome_lib.MergeState | None]:
        """Logits plus the merge state (sizes, which patch each final token holds, tokens per layer)."""
        tokens, state = self.forward_tokens(self.embed(x), trace=True)
        return self.forward_head(tokens), state
