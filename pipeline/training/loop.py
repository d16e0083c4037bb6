"""The training run: data, model, optimiser, epochs, validation, weight averaging, resume, SIGTERM.

One `Trainer` per process (torchrun starts one per device). Rank 0 alone writes files.
Longer than most modules (~400 lines) because it is one class whose steps share its state;
everything that stands alone (settings, schedule, averaging, scoring, logs, state) lives beside it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline import runtime
from pipeline.core.errors import FatError
from pipeline.training.averaging import WeightAverager
from pipeline.training.config import RESUME_INVARIANT, TrainConfig, saved_config
from pipeline.training.lengths import FrameTally
from pipeline.training.schedule import LRSchedule, optimizer_steps_per_epoch, schedule_warnings
from pipeline.training.scoring import validate, validation_loader
from pipeline.training.session import EpochSession, run_in_context, worker_init
from pipeline.training.state import STATE_NAME, check_compatible, load_state, set_rng_state

log = logging.getLogger(__name__)

MODEL_NAME = "student.safetensors"  # tensors + config in the header: loads without a pickle
LEGACY_MODEL_NAME = "student.pt"  # what runs before safetensors wrote; still read, never overwritten
RESULT_NAME = "result.json"
INTERRUPTED_EXIT = 143  # 128 + SIGTERM: the job did not finish, its state is saved
# An epoch's running sums: loss, label, kd, teacher coverage (each × clips), clips, label over present classes × clips
SUMS = 6


@dataclass
class RunResult:
    status: str  # "finished" or "interrupted"
    epochs_done: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    model_path: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def train(config: TrainConfig) -> RunResult:
    """Run (or resume) one training; see `fat train --help` for the settings."""
    return run_in_context(config, Trainer)


def teacher_provenance(path: Path) -> dict[str, Any]:
    """What the KD target came from, for the student file; a label-derived oracle store is announced loudly."""
    from pipeline.store import LogitsStore

    store = LogitsStore(path, allow_incomplete=True)
    attrs = store.attrs
    store.close()
    provenance = {"store": path.name, "teacher": str(attrs.get("teacher", "?")),
                  "random_init": bool(attrs.get("random_init", False)),
                  "label_derived": bool(attrs.get("label_derived", False))}
    if provenance["label_derived"]:
        log.warning("!!! %s: %s", path, attrs.get("warning", "label-derived oracle logits, not a teacher"))
    return provenance


def model_path(out: Path) -> Path:
    """The student file of a run in `out`: student.safetensors, or the student.pt of a run that finished
    before training wrote safetensors."""
    legacy = out / LEGACY_MODEL_NAME
    return legacy if legacy.is_file() and not (out / MODEL_NAME).is_file() else out / MODEL_NAME


class Trainer(EpochSession):
    def __init__(self, config: TrainConfig, context: runtime.Context) -> None:
        super().__init__(context)
        self.config = config
        self.out = config.out

    # ================================================================== setup
    def prepare_output(self) -> dict[str, Any] | None:
        out = self.config.out
        state = load_state(out)
        if state is not None and not self.config.resume:
            raise FatError(f"{out / STATE_NAME}: a training run already lives in {out}; pass --resume to continue "
                           "it, or choose another --out")
        for name in (MODEL_NAME, LEGACY_MODEL_NAME):
            if state is None and (out / name).exists() and not self.config.resume:
                raise FatError(f"{out / name} exists: choose another --out (nothing is overwritten)")
        if state is None and self.config.resume:
            log.info("%s: no training state to resume; starting from the beginning", out)
        if state is not None:
            check_compatible(out / STATE_NAME, saved_config(state["config"]), self.config.to_dict(), RESUME_INVARIANT)
        if self.context.is_main:
            out.mkdir(parents=True, exist_ok=True)
        return state

    def build_data(self) -> None:
        from pipeline.datafile import load_clips, load_label_csv
        from pipeline.dataset import Augment, ClipDataset, DeviceInputs, Features, collate_clips, load_teacher_table
        from pipeline.sampling import EpochSampler, balanced_weights

        cfg = self.config
        self.label_set = load_label_csv(cfg.labels)
        # ClipDataset checks that every clip's audio is there, in its file or in --packed stores.
        self.train_clips = load_clips(cfg.train, self.label_set)
        self.valid_clips = load_clips([cfg.valid], self.label_set)
        if not cfg.multi_label:
            self.train_clips.check_single_label()
        if cfg.reports_accuracy:
            self.valid_clips.check_single_label()
        self.data_identity = {"label CSV": self.label_set.sha256, "training clips": self.train_clips.fingerprint(),
                              "validation clips": self.valid_clips.fingerprint()}
        if cfg.label_noise > 0:  # after the identity: a resume checks the datafile's own labels
            from pipeline.training.label_noise import corrupt_labels

            self.train_clips, corrupted = corrupt_labels(self.train_clips, cfg.label_noise, cfg.label_noise_seed)
            log.info("--label-noise %g: %d of %d training clips carry another clip's labels (seed %d)",
                     cfg.label_noise, len(corrupted), len(self.train_clips), cfg.label_noise_seed)
        from pipeline.training.head_prior import label_frequencies

        self.frequencies = label_frequencies(self.train_clips.class_indices, len(self.train_clips),
                                             self.train_clips.num_classes)
        # The classes some training clip carries: the loss over them alone (`label_present`) is not
        # flattened by the hundreds of AudioSet classes a small dataset never has.
        self.present = torch.from_numpy(np.flatnonzero(self.frequencies > 0))
        teacher = None
        self.teacher_provenance: dict[str, Any] | None = None
        if cfg.uses_teacher:
            teacher = load_teacher_table(cfg.teacher, self.train_clips, self.label_set, cfg.missing_teacher)
            log.info("teacher logits for %.1f %% of the training clips", 100 * teacher.coverage)
            self.teacher_provenance = teacher_provenance(cfg.teacher)
        features = Features(cfg.target_frames, cfg.num_mel_bins, cfg.norm_mean, cfg.norm_std)
        augment = Augment(cfg.mixup, cfg.freqm, cfg.timem, cfg.noise, cfg.time_shift)
        self.augment = augment
        self.inputs = DeviceInputs(features, self.context.device)  # features and augmentation, per batch
        self.train_set = ClipDataset(self.train_clips, features, augment, teacher, cfg.packed)
        self.valid_set = ClipDataset(self.valid_clips, features, packed=cfg.packed)
        weights = None
        if cfg.balanced:
            weights = balanced_weights(self.train_clips.class_indices, self.train_clips.offsets,
                                       self.train_clips.num_classes)
        self.sampler = EpochSampler(len(self.train_clips), weights=weights, epoch_size=cfg.epoch_size or None,
                                    seed=cfg.seed, rank=self.context.rank, world_size=self.context.world_size)
        cuda = self.context.device.type == "cuda"
        self.train_loader = DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.num_workers,
            pin_memory=cuda, worker_init_fn=worker_init, persistent_workers=cfg.num_workers > 0,
            collate_fn=collate_clips,
        )
        self.valid_loader = validation_loader(self.valid_set, self.context, cfg.eval_batch_size or 2 * cfg.batch_size,
                                              cfg.num_workers, worker_init)

    def build_model(self) -> None:
        from student import create_ast
        from student.ast import size_with_depth
        from student.errors import StudentError
        from student.tome import parse_r_spec, set_tome_r

        cfg = self.config
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
        try:
            model = create_ast(num_classes=self.label_set_size, input_fdim=cfg.num_mel_bins,
                               input_tdim=cfg.target_frames, fstride=cfg.fstride, tstride=cfg.tstride,
                               imagenet_weights=cfg.imagenet_weights, ast_checkpoint=cfg.ast_checkpoint,
                               drop_path_rate=cfg.drop_path, **size_with_depth(cfg.model_size, cfg.depth))
            self.tome_r_layers = set_tome_r(model, parse_r_spec(cfg.tome_r))
        except StudentError as exc:
            raise FatError(f"student model: {exc}") from None
        # The ImageNet heads are kept only so released checkpoints load strictly; they get no gradient.
        for name, parameter in model.named_parameters():
            if name.startswith(("v.head.", "v.head_dist.")):
                parameter.requires_grad_(False)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.model = model.to(self.context.device)
        self.head_init = self.init_head(self.model)  # on the device: the calibration runs the model once
        if cfg.compile:
            from student.compile import compile_student

            compile_student(self.model)  # in place: the saved weights and their keys stay the plain model's
        self.ddp = self.model
        if self.context.distributed:
            device_ids = [self.context.device.index] if self.context.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=cfg.lr, betas=cfg.adam_betas,
                                          weight_decay=cfg.weight_decay)
        self.schedule = LRSchedule(cfg.lr, cfg.warmup_steps, cfg.lr_decay_start, cfg.lr_decay_step,
                                   cfg.lr_decay_factor)
        self.precision = runtime.choose_precision(cfg.precision, self.context.device)
        self.scaler = self.precision.scaler()
        self.averager = WeightAverager(cfg.wa_start, cfg.wa_end) if cfg.wa else None
        # Each rank its own stream for dropout / drop-path.
        torch.manual_seed(cfg.seed * 1000 + 1 + self.context.rank)

    def init_head(self, model: nn.Module) -> dict[str, Any]:
        """The head's bias from the training labels' prior, unless it comes from a checkpoint (--head-init);
        returns what was done, for the student file. A resumed run then loads its saved head over it."""
        from pipeline.training.head_prior import init_head_from_prior, resolve_head_init

        cfg = self.config
        from_checkpoint = cfg.ast_checkpoint is not None
        if resolve_head_init(cfg.head_init, from_checkpoint) != "prior":
            if self.context.is_main:
                log.info("head: %s (--head-init %s)", "from --ast-checkpoint" if from_checkpoint
                         else "the model's own initialisation", cfg.head_init)
            return {"init": "default", "from_checkpoint": from_checkpoint}
        frequencies = self.frequencies
        summary = init_head_from_prior(model, frequencies, cfg.multi_label)
        if cfg.multi_label:  # the random head's common offset taken out on the first training clips
            from pipeline.dataset import collate_clips
            from pipeline.training.head_prior import CALIBRATION_CLIPS, calibrate_bias

            count = min(CALIBRATION_CLIPS, len(self.train_set))
            batch = collate_clips([self.train_set[i] for i in range(count)])
            features = self.inputs.evaluation(batch)
            summary["calibration_clips"] = count
            summary["calibration_shift"] = round(calibrate_bias(model, features, frequencies), 6)
        if self.context.is_main:
            from pipeline.training.head_prior import prior_summary

            log.info("%s", prior_summary(model, frequencies, len(self.train_clips), summary.get("calibration_clips")))
        return {"init": "prior", "from_checkpoint": from_checkpoint, **summary}

    @property
    def label_set_size(self) -> int:
        return self.train_clips.num_classes

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        if self.averager is not None and state.get("averager"):
            self.averager.load_state_dict(state["averager"])
        rngs = state["rng"]
        if len(rngs) == self.context.world_size:
            set_rng_state(rngs[self.context.rank], self.context.device)
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        sums = [float(v) for v in state["epoch_sums"][self.context.rank]]
        self.epoch_sums = sums + [0.0] * (SUMS - len(sums))  # states from before label_present had 5
        self.history = list(state["history"])
        self.step_rows = list(state["step_rows"])
        self.finished = bool(state.get("finished", False))
        self.final_metrics = dict(state.get("final_metrics", {}))

    # ================================================================== run
    def run(self) -> RunResult:
        cfg = self.config
        state = self.prepare_output()
        self.build_data()
        self.build_model()
        self.epoch_sums = [0.0] * SUMS
        self.resume(state, cfg.dvclive, cfg.progress)
        if self.finished:
            log.info("%s: this run already finished", cfg.out)
            self.runlog.close()
            return RunResult("finished", len(self.history), self.final_metrics, model_path(cfg.out), self.history)
        if self.context.is_main:
            log.info("training %s, %d blocks (r=%s) on %s, %s, %d process(es); %d training / %d validation clips",
                     cfg.model_size, self.model.depth, cfg.tome_r, self.context.device, self.precision.name,
                     self.context.world_size, len(self.train_clips), len(self.valid_clips))
            log.info("fbank normalisation: mean %.6g, std %.6g, %s", cfg.norm_mean, cfg.norm_std, cfg.norm_source)
            steps = optimizer_steps_per_epoch(self.sampler.per_rank, cfg.batch_size, cfg.accum_steps)
            for line in schedule_warnings(self.schedule, cfg.epochs, steps):
                log.warning("%s", line)
        self.lengths: FrameTally | None = FrameTally(cfg.target_frames)  # reported after this session's first epoch
        if not self.run_epochs(cfg.epochs):
            return RunResult("interrupted", len(self.history), {}, None, self.history)
        return RunResult("finished", len(self.history), self.final_metrics, cfg.out / MODEL_NAME, self.history)

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when stopped by SIGTERM (at a step boundary)."""
        cfg = self.config
        self.schedule.epoch = self.epoch
        self.sampler.set_epoch(self.epoch, skip=self.batches_done * cfg.batch_size)
        total_batches = math.ceil(self.sampler.per_rank / cfg.batch_size)
        self.runlog.start_epoch(self.epoch, cfg.epochs, total_batches, self.batches_done)
        device = self.context.device
        self.ddp.train()
        sums = torch.tensor(self.epoch_sums, dtype=torch.float64, device=device)
        step_terms = torch.zeros(5, dtype=torch.float64, device=device)
        micro_batches = 0
        started = time.perf_counter()
        window_start, window_clips = started, 0
        self.session_clips = 0  # clips of this epoch trained by this process since it (re)started
        for batch in self.train_loader:
            boundary = (self.batches_done + 1) % cfg.accum_steps == 0 or self.batches_done + 1 == total_batches
            sync = boundary or not self.context.distributed
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                total, terms = self.forward_loss(batch, device)
                self.scaler.scale(total / cfg.accum_steps).backward()
            clips = batch["wave"].shape[0]
            if self.lengths is not None:
                self.lengths.update(batch["length"], int(batch["rate"]))
            values = torch.stack([total.detach().double(), terms["label"].double(), terms["kd"].double(),
                                  terms["teacher_coverage"].double(), terms["label_present"].double()])
            sums += torch.cat([values[:4] * clips, torch.tensor([clips], dtype=torch.float64, device=device),
                               values[4:] * clips])
            step_terms += values
            micro_batches += 1
            self.batches_done += 1
            window_clips += clips
            self.session_clips += clips
            if not boundary:
                self.runlog.batch_done(None, None)
                continue
            lr = self.optimizer_step()
            step_values = (step_terms / micro_batches).tolist() if self.schedule.step % cfg.log_every == 0 else None
            now = time.perf_counter()
            clips_per_s = window_clips * self.context.world_size / max(now - window_start, 1e-9)
            if step_values is not None:
                self.runlog.step({"epoch": self.epoch, "step": self.schedule.step, "lr": lr, "loss": step_values[0],
                                  "label": step_values[1], "kd": step_values[2], "teacher_coverage": step_values[3],
                                  "label_present": step_values[4], "clips_per_s": clips_per_s})
                window_start, window_clips = now, 0
            running = (sums[0] / sums[4]).item() if self.runlog.progress_enabled else None
            self.runlog.batch_done(running, clips_per_s)
            step_terms.zero_()
            micro_batches = 0
            if runtime.any_rank(self.context, self.stop_requested):
                self.epoch_sums = sums.tolist()
                self.runlog.end_epoch()
                return False
        self.epoch_sums = sums.tolist()
        self.epoch_seconds = time.perf_counter() - started
        self.runlog.end_epoch()
        return True

    def forward_loss(self, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, dict]:
        from pipeline.dataset import batch_generator
        from student.kd import kd_loss

        cfg = self.config
        # The batch's augmentation is drawn from (seed, epoch, batch, rank): a resumed run and a
        # run with another number of workers get the same batches.
        generator = batch_generator(cfg.seed, self.epoch, self.batches_done, self.context.rank)
        inputs = self.inputs.training(batch, self.augment, generator)
        target = inputs.target
        teacher = mask = mix = None
        if cfg.uses_teacher:
            teacher = batch["teacher"].to(device, non_blocking=True)
            mask = batch["teacher_mask"].to(device, non_blocking=True)
            if cfg.mixup > 0:  # the KD target mixed with the audio's partner and λ
                mix = inputs.teacher_mix(teacher, mask)
        with self.precision.autocast():
            logits = self.ddp(inputs.features)
        total, terms = kd_loss(logits.float(), target, teacher, cfg.kd_lambda, cfg.kd_temperature, teacher_mask=mask,
                               multi_label=cfg.multi_label, mix=mix)
        terms["label_present"] = self.present_label_loss(logits.detach().float(), target, terms["label"])
        return total, terms

    def present_label_loss(self, logits: torch.Tensor, target: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The label BCE over the classes the training set has (for logs only): AudioSet's 527 classes
        on data with 10 make the plain mean ~50× smaller and flat from the first epoch. A softmax
        cross-entropy is one term per clip, not diluted by absent classes: it is the label loss itself."""
        if not self.config.multi_label or not len(self.present):
            return label
        present = self.present.to(logits.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, present], target[:, present].float())

    def optimizer_step(self) -> float:
        lr = self.schedule.apply(self.optimizer)
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step += 1
        return lr

    def end_epoch(self) -> None:
        cfg = self.config
        sums = runtime.sum_floats(self.context, self.epoch_sums)
        metrics = validate(self.model, self.valid_loader, self.valid_set, self.context, self.precision, cfg.multi_label,
                           cfg.reports_accuracy, present=self.present.numpy())
        self.report_lengths()
        if self.averager is not None and self.averager.wants(self.epoch):
            self.averager.update(self.model)
        clips = max(sums[4], 1.0)
        row: dict[str, Any] = {"epoch": self.epoch, "step": self.schedule.step, "lr": self.schedule.lr(),
                               "train/loss": sums[0] / clips, "train/label": sums[1] / clips,
                               "train/kd": sums[2] / clips, "train/teacher_coverage": sums[3] / clips,
                               "train/label_present": sums[5] / clips}
        row.update({f"valid/{key}": value for key, value in metrics.items() if key != "clips"})
        row["train/clips_per_s"] = self.session_clips * self.context.world_size / max(self.epoch_seconds, 1e-9)
        self.history.append(row)
        if cfg.keep_epoch_checkpoints and self.context.is_main:
            from pipeline.checkpoint import save_student

            save_student(cfg.out / f"epoch_{self.epoch}.safetensors", self.model, self.student_config(),
                         {"epoch": self.epoch, "metrics": metrics})
        self.epoch += 1
        self.batches_done = 0
        self.epoch_sums = [0.0] * SUMS
        self.save(finished=False)
        self.runlog.epoch(self.history)

    def report_lengths(self) -> None:
        """After this session's first epoch: how the clips it drew fit --target-frames (one line, if worth one)."""
        if self.lengths is None:
            return
        tally = self.lengths.merge(runtime.gather_objects(self.context, self.lengths))
        self.lengths = None
        message = tally.message(self.epoch)
        if message and self.context.is_main:
            log.warning("%s", message)

    def finish(self) -> None:
        """The weight-averaged model (or the last one) is validated and written as student.safetensors."""
        from pipeline.checkpoint import save_student
        from pipeline.core.atomic import write_json_atomic

        cfg = self.config
        averaged = self.averager is not None and self.averager.count > 0
        if averaged:
            self.model.load_state_dict(self.averager.averaged_state(self.model))
            metrics = validate(self.model, self.valid_loader, self.valid_set, self.context, self.precision,
                               cfg.multi_label, cfg.reports_accuracy, present=self.present.numpy())
            if self.averager.end > cfg.epochs and self.context.is_main:
                log.warning("weight averaging used epochs %d..%d (--wa-end %d is past the last epoch)",
                            self.averager.start, cfg.epochs, self.averager.end)
        else:
            metrics = {k.removeprefix("valid/"): v for k, v in self.history[-1].items() if k.startswith("valid/")}
            metrics["clips"] = float(len(self.valid_clips))
        self.final_metrics = metrics
        if self.context.is_main:
            extra = {"epochs": len(self.history), "weight_averaged": averaged,
                     "wa_epochs": [self.averager.start, min(self.averager.end, cfg.epochs)] if averaged else None,
                     "final_metrics": metrics, "train_config": cfg.to_dict()}
            save_student(cfg.out / MODEL_NAME, self.model, self.student_config(), extra)
            self.runlog.final("final", {k: v for k, v in metrics.items()})
            write_json_atomic(cfg.out / RESULT_NAME, {
                "model": MODEL_NAME, "weight_averaged": averaged, "epochs": len(self.history),
                "final": metrics, "history": self.history,
            })
        self.save(finished=True)

    # ================================================================== persistence
    def student_config(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "norm_mean": cfg.norm_mean, "norm_std": cfg.norm_std, "norm_source": cfg.norm_source,
            "multi_label": cfg.multi_label,
            "main_metric": cfg.main_metric,
            "label_csv_sha256": getattr(self.label_set, "sha256", None), "tome_r": cfg.tome_r,
            "tome_r_per_layer": list(self.tome_r_layers), "target_frames": cfg.target_frames,
            "num_mel_bins": cfg.num_mel_bins, "head_init": dict(self.head_init),
            "teacher_store": self.teacher_provenance, "label_noise": cfg.label_noise,
        }

    def state_fields(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "schedule": self.schedule.state_dict(),
                "averager": self.averager.state_dict() if self.averager is not None else None}
