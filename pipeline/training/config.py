"""Every setting of one training run, checked once before anything heavy starts.

Defaults are AST's AudioSet-balanced recipe (Adam β 0.95/0.999, wd 5e-7, lr 5e-5, batch 12,
25 epochs, decay ×0.5 every 5 epochs from epoch 10, weight averaging of epochs 6–25,
SpecAugment 48/192, mixup 0.5) with EfficientAT's KD weighting (λ = 0.1, T = 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.errors import FatError

LOSSES = ("bce", "ce")
METRICS = ("auto", "map", "accuracy")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda")
MISSING_TEACHER = ("error", "mask")

# Settings that must not change when a run is resumed: they change what the saved state means.
RESUME_INVARIANT = (
    "model_size", "fstride", "tstride", "target_frames", "num_mel_bins", "loss", "batch_size", "accum_steps",
    "seed", "balanced", "epoch_size", "kd_lambda", "kd_temperature", "mixup", "freqm", "timem", "noise",
    "time_shift", "lr", "tome_r", "warmup_steps", "lr_decay_start", "lr_decay_step", "lr_decay_factor", "wa",
    "wa_start", "weight_decay", "beta1", "beta2", "grad_clip", "drop_path", "norm_mean", "norm_std",
)


@dataclass
class TrainConfig:
    # data
    train: tuple[Path, ...]  # one or more datafiles, drawn from as one list
    valid: Path
    labels: Path
    out: Path
    teacher: Path | None = None
    missing_teacher: str = "error"
    # model
    model_size: str = "base384"
    fstride: int = 10
    tstride: int = 10
    target_frames: int = 1024
    num_mel_bins: int = 128
    imagenet_weights: Path | None = None
    ast_checkpoint: Path | None = None
    tome_r: str = "0"
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    # features and augmentation
    norm_mean: float = -4.2677393
    norm_std: float = 4.5689974
    freqm: int = 48
    timem: int = 192
    mixup: float = 0.5
    noise: bool = False
    time_shift: int = 0
    # objective
    loss: str = "bce"
    metric: str = "auto"
    kd_lambda: float = 0.1
    kd_temperature: float = 1.0
    # optimisation
    epochs: int = 25
    batch_size: int = 12
    lr: float = 5e-5
    weight_decay: float = 5e-7
    beta1: float = 0.95
    beta2: float = 0.999
    warmup_steps: int = 1000
    lr_decay_start: int = 10
    lr_decay_step: int = 5
    lr_decay_factor: float = 0.5
    wa: bool = True
    wa_start: int = 6
    wa_end: int = 25
    grad_clip: float = 0.0
    accum_steps: int = 1
    # sampling
    balanced: bool = False
    epoch_size: int = 0
    # runtime
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 4
    eval_batch_size: int = 0
    seed: int = 0
    resume: bool = False
    keep_epoch_checkpoints: bool = False
    log_every: int = 20
    progress: bool | None = None
    dvclive: bool = True

    def __post_init__(self) -> None:
        paths = [self.train] if isinstance(self.train, (str, Path)) else list(self.train)
        self.train = tuple(Path(p) for p in paths)
        for name in ("valid", "labels", "out", "teacher", "imagenet_weights", "ast_checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        self.tome_r = str(self.tome_r)

    @property
    def multi_label(self) -> bool:
        return self.loss == "bce"

    @property
    def main_metric(self) -> str:
        if self.metric != "auto":
            return self.metric
        return "map" if self.loss == "bce" else "accuracy"

    @property
    def reports_accuracy(self) -> bool:
        """Top-1 accuracy is scored for single-label losses and whenever it is the main metric
        (Speech Commands: BCE training, accuracy as AST reports it)."""
        return not self.multi_label or self.main_metric == "accuracy"

    @property
    def uses_teacher(self) -> bool:
        return self.kd_lambda < 1.0

    def check(self) -> None:
        """Raise FatError for settings that cannot work, before any data is read."""
        self.check_files()
        self.check_settings()

    def check_files(self) -> None:
        """The input files exist: checked first, as a missing --train would make every other complaint moot."""
        if not self.train:
            raise FatError("--train needs at least one datafile")
        for name, path in [*(("train", p) for p in self.train), ("valid", self.valid), ("labels", self.labels)]:
            if not path.is_file():
                raise FatError(f"{path}: no such file (--{name})")
        for name in ("teacher", "imagenet_weights", "ast_checkpoint"):
            path = getattr(self, name)
            if path is not None and not path.is_file() and (name != "teacher" or self.uses_teacher):
                raise FatError(f"{path}: no such file (--{name.replace('_', '-')})")

    def check_settings(self) -> None:
        """The options make sense together (ranges, the teacher a KD loss needs, the averaging window)."""
        choices = {"loss": LOSSES, "metric": METRICS, "amp": AMP_MODES, "device": DEVICES,
                   "missing_teacher": MISSING_TEACHER}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise FatError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.kd_lambda <= 1.0:
            raise FatError(f"--kd-lambda must lie in [0, 1], got {self.kd_lambda}")
        if self.uses_teacher and self.teacher is None:
            raise FatError(f"--kd-lambda {self.kd_lambda} < 1 needs teacher logits: pass --teacher STORE.h5 "
                           "(or --kd-lambda 1 for plain supervised training)")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accum_steps": self.accum_steps,
                    "log_every": self.log_every, "target_frames": self.target_frames,
                    "num_mel_bins": self.num_mel_bins}
        for name, value in positive.items():
            if value < 1:
                raise FatError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
        non_negative = {"warmup_steps": self.warmup_steps, "freqm": self.freqm, "timem": self.timem,
                        "time_shift": self.time_shift, "num_workers": self.num_workers, "grad_clip": self.grad_clip,
                        "epoch_size": self.epoch_size, "eval_batch_size": self.eval_batch_size,
                        "weight_decay": self.weight_decay, "drop_path": self.drop_path}
        for name, value in non_negative.items():
            if value < 0:
                raise FatError(f"--{name.replace('_', '-')} must be ≥ 0, got {value}")
        if not 0.0 <= self.mixup <= 1.0:
            raise FatError(f"--mixup is the fraction of mixed clips and must lie in [0, 1], got {self.mixup}")
        if self.lr <= 0 or self.kd_temperature <= 0 or self.norm_std <= 0:
            raise FatError("--lr, --kd-temperature and --norm-std must be positive")
        if not 0.0 < self.lr_decay_factor <= 1.0 or self.lr_decay_step < 1 or self.lr_decay_start < 0:
            raise FatError("the step decay needs --lr-decay-start ≥ 0, --lr-decay-step ≥ 1 and 0 < --lr-decay-factor ≤ 1")
        if self.wa and not 1 <= self.wa_start <= self.wa_end:
            raise FatError(f"weight averaging needs 1 ≤ --wa-start ≤ --wa-end, got {self.wa_start}..{self.wa_end}")
        if self.wa and self.wa_start > self.epochs:
            raise FatError(f"--wa-start {self.wa_start} is after the last epoch ({self.epochs}); "
                           "lower it or pass --no-wa")
        if not 0.0 <= self.beta1 < 1.0 or not 0.0 <= self.beta2 < 1.0:
            raise FatError("Adam betas must lie in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (for checkpoints loaded with weights_only=True, and for logs)."""
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

        return {key: plain(value) for key, value in asdict(self).items()}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
