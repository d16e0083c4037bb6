"""Every setting of one training run: the `fat train` options, the params.yaml `train:` keys and what a
resume may not change, one field each; checked once before anything heavy starts.

Defaults are AST's AudioSet-balanced recipe (Adam β 0.95/0.999, wd 5e-7, lr 5e-5, batch 12,
25 epochs, decay ×0.5 every 5 epochs from epoch 10, weight averaging of epochs 6–25,
SpecAugment 48/192, mixup 0.5, AudioSet's fbank statistics) with EfficientAT's KD weighting
(λ = 0.1, T = 1). The fbank statistics follow the starting weights (`default_norm`): a Hugging Face
AST folder's own when it records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import FatError
from pipeline.datafile import label_csv_beside
from pipeline.packed.settings import packed_option
from pipeline.settings import (
    check_values, device_option, option, paths, plain_dict, precision_option, resume_invariant, threads_option,
)

DATA, MODEL, FEATURES, OBJECTIVE = "data", "model", "features and augmentation", "objective"
OPTIM, SAMPLING, RUNTIME = "optimisation", "sampling", "runtime"


@dataclass(kw_only=True)
class TrainConfig:
    # data
    train: tuple[Path, ...] = option(
        help="training datafile(s) (AST JSON), several are drawn from as one list (e.g. balanced + unbalanced "
             "AudioSet); required, default: none", metavar="DATAFILE", group=DATA)
    valid: Path = option(help="validation datafile (AST JSON), scored every epoch; required, default: none",
                         group=DATA)
    labels: Path | None = option(
        None, "label CSV index,mid,display_name (default: class_labels_indices.csv beside the first --train)",
        group=DATA)
    packed: list[Path] = packed_option(group=DATA)
    teacher: Path | None = option(
        None, "teacher logits store (HDF5 from `fat logits`); needed when --kd-lambda < 1 (default: none)", group=DATA)
    missing_teacher: str = option(
        "error", "training clips without a teacher row: error (name them and stop) or mask (leave them out of the "
                 "KD term)", choices=("error", "mask"), group=DATA)
    out: Path = option(help="output folder of this experiment, e.g. models/student; required, default: none",
                       group=DATA)
    label_noise: float = option(
        0.0, "fraction of training clips given another such clip's labels (seeded, reproducible; a test bed for "
             "what a teacher adds when labels are wrong, pipeline.training.label_noise); 0 = the datafile's labels",
        group=DATA, resume=False)
    label_noise_seed: int = option(0, "seed of which clips --label-noise corrupts and how", group=DATA, resume=False)
    # model
    model_size: str = option("base384", "DeiT backbone of the AST", choices=("tiny224", "small224", "base224", "base384"),
                             group=MODEL, resume=False)
    depth: int = option(
        0, "transformer blocks; 0 = the size's own (12). Fewer blocks give a shallower backbone of the same width "
           "that trains from scratch (no --imagenet-weights / --ast-checkpoint): on small data, more optimiser "
           "steps in the same time (the demo's student)", unit="blocks", minimum=0, group=MODEL, resume=False)
    fstride: int = option(10, "patch stride along frequency", unit="mel bins", group=MODEL, resume=False)
    tstride: int = option(10, "patch stride along time", unit="frames", group=MODEL, resume=False)
    target_frames: int = option(1024, "input length, padded or cut", unit="10 ms frames", minimum=1, group=MODEL,
                                resume=False)
    num_mel_bins: int = option(128, "fbank mel bins", minimum=1, group=MODEL, resume=False)
    imagenet_weights: Path | None = option(
        None, "local timm DeiT-distilled state-dict file to start from (default: none)", group=MODEL)
    ast_checkpoint: Path | None = option(
        None, "AST checkpoint to start from: a released AudioSet .pth, or a Hugging Face AST folder "
              "(config.json + model.safetensors) (default: none)", group=MODEL)
    tome_r: str = option(
        "0", "tokens merged per block while training: 16, per layer 16 16 8 (or 16,16,8), a schedule 16:-1, or a "
             "schedule file (.json from fat tune-r); 0 = plain AST", nargs="+", metavar="R", group=MODEL, resume=False)
    drop_path: float = option(0.0, "stochastic depth rate (0..1)", minimum=0, group=MODEL, resume=False)
    head_init: str = option(
        "auto", "classifier head at the start: prior = bias at the log-odds of each class's training frequency "
                "(focal-loss prior init, pipeline.training.head_prior), default = the model's own init (AST's); "
                "auto = prior unless the head comes from --ast-checkpoint", choices=("auto", "prior", "default"),
        group=MODEL, resume=False)
    grad_checkpointing: bool = option(
        False, "recompute block activations in backward to save GPU memory (r = 0 only)", group=MODEL)
    # features and augmentation
    norm_mean: float | None = option(
        None, "fbank mean, natural-log mel power (default: the starting weights': a Hugging Face --ast-checkpoint "
              "folder's preprocessor_config.json, else AudioSet's, student.features.NORM_STATS; `fat stats` gives a "
              "dataset's own)", group=FEATURES, resume=False)
    norm_std: float | None = option(None, "fbank std (default: as --norm-mean)", above=0, group=FEATURES, resume=False)
    freqm: int = option(48, "SpecAugment max frequency-mask width; 0 = off", unit="mel bins", minimum=0,
                        group=FEATURES, resume=False)
    timem: int = option(192, "SpecAugment max time-mask width; 0 = off", unit="frames", minimum=0, group=FEATURES,
                        resume=False)
    mixup: float = option(0.5, "fraction of training clips mixed with a random partner on the waveform (0..1)",
                          group=FEATURES, resume=False)
    noise: bool = option(False, "add AST's uniform fbank noise (Speech Commands recipe)", group=FEATURES, resume=False)
    time_shift: int = option(0, "circular time roll by up to this many frames (AST's Speech Commands: 10; 0 = off)",
                             unit="frames", minimum=0, group=FEATURES, resume=False)
    # objective
    loss: str = option("bce", "bce: multi-label (sigmoid KD); ce: single-label (softmax-temperature KL)",
                       choices=("bce", "ce"), group=OBJECTIVE, resume=False)
    metric: str = option("auto", "main validation metric; auto = map for bce, accuracy for ce",
                         choices=("auto", "map", "accuracy"), group=OBJECTIVE)
    kd_lambda: float = option(0.1, "λ: weight of the label loss; 1 − λ weighs the KD loss (1 = no teacher)",
                              group=OBJECTIVE, resume=False)
    kd_temperature: float = option(1.0, "KD temperature T (dividing teacher logits)", above=0, group=OBJECTIVE,
                                   resume=False)
    # optimisation
    epochs: int = option(25, "training epochs (may grow on --resume)", minimum=1, group=OPTIM)
    batch_size: int = option(12, "clips per batch per process", unit="clips", minimum=1, group=OPTIM, resume=False)
    lr: float = option(5e-5, "peak learning rate (Adam)", above=0, group=OPTIM, resume=False)
    weight_decay: float = option(5e-7, "Adam L2 weight decay", minimum=0, group=OPTIM, resume=False)
    adam_betas: tuple[float, float] = option((0.95, 0.999), "Adam betas", nargs=2, metavar=("B1", "B2"), group=OPTIM,
                                             resume=False)
    warmup_steps: int = option(1000, "linear learning-rate warm-up; 0 = off", unit="optimiser steps", minimum=0,
                               group=OPTIM, resume=False)
    lr_decay_start: int = option(10, "epochs before the first step decay", minimum=0, group=OPTIM, resume=False)
    lr_decay_step: int = option(5, "epochs between step decays", minimum=1, group=OPTIM, resume=False)
    lr_decay_factor: float = option(0.5, "learning-rate factor at each decay", above=0, maximum=1, group=OPTIM,
                                    resume=False)
    wa: bool = option(True, "final model = mean of the weights after epochs --wa-start..--wa-end", group=OPTIM,
                      resume=False)
    wa_start: int = option(6, "first epoch in the weight average (1-based)", group=OPTIM, resume=False)
    wa_end: int = option(25, "last epoch in the weight average (1-based, inclusive; may grow on --resume)",
                         group=OPTIM)
    grad_clip: float = option(0.0, "clip the gradient norm to this (0 = off)", minimum=0, group=OPTIM, resume=False)
    accum_steps: int = option(1, "batches accumulated per optimiser step", minimum=1, group=OPTIM, resume=False)
    # sampling
    balanced: bool = option(
        False, "AST's balanced sampling: per-clip weights from label frequencies, with replacement", group=SAMPLING,
        resume=False)
    epoch_size: int = option(0, "clips per epoch over all processes (0 = the training set's size)", unit="clips",
                             minimum=0, group=SAMPLING, resume=False)
    # runtime
    device: str = device_option(group=RUNTIME)
    precision: str = precision_option(
        group=RUNTIME, note=" (fp16 training scales its gradients; losses are computed in fp32)")
    num_workers: int = option(4, "DataLoader worker processes per process", minimum=0, group=RUNTIME)
    eval_batch_size: int = option(0, "validation batch (0 = 2 × --batch-size)", unit="clips", minimum=0,
                                  group=RUNTIME)
    threads: int = threads_option(group=RUNTIME)
    compile: bool = option(False, "torch.compile the student (merging included): the first steps build the graphs; "
                                  "eager with a warning where it cannot compile", group=RUNTIME)
    seed: int = option(0, "seed of initial weights, sampling and augmentation", group=RUNTIME, resume=False)
    resume: bool = option(
        False, "continue the run saved in --out exactly where it stopped (fresh start if none)", group=RUNTIME)
    keep_epoch_checkpoints: bool = option(
        False, "also write epoch_<n>.safetensors student files (default: only student.safetensors)", group=RUNTIME)
    log_every: int = option(20, "optimiser steps between steps.csv rows", minimum=1, group=RUNTIME)
    progress: bool | None = option(
        None, "progress bar with loss and clips/s (default: when stderr is a terminal)", group=RUNTIME)
    dvclive: bool = option(True, "write DVCLive metrics and plots to <out>/dvclive", group=RUNTIME)

    def __post_init__(self) -> None:
        self.train = paths(self.train)
        self.packed = [Path(p) for p in self.packed]
        for name in ("valid", "labels", "out", "teacher", "imagenet_weights", "ast_checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if self.labels is None and self.train:
            self.labels = label_csv_beside(self.train[0])
        # "16 16 8" on the command line (or a list in params.yaml) is the text form "16,16,8".
        self.tome_r = self.tome_r if isinstance(self.tome_r, str) else ",".join(str(r) for r in self.tome_r)
        self.adam_betas = tuple(self.adam_betas)
        self.norm_source = "from --norm-mean / --norm-std"
        if self.norm_mean is None or self.norm_std is None:
            (mean, std), source = default_norm(self.ast_checkpoint)
            given = "--norm-mean" if self.norm_mean is not None else "--norm-std" if self.norm_std is not None else None
            self.norm_source = f"from {source}" + (f" ({given} as given)" if given else "")
            self.norm_mean = mean if self.norm_mean is None else self.norm_mean
            self.norm_std = std if self.norm_std is None else self.norm_std

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
    def changes_depth(self) -> bool:
        """--depth asks for another number of blocks than --model-size has (0 or the size's own: no change)."""
        from student.ast import MODEL_SIZES  # deferred, as in __post_init__

        return self.depth not in (0, MODEL_SIZES[self.model_size].depth)

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
            is_hf_folder = name == "ast_checkpoint" and path is not None and path.is_dir()
            if path is not None and not path.is_file() and not is_hf_folder and (name != "teacher" or self.uses_teacher):
                raise FatError(f"{path}: no such file (--{name.replace('_', '-')})")

    def check_settings(self) -> None:
        """The options make sense together (ranges, the teacher a KD loss needs, the averaging window)."""
        check_values(self)
        if not 0.0 <= self.kd_lambda <= 1.0:
            raise FatError(f"--kd-lambda must lie in [0, 1], got {self.kd_lambda}")
        if self.uses_teacher and self.teacher is None:
            raise FatError(f"--kd-lambda {self.kd_lambda} < 1 needs teacher logits: pass --teacher STORE.h5 "
                           "(or --kd-lambda 1 for plain supervised training)")
        if not 0.0 <= self.label_noise <= 1.0:
            raise FatError(f"--label-noise is a fraction of the training clips and must lie in [0, 1], got {self.label_noise}")
        if not 0.0 <= self.mixup <= 1.0:
            raise FatError(f"--mixup is the fraction of mixed clips and must lie in [0, 1], got {self.mixup}")
        if self.wa and not 1 <= self.wa_start <= self.wa_end:
            raise FatError(f"weight averaging needs 1 ≤ --wa-start ≤ --wa-end, got {self.wa_start}..{self.wa_end}")
        if self.wa and self.wa_start > self.epochs:
            raise FatError(f"--wa-start {self.wa_start} is after the last epoch ({self.epochs}); "
                           "lower it or pass --no-wa")
        if self.changes_depth and (self.imagenet_weights is not None or self.ast_checkpoint is not None):
            raise FatError(f"--depth {self.depth} builds a new, shallower backbone that starts from scratch: "
                           "drop --imagenet-weights / --ast-checkpoint, or --depth 0 to keep the pretrained one")
        if not all(0.0 <= beta < 1.0 for beta in self.adam_betas):
            raise FatError(f"--adam-betas must lie in [0, 1), got {' '.join(map(str, self.adam_betas))}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (for checkpoints loaded with weights_only=True, and for logs)."""
        return plain_dict(self)


def default_norm(ast_checkpoint: Path | None) -> tuple[tuple[float, float], str]:
    """The fbank (mean, std) a run uses without --norm-mean/--norm-std, and where it comes from: those the
    starting weights were trained with. A Hugging Face AST folder records them in its
    preprocessor_config.json; everything else starts from AudioSet's (AST's constants, which the
    released AST checkpoints were trained with). Data unlike the start's gets its own from `fat stats`."""
    # Deferred: student imports torch, and `fat --help` builds its parser from TrainConfig.
    from student import hf
    from student.errors import StudentError
    from student.features import NORM_STATS

    audioset = "AudioSet's fbank statistics (student.features.NORM_STATS)"
    if ast_checkpoint is not None and hf.is_hf_checkpoint(ast_checkpoint):
        try:
            checkpoint = hf.read_hf_checkpoint(ast_checkpoint)
        except StudentError as exc:
            raise FatError(f"--ast-checkpoint: {exc}") from None
        if checkpoint.norm is not None:
            return checkpoint.norm, f"{checkpoint.folder / hf.PREPROCESSOR_NAME} (--ast-checkpoint)"
        return NORM_STATS["audioset"], f"{audioset}: {checkpoint.folder} has no {hf.PREPROCESSOR_NAME}"
    return NORM_STATS["audioset"], audioset


# Settings that must not change when a run is resumed (the fields declared with resume=False).
RESUME_INVARIANT = resume_invariant(TrainConfig)


def saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A config saved in a training state, in today's field names (states written before the Adam betas
    were one field, `adam_betas`, held `beta1` and `beta2`)."""
    config = dict(saved)
    if "adam_betas" not in config and "beta1" in config:
        config["adam_betas"] = [config.pop("beta1"), config.pop("beta2")]
    return config
