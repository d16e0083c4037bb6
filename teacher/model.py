"""EfficientAT's "mn" audio taggers: MobileNetV3-Large on one-channel log-mel input.

The module tree mirrors the released checkpoints so that their state dicts load with
`strict=True`: `features.0` is the stem, `features.1..15` the inverted-residual blocks (each a
`block` Sequential of conv-norm-act triples, with the squeeze-excitation at `block.2` where
present), `features.16` the last 1×1 conv, and `classifier` the head ("mlp": pool, flatten,
linear, hardswish, dropout, linear; "fully_convolutional": 1×1 conv, batch norm, pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from teacher.errors import TeacherError

HEAD_TYPES = ("mlp", "fully_convolutional")
SE_AXES = {"c": 1, "f": 2, "t": 3}

# MobileNetV3-Large at width 1.0: (in, kernel, expanded, out, squeeze-excite, hardswish, strided).
# The four strided blocks take their stride from `strides`, in order.
_BASE_BLOCKS: tuple[tuple[int, int, int, int, bool, bool, bool], ...] = (
    (16, 3, 16, 16, False, False, False),
    (16, 3, 64, 24, False, False, True),
    (24, 3, 72, 24, False, False, False),
    (24, 5, 72, 40, True, False, True),
    (40, 5, 120, 40, True, False, False),
    (40, 5, 120, 40, True, False, False),
    (40, 3, 240, 80, False, True, True),
    (80, 3, 200, 80, False, True, False),
    (80, 3, 184, 80, False, True, False),
    (80, 3, 184, 80, False, True, False),
    (80, 3, 480, 112, True, True, False),
    (112, 3, 672, 112, True, True, False),
    (112, 5, 672, 160, True, True, True),
    (160, 5, 960, 160, True, True, False),
    (160, 5, 960, 160, True, True, False),
)
_BASE_HEAD_CHANNELS = 1280


def round_channels(value: float, divisor: int = 8) -> int:
    """Nearest multiple of `divisor` (at least `divisor`), bumped up if rounding lost over 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_out_size(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Output length of a 'same'-padded convolution (padding (k−1)//2·dilation)."""
    padding = (kernel - 1) // 2 * dilation
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class MNConfig:
    """Everything that fixes an mn network's shape (and so its checkpoint's keys)."""

    width: float = 1.0
    num_classes: int = 527
    strides: tuple[int, int, int, int] = (2, 2, 2, 2)
    head: str = "mlp"
    dropout: float = 0.2
    se_dims: str = "c"  # any of c/f/t (channel, frequency, time); "" = no squeeze-excitation
    se_agg: str = "max"  # how several squeeze-excitations are fused
    se_reduction: int = 4
    input_dims: tuple[int, int] = (128, 1000)  # (mel bins, frames): only f/t excitation depends on it
    extra: dict = field(default_factory=dict, compare=False)

    def check(self) -> None:
        check_backbone(self.head, self.strides, self.width, self.num_classes)
        if any(axis not in SE_AXES for axis in self.se_dims):
            raise TeacherError(f"se_dims must use only c, f, t; got {self.se_dims!r}")
        if self.se_agg not in ("max", "avg", "add", "min"):
            raise TeacherError(f"se_agg must be max, avg, add or min; got {self.se_agg!r}")


def check_backbone(head: str, strides: Sequence[int], width: float, num_classes: int) -> None:
    """The settings every EfficientAT family shares (mn and DyMN): head type, stage strides, width, classes."""
    if head not in HEAD_TYPES:
        raise TeacherError(f"unknown head type {head!r}; known: {', '.join(HEAD_TYPES)}")
    if len(strides) != 4 or any(s not in (1, 2) for s in strides):
        raise TeacherError(f"strides must be four values of 1 or 2, got {strides}")
    if not width > 0:
        raise TeacherError(f"width must be positive, got {width}")
    if num_classes < 1:
        raise TeacherError(f"num_classes must be at least 1, got {num_classes}")


class ConvNormAct(nn.Sequential):
    """Conv (no bias) → BatchNorm → optional activation, indexed 0/1/2 like the checkpoints."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = None, eps: float = 1e-3, momentum: float = 0.01) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=eps, momentum=momentum),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Gate one axis (channels, frequency or time) by a bottleneck MLP over its mean profile."""

    def __init__(self, size: int, squeeze: int, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.fc1 = nn.Linear(size, squeeze)
        self.fc2 = nn.Linear(squeeze, size)

    def forward(self, x: Tensor) -> Tensor:
        others = [a for a in (1, 2, 3) if a != self.axis]
        profile = x.mean(dim=others, keepdim=True)  # (B, C|1, F|1, T|1)
        gate = self.fc2(torch.relu(self.fc1(profile.flatten(1))))
        return x * torch.sigmoid(gate).view(profile.shape)


class ConcurrentSE(nn.Module):
    """One squeeze-excitation per chosen axis, run side by side and fused element-wise."""

    def __init__(self, channels: int, freq: int, time: int, axes: str, reduction: int, agg: str) -> None:
        super().__init__()
        sizes = {1: channels, 2: freq, 3: time}
        self.conc_se_layers = nn.ModuleList(
            SqueezeExcite(sizes[SE_AXES[a]], round_channels(sizes[SE_AXES[a]] // reduction), SE_AXES[a]) for a in axes
        )
        self.agg = agg

    def forward(self, x: Tensor) -> Tensor:
        outs = [layer(x) for layer in self.conc_se_layers]
        if len(outs) == 1:
            return outs[0]
        stacked = torch.stack(outs)
        if self.agg == "max":
            return stacked.amax(0)
        if self.agg == "min":
            return stacked.amin(0)
        return stacked.mean(0) if self.agg == "avg" else stacked.sum(0)


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise (k×k, strided) → squeeze-excite → project (1×1), plus identity."""

    def __init__(self, in_ch: int, kernel: int, exp_ch: int, out_ch: int, use_se: bool, hardswish: bool,
                 stride: int, freq: int, time: int, cfg: MNConfig) -> None:
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if exp_ch != in_ch:
            layers.append(ConvNormAct(in_ch, exp_ch, 1, act=act))
        layers.append(ConvNormAct(exp_ch, exp_ch, kernel, stride, groups=exp_ch, act=act))
        if use_se and cfg.se_dims:
            layers.append(ConcurrentSE(exp_ch, freq, time, cfg.se_dims, cfg.se_reduction, cfg.se_agg))
        layers.append(ConvNormAct(exp_ch, out_ch, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


def classifier_head(num_features: int, hidden: int, num_classes: int, head: str, dropout: float) -> nn.Sequential:
    """The head both families share, indexed like the checkpoints: "mlp" = pool, flatten, linear,
    hardswish, dropout, linear; "fully_convolutional" = 1×1 conv, batch norm, mean over positions."""
    if head == "mlp":
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(num_features, hidden),
            nn.Hardswish(inplace=True), nn.Dropout(dropout, inplace=True), nn.Linear(hidden, num_classes),
        )
    return nn.Sequential(
        nn.Conv2d(num_features, num_classes, 1, bias=False),
        nn.BatchNorm2d(num_classes),
        nn.AdaptiveAvgPool2d(1),
    )


def init_layers(root: nn.Module) -> None:
    """EfficientAT's initialisation: convs He (fan-out), norms identity, linears N(0, 0.01), biases 0."""
    for module in root.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


def check_mel_input(mel: Tensor) -> Tensor:
    """(B, mels, frames) or (B, 1, mels, frames) → (B, 1, mels, frames); anything else is an error."""
    if mel.dim() == 3:
        mel = mel.unsqueeze(1)
    if mel.dim() != 4 or mel.shape[1] != 1:
        raise TeacherError(f"expected log-mel input (B, 1, mels, frames) or (B, mels, frames), got {tuple(mel.shape)}")
    return mel


class MobileNetAudio(nn.Module):
    """An mn tagger: (B, 1, mels, frames) log-mel → (B, num_classes) raw logits."""

    def __init__(self, cfg: MNConfig) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        ch = lambda c: round_channels(c * cfg.width)  # noqa: E731 - one-line width rule
        stem = ch(_BASE_BLOCKS[0][0])
        freq, time = (conv_out_size(n, 3, 2) for n in cfg.input_dims)
        layers: list[nn.Module] = [ConvNormAct(1, stem, 3, 2, act=nn.Hardswish)]
        strides = iter(cfg.strides)
        for in_c, kernel, exp_c, out_c, use_se, hardswish, strided in _BASE_BLOCKS:
            stride = next(strides) if strided else 1
            freq, time = conv_out_size(freq, kernel, stride), conv_out_size(time, kernel, stride)
            layers.append(InvertedResidual(ch(in_c), kernel, ch(exp_c), ch(out_c), use_se, hardswish,
                                           stride, freq, time, cfg))
        last_in = ch(_BASE_BLOCKS[-1][3])
        self.num_features = 6 * last_in
        layers.append(ConvNormAct(last_in, self.num_features, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = classifier_head(self.num_features, ch(_BASE_HEAD_CHANNELS), cfg.num_classes,
                                          cfg.head, cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_layers(self)

    def forward_features(self, mel: Tensor) -> Tensor:
        """The last feature map (B, num_features, F', T')."""
        return self.features(check_mel_input(mel))

    def forward_head(self, fmap: Tensor) -> Tensor:
        return self.classifier(fmap).flatten(1)

    def forward(self, mel: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(mel))


def create_mn(width: float = 1.0, num_classes: int = 527, strides: Sequence[int] = (2, 2, 2, 2),
              head: str = "mlp", **kwargs) -> MobileNetAudio:
    """Build an mn network (random weights); see `teacher.load_teacher` for released ones."""
    return MobileNetAudio(MNConfig(width=width, num_classes=num_classes, strides=tuple(strides), head=head, **kwargs))
