"""Every setting of one teacher fine-tuning: the `fat finetune-teacher` options, the params.yaml keys and
what a resume may not change, one field each.

Defaults are EfficientAT's downstream recipe (its ex_esc50.py): 80 epochs of Adam at lr 6e-5
without weight decay, batch 128, an exponential warm-up over 10 epochs and a linear ramp-down
over 65 epochs from epoch 10 to 1 % of the rate; waveform augmentation (±12 dB gain, a roll of
up to ±4000 samples, half of the clips mixed with a partner, λ ~ Beta(2, 2)), mixup of the
mel spectrograms (α 0.3) and the front end's moving filter edges (fmin + 0..10 Hz, fmax ±
1000 Hz); no frequency or time masks. Clips are cut or zero-padded to `clip_seconds` at 32 kHz.
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

DATA, MODEL, AUGMENT, OPTIM, RUNTIME = "data", "model", "augmentation", "optimisation", "runtime"
LOSSES = ("auto", "ce", "bce")


@dataclass(kw_only=True)
class FinetuneSettings:
    # data
    train: tuple[Path, ...] = option(
        help="training datafile(s) (AST JSON), drawn from as one list; required, default: none", metavar="DATAFILE",
        group=DATA)
    valid: Path = option(help="validation datafile, scored every epoch (ESC-50: the held-out fold); required, "
                              "default: none", group=DATA)
    labels: Path | None = option(
        None, "label CSV index,mid,display_name: the new head's classes (default: class_labels_indices.csv beside "
              "the first --train)", group=DATA)
    packed: list[Path] = packed_option(group=DATA)
    out: Path = option(help="output folder: teacher.pt, train_state.pt, result.json, logs; required, default: none",
                       group=DATA)
    # model
    teacher: str = option("mn10_as", "the registry entry to start from (mn, DyMN or any family `fat logits` "
                                     "knows); its AudioSet head is replaced by one for the label CSV's classes",
                          metavar="NAME", group=MODEL, resume=False)
    checkpoint: Path | None = option(
        None, "the entry's released checkpoint as a local file (default: the cached download)", group=MODEL,
        resume=False)
    random_init: bool = option(
        False, "start from random weights instead of the released ones (tests, offline runs: nothing learned on "
               "AudioSet is carried over)", group=MODEL, resume=False)
    bn_clips: int | None = option(
        None, "before each validation (and so in the saved teacher), the BatchNorm statistics are measured afresh "
              "over up to N training clips without augmentation: from scratch, BatchNorm's 1 %-per-step running "
              "averages lag far behind the network and eval mode is near chance; 0 = off (default: 1024 with "
              "--random-init, else off, as upstream)", unit="clips", minimum=0, group=MODEL, resume=False)
    name: str | None = option(
        None, "the teacher's name in its file and in logits stores made with it (default: <teacher>-finetuned)",
        group=MODEL)
    clip_seconds: float = option(10.0, "every clip is zero-padded or cut to this length at 32 kHz (ESC-50: 5)",
                                 unit="s", above=0, group=MODEL, resume=False)
    # augmentation
    gain_db: int = option(12, "random gain of each clip, a whole number of dB in [-N, N); 0 = off", unit="dB",
                          minimum=0, group=AUGMENT, resume=False)
    roll_samples: int = option(4000, "circular roll of each waveform by up to ±N samples; 0 = off", unit="samples",
                               minimum=0, group=AUGMENT, resume=False)
    wavmix: float = option(0.5, "fraction of clips mixed on the waveform with a partner from the batch (λ ~ "
                                "Beta(2, 2), the larger share kept by the clip); 0 = off", minimum=0, maximum=1,
                           group=AUGMENT, resume=False)
    mixup_alpha: float = option(0.3, "mixup of the mel spectrograms, λ ~ Beta(α, α) per clip; 0 = off", minimum=0,
                                group=AUGMENT, resume=False)
    freqm: int = option(0, "widest frequency mask of the front end; 0 = off", unit="mel bins", minimum=0,
                        group=AUGMENT, resume=False)
    timem: int = option(0, "widest time mask of the front end; 0 = off", unit="frames", minimum=0, group=AUGMENT,
                        resume=False)
    fmin_aug_range: int = option(10, "the mel filters' lowest edge moves up by up to this much per batch",
                                 unit="Hz", minimum=1, group=AUGMENT, resume=False)
    fmax_aug_range: int = option(2000, "the mel filters' highest edge moves by up to ± half this per batch",
                                 unit="Hz", minimum=1, group=AUGMENT, resume=False)
    # optimisation
    loss: str = option("auto", "ce: single-label (softmax cross-entropy), bce: multi-label (sigmoid); auto = ce "
                               "when every training clip has exactly one label", choices=LOSSES, group=OPTIM,
                       resume=False)
    epochs: int = option(80, "training epochs (may grow on --resume)", minimum=1, group=OPTIM)
    batch_size: int = option(128, "clips per batch per process", unit="clips", minimum=1, group=OPTIM, resume=False)
    lr: float = option(6e-5, "peak learning rate (Adam)", above=0, group=OPTIM, resume=False)
    weight_decay: float = option(0.0, "Adam L2 weight decay", minimum=0, group=OPTIM, resume=False)
    warmup_epochs: int = option(10, "exponential warm-up: epoch e (0-based) runs at exp(-5 (1 - e/N)²) of the rate",
                                unit="epochs", minimum=0, group=OPTIM, resume=False)
    rampdown_start: int = option(10, "epochs at the full rate before the linear ramp-down", unit="epochs",
                                 minimum=0, group=OPTIM, resume=False)
    rampdown_epochs: int = option(65, "length of the linear ramp-down", unit="epochs", minimum=1, group=OPTIM,
                                  resume=False)
    last_lr_factor: float = option(0.01, "share of the rate kept after the ramp-down", minimum=0, maximum=1,
                                   group=OPTIM, resume=False)
    # runtime
    device: str = device_option(group=RUNTIME)
    precision: str = precision_option(
        group=RUNTIME, note=" (fp16 training scales its gradients; the front end and the loss run in fp32)")
    num_workers: int = option(4, "DataLoader worker processes per process", minimum=0, group=RUNTIME)
    eval_batch_size: int = option(0, "validation batch (0 = --batch-size)", unit="clips", minimum=0, group=RUNTIME)
    threads: int = threads_option(group=RUNTIME)
    seed: int = option(0, "seed of the new head, sampling and augmentation", group=RUNTIME, resume=False)
    resume: bool = option(False, "continue the run saved in --out where it stopped (fresh start if none)",
                          group=RUNTIME)
    log_every: int = option(10, "optimiser steps between steps.csv rows", minimum=1, group=RUNTIME)
    valid_every: int = option(1, "validate every N epochs, and always after the last one (each validation also "
                                 "measures BatchNorm with --bn-clips)", unit="epochs", minimum=1, group=RUNTIME)
    progress: bool | None = option(None, "progress bar (default: when stderr is a terminal)", group=RUNTIME)
    dvclive: bool = option(True, "write DVCLive metrics and plots to <out>/dvclive", group=RUNTIME)
    skip: bool = option(False, "train nothing, only write <out>/README.md saying so (presets whose teacher already "
                               "knows their classes, e.g. AudioSet's, set it in params.yaml)", group=RUNTIME)

    def __post_init__(self) -> None:
        self.train = paths(self.train)
        self.packed = [Path(p) for p in self.packed]
        for key in ("valid", "labels", "out", "checkpoint"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, Path):
                setattr(self, key, Path(value))
        if self.labels is None and self.train:
            self.labels = label_csv_beside(self.train[0])
        if self.name is None:
            self.name = f"{self.teacher}-finetuned"
        if self.bn_clips is None:
            self.bn_clips = 1024 if self.random_init else 0

    def check(self) -> None:
        """Inputs first (a missing --train makes every other complaint moot), then the settings."""
        if not self.train:
            raise FatError("--train needs at least one datafile")
        for key, path in [*(("train", p) for p in self.train), ("valid", self.valid), ("labels", self.labels)]:
            if not path.is_file():
                raise FatError(f"{path}: no such file (--{key})")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise FatError(f"{self.checkpoint}: no such file (--checkpoint)")
        check_values(self)
        if self.random_init and self.checkpoint is not None:
            raise FatError("--random-init and --checkpoint exclude each other")
        if not self.name or any(ch in self.name for ch in "/\\\n"):
            raise FatError(f"--name {self.name!r}: one line without path separators")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (for the state and the teacher file, loaded with weights_only=True)."""
        return plain_dict(self)


RESUME_INVARIANT = resume_invariant(FinetuneSettings)


SKIPPED_WHY = ("These params (finetune.skip: true) fine-tune no teacher: the logits stage runs a released one\n"
               "(`logits.teacher`), which already knows these classes.")
