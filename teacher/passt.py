"""PaSST (Koutini et al., "Efficient Training of Audio Transformers with Patchout"): a DeiT-style
transformer over overlapping log-mel patches, the model EfficientAT's CNNs were distilled from.

Forward, as the released AudioSet checkpoints expect it in eval mode:
1. 16 × 16 patches at the checkpoint's stride (10, 12, 14 or 16 in both directions): one conv,
   no padding, giving a (frequency × time) grid of embeddings;
2. a learned time position embedding per time column is added first, then a learned frequency
   one per row. The time embedding was made for `input_frames` frames; a shorter input uses its
   first columns, a longer one is cut to the columns the embedding covers (the rest of the
   audio is not seen — upstream does the same);
3. the grid is flattened frequency-major (row by row) and two tokens are put in front: cls and
   dist, each with its own position vector (`new_pos_embed`);
4. pre-norm blocks (LayerNorm eps 1e-6, multi-head attention with qkv bias, exact GELU MLP),
   a final LayerNorm;
5. logits = head((cls + dist) / 2) where head is LayerNorm (eps 1e-5, torch's default) + Linear.
   `head_dist` is in every checkpoint but unused, as upstream's forward leaves it.

Patchout (dropping patch rows / columns while training) and the random time offset of the
position embedding in training are not implemented: this module is a teacher and runs in eval.
The module tree and parameter names equal upstream's, so released files load with strict=True.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from teacher.errors import TeacherError
from teacher.model import check_mel_input

log = logging.getLogger(__name__)

BLOCK_NORM_EPS = 1e-6  # the blocks' and the final norm's eps; the head's LayerNorm keeps torch's 1e-5


@dataclass(frozen=True)
class PaSSTConfig:
    """Everything that fixes a PaSST network's shape (and so its checkpoint's keys)."""

    num_classes: int = 527
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    stride: tuple[int, int] = (10, 10)  # (frequency, time)
    n_mels: int = 128
    input_frames: int = 998  # frames the time position embedding was made for (upstream's input_tdim)

    def check(self) -> None:
        if self.num_classes < 1:
            raise TeacherError(f"num_classes must be at least 1, got {self.num_classes}")
        if self.depth < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise TeacherError(f"need depth >= 1 and embed_dim divisible by num_heads; got depth {self.depth}, "
                               f"embed_dim {self.embed_dim}, num_heads {self.num_heads}")
        if len(self.stride) != 2 or min(self.stride) < 1:
            raise TeacherError(f"stride must be two positive ints (frequency, time), got {self.stride}")
        if min(self.n_mels, self.input_frames) < self.patch_size:
            raise TeacherError(f"n_mels ({self.n_mels}) and input_frames ({self.input_frames}) must be at least "
                               f"the patch size {self.patch_size}")
        rows = (self.n_mels - self.patch_size) // self.stride[0] + 1
        if rows != self.grid[0]:
            raise TeacherError(f"{self.n_mels} mel bins at frequency stride {self.stride[0]} give {rows} patch rows "
                               f"but {self.grid[0]} frequency positions")

    @property
    def grid(self) -> tuple[int, int]:
        """(frequency rows, time columns) of the position embeddings: input size // stride, as upstream sizes them."""
        return self.n_mels // self.stride[0], self.input_frames // self.stride[1]

    def patch_columns(self, frames: int) -> int:
        """Time columns of the patch grid for an input of `frames` frames (before any cut)."""
        return (frames - self.patch_size) // self.stride[1] + 1

    def used_columns(self, frames: int) -> int:
        """Time columns that reach the transformer: the patch columns, at most the embedding's length."""
        return min(self.patch_columns(frames), self.grid[1])


class PatchEmbed(nn.Module):
    """(B, 1, mels, frames) → (B, embed_dim, rows, columns): one strided conv, no padding."""

    def __init__(self, cfg: PaSSTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.stride)

    def forward(self, mel: Tensor) -> Tensor:
        return self.proj(mel)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection (with bias), softmax(q·kᵀ/√d)·v, output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v)  # scale 1/√head_dim, as upstream
        return self.proj(mixed.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PaSST(nn.Module):
    """A PaSST tagger: (B, 1, mels, frames) log-mel → (B, num_classes) raw logits."""

    def __init__(self, cfg: PaSSTConfig) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        dim = cfg.embed_dim
        rows, columns = cfg.grid
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, dim))  # cls, dist
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, dim, rows, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, columns))
        self.blocks = nn.Sequential(*(Block(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)))
        self.norm = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, cfg.num_classes))
        self.head_dist = nn.Linear(dim, cfg.num_classes)  # in the checkpoints; not used by the forward
        self._warned_cut = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ViT's initialisation: N(0, 0.02) for tokens, position vectors and linears, zero biases,
        identity norms; the patch conv keeps torch's default. (Upstream truncates the normal at ±2,
        100 standard deviations, which never happens; the plain normal is twice as fast to draw.)
        A network built on the meta device (shapes only) draws nothing."""
        if self.cls_token.is_meta:
            return
        for param in (self.cls_token, self.dist_token, self.new_pos_embed, self.freq_new_pos_embed,
                      self.time_new_pos_embed):
            nn.init.normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def adapt_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Upstream's loader also accepts a patch projection stored flat, (dim, 256), from before
        the patches were cut by a conv; it is the same matrix, reshaped to the conv's kernel."""
        weight = state.get("patch_embed.proj.weight")
        kernel = self.patch_embed.proj.weight
        if weight is not None and weight.dim() < 4 and weight.numel() == kernel.numel():
            state = {**state, "patch_embed.proj.weight": weight.reshape(kernel.shape)}
        return state

    def patch_grid(self, mel: Tensor) -> Tensor:
        """Patch embeddings with their position vectors, flattened: (B, rows·columns, dim)."""
        mel = check_mel_input(mel)
        rows, columns = self.cfg.grid
        if mel.shape[2] != self.cfg.n_mels:
            raise TeacherError(f"PaSST expects {self.cfg.n_mels} mel bins, got {mel.shape[2]}")
        if mel.shape[3] < self.cfg.patch_size:
            raise TeacherError(f"PaSST needs at least {self.cfg.patch_size} frames, got {mel.shape[3]}")
        x = self.patch_embed(mel)
        if x.shape[3] > columns:
            if not self._warned_cut:
                log.warning("PaSST input of %d frames gives %d patch columns; its time positions cover %d: "
                            "the rest is cut (as upstream does)", mel.shape[3], x.shape[3], columns)
                self._warned_cut = True
            x = x[:, :, :, :columns]
        x = x + self.time_new_pos_embed[:, :, :, : x.shape[3]]
        x = x + self.freq_new_pos_embed
        return x.flatten(2).transpose(1, 2)

    def forward_features(self, mel: Tensor) -> Tensor:
        """The normalised token sequence (B, 2 + rows·columns, dim): cls, dist, then the patches."""
        x = self.patch_grid(mel)
        batch = x.shape[0]
        cls = self.cls_token.expand(batch, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(batch, -1, -1) + self.new_pos_embed[:, 1:]
        x = self.blocks(torch.cat((cls, dist, x), dim=1))
        return self.norm(x)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Logits from the mean of the cls and dist tokens."""
        return self.head((tokens[:, 0] + tokens[:, 1]) / 2)

    def forward(self, mel: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(mel))


def create_passt(num_classes: int = 527, stride: int = 10, depth: int = 12, input_frames: int = 998,
                 **kwargs) -> PaSST:
    """Build a PaSST network (random weights); see `teacher.load_teacher` for released ones."""
    return PaSST(PaSSTConfig(num_classes=num_classes, stride=(stride, stride), depth=depth,
                             input_frames=input_frames, **kwargs))
