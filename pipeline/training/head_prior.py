"""The classifier head's starting point: its bias set to the label prior of the training clips.

A default `nn.Linear` head starts every class at p ≈ 0.5, so a multi-label student spends its
first steps pushing the (many) absent classes down and learns the label frequencies before
anything about the audio. Setting the bias to the log-odds of each class's frequency in the
training datafile (the prior initialisation of Lin et al., "Focal Loss for Dense Object
Detection", 2017) starts it at the frequencies instead.

The head's weights keep the model's own initialisation (zero or N(0, 0.01²) weights, as that
paper draws them, slowed learning: tests/test_train.py's task fell from mAP ≥ 0.9 to 0.78, since
the blocks get their gradient through those weights). But an untrained backbone's features
barely differ between clips, so a random head adds a common offset per class: the plain
log-odds gave a step-0 probability of 0.92 to a class at 0.79. `calibrate_bias` therefore moves
each class's bias, by bisection, until the mean predicted probability over a sample of training
clips is the frequency exactly.

Classes that no training clip (or every clip) carries would need an infinite bias: their
frequency is clamped to [FLOOR, 1 − FLOOR] first. A single-label (softmax) head gets log p
instead of the log-odds: softmax(log p) = p.

Which head gets it (`--head-init`): `prior`; `default` (the model's own nn.Linear initialisation,
as AST trains); `auto` = `prior` when the head is new, `default` when it comes from an
`--ast-checkpoint` (a released head is never overwritten; one of another class count is re-made
as AST does). A resumed run takes its head from the saved state either way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.core.errors import FatError

HEAD_INITS = ("auto", "prior", "default")
FLOOR = 1e-4  # frequency clamp: log-odds within ±9.2
CALIBRATION_CLIPS = 64  # training clips whose step-0 mean probability is set to the frequencies


def resolve_head_init(choice: str, from_checkpoint: bool) -> str:
    """`prior` or `default` for this run's head; `auto` is `prior` unless the head comes from a checkpoint."""
    if choice not in HEAD_INITS:
        raise FatError(f"--head-init must be one of {', '.join(HEAD_INITS)}, got {choice!r}")
    if choice == "auto":
        return "default" if from_checkpoint else "prior"
    return choice


def label_frequencies(class_indices: np.ndarray, num_clips: int, num_classes: int) -> np.ndarray:
    """Fraction of clips that carry each class, from a clip list's CSR class numbers (no dense N × C table:
    full AudioSet would need 4 GB for it)."""
    if num_clips < 1:
        raise FatError("the label prior needs at least one training clip")
    counts = np.bincount(np.asarray(class_indices, dtype=np.int64), minlength=num_classes)
    return counts[:num_classes].astype(np.float64) / num_clips


def prior_bias(frequencies: np.ndarray, multi_label: bool = True, floor: float = FLOOR) -> np.ndarray:
    """log(p / (1 − p)) of each class frequency (sigmoid head), or log p (softmax head); p clamped to
    [floor, 1 − floor]."""
    p = np.clip(np.asarray(frequencies, dtype=np.float64), floor, 1.0 - floor)
    return np.log(p) - np.log1p(-p) if multi_label else np.log(p)


def head_linear(model: nn.Module) -> nn.Linear:
    """The last Linear of the model's `mlp_head` (LayerNorm + Linear in the AST)."""
    head = getattr(model, "mlp_head", None)
    last = head[-1] if isinstance(head, nn.Sequential) and len(head) else head
    if not isinstance(last, nn.Linear):
        raise FatError(f"{type(model).__name__} has no mlp_head ending in nn.Linear to initialise")
    return last


@torch.no_grad()
def init_head_from_prior(model: nn.Module, frequencies: np.ndarray, multi_label: bool = True,
                         floor: float = FLOOR, weight_std: float | None = None,
                         generator: torch.Generator | None = None) -> dict[str, float | int | None]:
    """Set the head's bias to the prior (log-odds, or log p for a softmax head) and redraw its weights from
    N(0, weight_std²) (None: keep them). Returns a summary for the student file."""
    linear = head_linear(model)
    if linear.out_features != len(frequencies):
        raise FatError(f"the head predicts {linear.out_features} classes but the training labels have "
                       f"{len(frequencies)}")
    bias = torch.from_numpy(prior_bias(frequencies, multi_label, floor))
    linear.bias.copy_(bias.to(linear.bias.device, linear.bias.dtype))
    if weight_std is not None:
        weight = torch.randn(linear.weight.shape, generator=generator, dtype=torch.float64) * weight_std
        linear.weight.copy_(weight.to(linear.weight.device, linear.weight.dtype))
    clamped = int(np.sum((frequencies < floor) | (frequencies > 1.0 - floor)))
    return {"floor": floor, "weight_std": weight_std, "clamped_classes": clamped}


def solve_bias(offsets: torch.Tensor, frequencies: np.ndarray, floor: float = FLOOR, steps: int = 60) -> torch.Tensor:
    """Per class c the b with mean_i sigmoid(offsets[i, c] + b) = p_c (p clamped), by bisection (monotone in b)."""
    z = offsets.double()
    target = torch.from_numpy(np.clip(np.asarray(frequencies, dtype=np.float64), floor, 1.0 - floor))
    spread = float(z.abs().max()) if z.numel() else 0.0
    bound = float(np.log((1 - floor) / floor)) + spread + 1.0
    low = torch.full_like(target, -bound)
    high = torch.full_like(target, bound)
    for _ in range(steps):
        middle = (low + high) / 2
        above = torch.sigmoid(z + middle).mean(dim=0) > target
        high = torch.where(above, middle, high)
        low = torch.where(above, low, middle)
    return (low + high) / 2


@torch.no_grad()
def calibrate_bias(model: nn.Module, features: torch.Tensor, frequencies: np.ndarray, floor: float = FLOOR,
                   chunk: int = 8) -> float:
    """Move the head's bias so that the model's mean sigmoid over `features` (a batch of training clips) is each
    class's frequency; returns the largest change (the common offset the random head had added). The model runs
    `chunk` clips at a time (a base384's attention over 64 clips would not fit a GPU)."""
    linear = head_linear(model)
    was_training = model.training
    model.eval()
    logits = torch.cat([model(part).double().cpu() for part in features.split(chunk)])
    model.train(was_training)
    bias = linear.bias.detach().double().cpu()
    offsets = logits.cpu() - bias  # what the weights add to each clip
    new_bias = solve_bias(offsets, frequencies, floor)
    linear.bias.copy_(new_bias.to(linear.bias.device, linear.bias.dtype))
    return float((new_bias - bias).abs().max())


def prior_summary(model: nn.Module, frequencies: np.ndarray, clips: int, calibration_clips: int | None = None) -> str:
    """One line on the head's starting bias (what the run prints): how many classes, min / median / max, and
    how many classes no training clip carries (their bias sits at the floor's log-odds)."""
    bias = head_linear(model).bias.detach().double().cpu().numpy()
    absent = int(np.sum(np.asarray(frequencies) <= 0))
    calibrated = f", calibrated on {calibration_clips} clips" if calibration_clips else ""
    line = (f"head prior: {bias.size} classes, bias min {bias.min():.3g} / median {np.median(bias):.3g} / max "
            f"{bias.max():.3g} (the label frequencies of {clips} training clips{calibrated})")
    if absent:
        line += f"; {absent} classes no training clip carries start at ≤ {bias[np.asarray(frequencies) <= 0].max():.3g}"
    return line
