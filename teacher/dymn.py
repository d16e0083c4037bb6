"""EfficientAT's "dymn" audio taggers: MobileNetV3-Large whose blocks adapt to each clip.

A dynamic block first summarises its input into a context: the mean frequency profile and the
mean time profile go through one shared 1×1 conv (BatchNorm, hardswish); their joint mean is a
context vector of size H, and the two sequences, strided like the block, become frequency and
time gates. The vector steers the block's three convolutions (each a softmax-weighted mix of K
kernels, sharpened or flattened by a temperature) and a dynamic ReLU (per channel the maximum
of M lines whose slopes and offsets it predicts); the gates rescale the depthwise output
(coordinate attention). The rest — stem, last 1×1 conv, head, the block table, channel
rounding — is the mn network's (`teacher.model`).

The module tree mirrors the released checkpoints so that they load with `strict=True`: `in_c`
(stem), `layers.0..14`, `out_c`, `classifier`. A dynamic block holds `context_gen`
(`joint_conv`, `joint_norm`, `conv_f`, `conv_t`), `exp_conv`/`exp_norm` (absent when the block
does not expand), `depth_conv`/`depth_norm`, `depth_act` (`coef_net.0`, buffers `lambdas` and
`init_v`), `proj_conv`/`proj_norm`; a dynamic conv holds `weight` (1, 1, K, out·in/groups·k·k)
and its kernel attention `residuals.0`. "replace_se" networks use dynamic blocks only where
MobileNetV3 has a squeeze-excitation and plain mn blocks (`layers.i.block.j`) elsewhere.

Temperature: upstream anneals it during training (30 → 1 over the epochs); a released network
runs at the temperature its training ended with, `DyMNConfig.temperature` (1 for the AudioSet
taggers). It is a fixed number here, in train and eval mode alike, so eval mode is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from teacher.errors import TeacherError
from teacher.model import (
    _BASE_BLOCKS,
    _BASE_HEAD_CHANNELS,
    ConvNormAct,
    InvertedResidual,
    MNConfig,
    check_backbone,
    check_mel_input,
    classifier_head,
    init_layers,
    round_channels,
)

# Which of the 15 blocks are dynamic: all, or those where MobileNetV3 has a squeeze-excitation.
DYNAMIC_BLOCK_SETS: dict[str, tuple[bool, ...]] = {
    "all": (True,) * len(_BASE_BLOCKS),
    "replace_se": tuple(block[4] for block in _BASE_BLOCKS),
}
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


@dataclass(frozen=True)
class DyMNConfig:
    """Everything that fixes a dymn network's shape, plus the temperature it runs at."""

    width: float = 1.0
    num_classes: int = 527
    strides: tuple[int, int, int, int] = (2, 2, 2, 2)
    head: str = "mlp"
    dropout: float = 0.2
    dynamic_blocks: str = "all"  # "all" or "replace_se"
    kernels: int = 4  # K: kernels mixed by each dynamic conv
    relu_pieces: int = 2  # M: lines per channel of the dynamic ReLU
    context_ratio: int = 4  # H ≈ expanded channels / context_ratio ...
    context_min: int = 32  # ... clipped to [context_min, context_max] × width (rounded to 8)
    context_max: int = 128
    temperature: float = 1.0  # softmax temperature of the kernel attention

    def check(self) -> None:
        check_backbone(self.head, self.strides, self.width, self.num_classes)
        if self.dynamic_blocks not in DYNAMIC_BLOCK_SETS:
            raise TeacherError(f"dynamic_blocks must be one of {', '.join(DYNAMIC_BLOCK_SETS)}; "
                               f"got {self.dynamic_blocks!r}")
        if self.kernels < 1 or self.relu_pieces < 1:
            raise TeacherError("kernels and relu_pieces must be at least 1")
        if not self.temperature > 0:
            raise TeacherError(f"temperature must be positive, got {self.temperature}")

    def context_size(self, expanded: int) -> int:
        """H of a block with `expanded` channels."""
        low = round_channels(self.context_min * self.width)
        high = round_channels(self.context_max * self.width)
        return min(max(round_channels(expanded // self.context_ratio), low), high)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class Context(NamedTuple):
    """What a block's context generator hands its dynamic parts."""

    vector: Tensor  # (B, H): steers kernel attention and the dynamic ReLU
    freq_gate: Tensor  # (B, C_exp, F', 1) pre-sigmoid
    time_gate: Tensor  # (B, C_exp, 1, T') pre-sigmoid


class ContextGenerator(nn.Module):
    """Block input → context: one shared 1×1 conv over the frequency and time profiles."""

    def __init__(self, in_ch: int, context: int, exp_ch: int, stride: int) -> None:
        super().__init__()
        self.joint_conv = nn.Conv2d(in_ch, context, 1, bias=False)
        self.joint_norm = batch_norm(context)
        self.conv_f = nn.Conv2d(context, exp_ch, 1)
        self.conv_t = nn.Conv2d(context, exp_ch, 1)
        self.stride = stride

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Neutral gates to start with: σ(0) everywhere, whatever the context."""
        for conv in (self.conv_f, self.conv_t):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _shrink(self, seq: Tensor) -> Tensor:
        """Pool a (B, H, L, 1) sequence to the block's output length (3-tap mean, zero-padded)."""
        if self.stride == 1:
            return seq
        return F.avg_pool2d(seq, (3, 1), (self.stride, 1), (1, 0))

    def forward(self, x: Tensor) -> Context:
        n_freq = x.shape[2]
        profiles = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], dim=2)
        joint = F.hardswish(self.joint_norm(self.joint_conv(profiles)))  # (B, H, F + T, 1)
        vector = joint.mean(dim=(2, 3))
        freq, time = joint[:, :, :n_freq], joint[:, :, n_freq:]
        return Context(vector, self.conv_f(self._shrink(freq)), self.conv_t(self._shrink(time)).transpose(2, 3))


class DynamicConv(nn.Module):
    """A convolution whose kernel is, per clip, softmax(Linear(context) / temperature) · K kernels."""

    def __init__(self, in_ch: int, out_ch: int, context: int, kernel: int, stride: int = 1, groups: int = 1,
                 kernels: int = 4, temperature: float = 1.0) -> None:
        super().__init__()
        if in_ch % groups:
            raise TeacherError(f"{in_ch} input channels do not split into {groups} groups")
        self.in_ch, self.out_ch, self.kernel, self.stride, self.groups = in_ch, out_ch, kernel, stride, groups
        self.kernels = kernels
        self.temperature = temperature
        self.residuals = nn.Sequential(nn.Linear(context, kernels))  # attention logits over the K kernels
        # (1, attention groups = 1, K, flattened (out, in/groups, k, k) kernel): the checkpoints' layout
        self.weight = nn.Parameter(torch.empty(1, 1, kernels, out_ch * (in_ch // groups) * kernel * kernel))
        self.reset_parameters()

    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.out_ch, self.in_ch // self.groups, self.kernel, self.kernel)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He init (fan-out) of each of the K kernels on its own, as a plain conv would have; the
        attention starts uniform (zero weights), whatever the context."""
        for k in range(self.kernels):
            nn.init.kaiming_normal_(self.weight[0, 0, k].view(self.kernel_shape()), mode="fan_out")
        nn.init.zeros_(self.residuals[0].weight)
        nn.init.zeros_(self.residuals[0].bias)

    def attention(self, context: Tensor) -> Tensor:
        """(B, H) context → (B, K) kernel weights summing to 1."""
        return torch.softmax(self.residuals(context) / self.temperature, dim=-1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch, _, n_freq, n_time = x.shape
        mixed = self.attention(context) @ self.weight[0, 0]  # (B, out·in/groups·k·k): one kernel per clip
        if self.kernel == 1 and self.groups == 1:  # pointwise: a batched matrix product
            out = torch.bmm(mixed.view(batch, self.out_ch, self.in_ch), x.reshape(batch, self.in_ch, -1))
            return out.view(batch, self.out_ch, n_freq, n_time)
        # clips side by side as groups of one convolution, each with its own kernel
        out = F.conv2d(x.reshape(1, batch * self.in_ch, n_freq, n_time),
                       mixed.reshape(batch * self.out_ch, self.in_ch // self.groups, self.kernel, self.kernel),
                       stride=self.stride, padding=(self.kernel - 1) // 2, groups=batch * self.groups)
        return out.view(batch, self.out_ch, out.shape[2], out.shape[3])


class DynamicReLU(nn.Module):
    """Per channel c: max over m of a_cm·x + b_cm, with (a, b) predicted from the context.

    The net's raw outputs θ ∈ (−1, 1) are scaled by `lambdas` (1 for slopes, 0.5 for offsets)
    and shifted by `init_v` (first slope 1, the rest 0), so θ = 0 is a plain ReLU.
    """

    def __init__(self, channels: int, context: int, pieces: int = 2) -> None:
        super().__init__()
        self.channels, self.pieces = channels, pieces
        self.coef_net = nn.Sequential(nn.Linear(context, 2 * pieces * channels))
        self.register_buffer("lambdas", torch.tensor([1.0] * pieces + [0.5] * pieces))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * pieces - 1)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """θ = 0 whatever the context: a plain ReLU to start with."""
        nn.init.zeros_(self.coef_net[0].weight)
        nn.init.zeros_(self.coef_net[0].bias)

    def coefficients(self, context: Tensor) -> Tensor:
        """(B, H) → (B, C, 2M): M slopes then M offsets per channel."""
        theta = 2 * torch.sigmoid(self.coef_net(context)) - 1
        return theta.view(-1, self.channels, 2 * self.pieces) * self.lambdas + self.init_v

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        coefs = self.coefficients(context)[:, :, None, None, :]  # (B, C, 1, 1, 2M)
        out = x * coefs[..., 0] + coefs[..., self.pieces]
        for m in range(1, self.pieces):
            out = torch.maximum(out, x * coefs[..., m] + coefs[..., self.pieces + m])
        return out


class CoordinateAttention(nn.Module):
    """x · σ(frequency gate) · σ(time gate); the gates come from the context generator."""

    def forward(self, x: Tensor, context: Context) -> Tensor:
        return x * torch.sigmoid(context.freq_gate) * torch.sigmoid(context.time_gate)


class DynamicBlock(nn.Module):
    """Inverted residual with dynamic convs, a dynamic ReLU after the depthwise conv and
    coordinate attention before the projection; identity shortcut where shapes allow."""

    def __init__(self, in_ch: int, kernel: int, exp_ch: int, out_ch: int, hardswish: bool, stride: int,
                 cfg: DyMNConfig) -> None:
        super().__init__()
        context = cfg.context_size(exp_ch)
        dyconv = dict(context=context, kernels=cfg.kernels, temperature=cfg.temperature)
        self.context_gen = ContextGenerator(in_ch, context, exp_ch, stride)
        self.expands = exp_ch != in_ch
        if self.expands:
            self.exp_conv = DynamicConv(in_ch, exp_ch, kernel=1, **dyconv)
            self.exp_norm = batch_norm(exp_ch)
            self.exp_act = nn.Hardswish() if hardswish else nn.ReLU()
        self.depth_conv = DynamicConv(exp_ch, exp_ch, kernel=kernel, stride=stride, groups=exp_ch, **dyconv)
        self.depth_norm = batch_norm(exp_ch)
        self.depth_act = DynamicReLU(exp_ch, context, cfg.relu_pieces)
        self.ca = CoordinateAttention()
        self.proj_conv = DynamicConv(exp_ch, out_ch, kernel=1, **dyconv)
        self.proj_norm = batch_norm(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        ctx = self.context_gen(x)
        out = x
        if self.expands:
            out = self.exp_act(self.exp_norm(self.exp_conv(out, ctx.vector)))
        out = self.depth_act(self.depth_norm(self.depth_conv(out, ctx.vector)), ctx.vector)
        out = self.proj_norm(self.proj_conv(self.ca(out, ctx), ctx.vector))
        return out + x if self.residual else out


class DynamicMobileNet(nn.Module):
    """A dymn tagger: (B, 1, mels, frames) log-mel → (B, num_classes) raw logits."""

    def __init__(self, cfg: DyMNConfig) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        ch = lambda c: round_channels(c * cfg.width)  # noqa: E731 - one-line width rule
        self.in_c = ConvNormAct(1, ch(_BASE_BLOCKS[0][0]), 3, 2, act=nn.Hardswish)
        plain = MNConfig(se_dims="")  # the static blocks of "replace_se" networks have no excitation
        strides = iter(cfg.strides)
        layers: list[nn.Module] = []
        for (in_c, kernel, exp_c, out_c, _, hardswish, strided), dynamic in zip(
                _BASE_BLOCKS, DYNAMIC_BLOCK_SETS[cfg.dynamic_blocks], strict=True):
            stride = next(strides) if strided else 1
            if dynamic:
                layers.append(DynamicBlock(ch(in_c), kernel, ch(exp_c), ch(out_c), hardswish, stride, cfg))
            else:
                layers.append(InvertedResidual(ch(in_c), kernel, ch(exp_c), ch(out_c), False, hardswish, stride,
                                               0, 0, plain))
        self.layers = nn.ModuleList(layers)
        last_in = ch(_BASE_BLOCKS[-1][3])
        self.num_features = 6 * last_in
        self.out_c = ConvNormAct(last_in, self.num_features, 1, act=nn.Hardswish)
        self.classifier = classifier_head(self.num_features, ch(_BASE_HEAD_CHANNELS), cfg.num_classes,
                                          cfg.head, cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """EfficientAT's init for the static layers; the dynamic parts start neutral (uniform kernel
        attention, plain ReLU, constant gates), so an untrained DyMN computes a static MobileNet.

        Why not random context weights as upstream draws them: they feed back (a louder input opens
        the gates and steepens the ReLUs, which makes the next block louder still), and an untrained
        network with measured BatchNorm statistics (`load_teacher(random_init=True)`) then overflows
        in eval mode on any input unlike its calibration clips. Released weights replace all of this.
        """
        init_layers(self)
        for module in self.modules():
            if isinstance(module, (ContextGenerator, DynamicConv, DynamicReLU)):
                module.reset_parameters()

    def forward_features(self, mel: Tensor) -> Tensor:
        """The last feature map (B, num_features, F', T')."""
        x = self.in_c(check_mel_input(mel))
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)

    def forward_head(self, fmap: Tensor) -> Tensor:
        return self.classifier(fmap).flatten(1)

    def forward(self, mel: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(mel))


def create_dymn(width: float = 1.0, num_classes: int = 527, strides: Sequence[int] = (2, 2, 2, 2),
                dynamic_blocks: str = "all", **kwargs) -> DynamicMobileNet:
    """Build a dymn network (random weights); see `teacher.load_teacher` for released ones."""
    return DynamicMobileNet(DyMNConfig(width=width, num_classes=num_classes, strides=tuple(strides),
                                       dynamic_blocks=dynamic_blocks, **kwargs))
