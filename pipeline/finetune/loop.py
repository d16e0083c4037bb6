"""The fine-tuning run: data, network with a new head, epochs, validation, resume, SIGTERM, torchrun.

One `Finetuner` per process (torchrun starts one per device); rank 0 alone writes files. Longer
than most modules (~380 lines) because it is one class whose steps share its state. What
it shares with `fat train` it takes from there: the state file and its resume checks
(pipeline.training.state), the CSV / DVCLive logs (pipeline.training.logs), gathering and
scoring the validation predictions (pipeline.training.scoring), the epoch sampler
(pipeline.sampling) and the per-batch generator (pipeline.dataset.batch_generator).

Outputs in --out: `teacher.pt` (the last epoch's network, as EfficientAT keeps it, in the file
format of teacher.finetuned, which `fat logits --teacher FILE` and `fat predict` run),
`train_state.pt`, `result.json`, `epochs.csv`, `steps.csv`, `dvclive/`.
"""

from __future__ import annotations

import dataclasses
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
from pipeline.finetune.augment import Recipe, augment_waves, mixup_spectrograms
from pipeline.finetune.schedule import RampSchedule
from pipeline.finetune.settings import RESUME_INVARIANT, FinetuneSettings
from pipeline.training.session import EpochSession, run_in_context, worker_init
from pipeline.training.state import STATE_NAME, check_compatible, load_state, set_rng_state

log = logging.getLogger(__name__)

TEACHER_NAME = "teacher.pt"
RESULT_NAME = "result.json"
STATE_KIND = "finetune-teacher"  # tells this state from a `fat train` one in the same file name
INTERRUPTED_EXIT = 143  # 128 + SIGTERM: the state is saved, --resume continues


@dataclass
class FinetuneResult:
    status: str  # "finished" or "interrupted"
    epochs_done: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    teacher_path: Path | None = None


def finetune(settings: FinetuneSettings) -> FinetuneResult:
    """Run (or resume) one fine-tuning; see `fat finetune-teacher --help`."""
    return run_in_context(settings, Finetuner)


def is_single_label(clips: Any) -> bool:
    return bool(len(clips)) and bool(np.all(np.diff(clips.offsets) == 1))


class Finetuner(EpochSession):
    def __init__(self, settings: FinetuneSettings, context: runtime.Context) -> None:
        super().__init__(context)
        self.settings = settings
        self.out = settings.out

    # ================================================================== setup
    def prepare_output(self) -> dict[str, Any] | None:
        cfg = self.settings
        state = load_state(cfg.out)
        if state is not None and state.get("kind") != STATE_KIND:
            raise FatError(f"{cfg.out / STATE_NAME}: the state of another kind of run (fat train?); choose another --out")
        if state is not None and not cfg.resume:
            raise FatError(f"{cfg.out / STATE_NAME}: a fine-tuning already lives in {cfg.out}; pass --resume to "
                           "continue it, or choose another --out")
        if state is None and (cfg.out / TEACHER_NAME).exists():
            raise FatError(f"{cfg.out / TEACHER_NAME} exists: choose another --out (nothing is overwritten)")
        if state is None and cfg.resume:
            log.info("%s: no state to resume; starting from the beginning", cfg.out)
        if state is not None:
            check_compatible(cfg.out / STATE_NAME, state["config"], cfg.to_dict(), RESUME_INVARIANT)
        if self.context.is_main:
            cfg.out.mkdir(parents=True, exist_ok=True)
        return state

    def build_data(self) -> None:
        from pipeline.datafile import load_clips, load_label_csv
        from pipeline.finetune.data import TeacherClips
        from pipeline.sampling import EpochSampler, ShardSampler

        cfg = self.settings
        self.label_set = load_label_csv(cfg.labels)
        self.train_clips = load_clips(cfg.train, self.label_set)
        self.valid_clips = load_clips([cfg.valid], self.label_set)
        self.multi_label = cfg.loss == "bce" or (cfg.loss == "auto" and not is_single_label(self.train_clips))
        if not self.multi_label:
            self.train_clips.check_single_label()
            self.valid_clips.check_single_label()
        self.data_identity = {"label CSV": self.label_set.sha256, "training clips": self.train_clips.fingerprint(),
                              "validation clips": self.valid_clips.fingerprint()}
        self.train_set = TeacherClips(self.train_clips, cfg.clip_seconds, cfg.packed)
        self.valid_set = TeacherClips(self.valid_clips, cfg.clip_seconds, cfg.packed)
        ctx = self.context
        self.sampler = EpochSampler(len(self.train_clips), seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
        cuda = ctx.device.type == "cuda"
        self.train_loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=self.sampler,
                                       num_workers=cfg.num_workers, pin_memory=cuda, worker_init_fn=worker_init,
                                       persistent_workers=cfg.num_workers > 0)
        self.valid_loader = DataLoader(self.valid_set, batch_size=cfg.eval_batch_size or cfg.batch_size,
                                       sampler=ShardSampler(len(self.valid_set), ctx.rank, ctx.world_size),
                                       num_workers=cfg.num_workers, pin_memory=cuda, worker_init_fn=worker_init,
                                       persistent_workers=cfg.num_workers > 0)

    def build_model(self) -> None:
        from teacher import MelFrontEnd, TeacherError, released
        from teacher.finetuned import start_network
        from teacher.hub import read_state_dict, sha256_file
        from teacher.teacher import fetch_checkpoint

        cfg = self.settings
        try:
            self.spec = released(cfg.teacher)
            path = None
            if not cfg.random_init:
                if cfg.checkpoint is None and self.context.is_main:  # one download, before the other ranks read it
                    fetch_checkpoint(self.spec)
                runtime.barrier(self.context)
                path = cfg.checkpoint or fetch_checkpoint(self.spec)
            state = read_state_dict(path) if path is not None else None
            torch.manual_seed(cfg.seed)  # the same new head on every rank and every run
            model = start_network(self.spec, len(self.label_set), state, str(path))
        except TeacherError as exc:
            raise FatError(str(exc)) from None
        self.start = {"checkpoint_file": str(path) if path else None, "random_init": cfg.random_init,
                      "checkpoint_sha256": sha256_file(path) if path is not None and self.context.is_main else None}
        if cfg.random_init and self.context.is_main:
            log.warning("!!! %s starts from RANDOM weights (--random-init): nothing learned on AudioSet is carried "
                        "over", cfg.teacher)
        self.frontend_config = dataclasses.replace(
            self.spec.frontend_config(), freqm=cfg.freqm, timem=cfg.timem, fmin_aug_range=cfg.fmin_aug_range,
            fmax_aug_range=cfg.fmax_aug_range)
        device = self.context.device
        self.frontend = MelFrontEnd(self.frontend_config).to(device)
        self.model = model.to(device)
        self.ddp: nn.Module = self.model
        if self.context.distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = RampSchedule(cfg.lr, cfg.warmup_epochs, cfg.rampdown_start, cfg.rampdown_epochs,
                                     cfg.last_lr_factor)
        self.precision = runtime.choose_precision(cfg.precision, device)
        self.scaler = self.precision.scaler()
        self.recipe = Recipe(cfg.gain_db, cfg.roll_samples, cfg.wavmix, cfg.mixup_alpha)
        torch.manual_seed(cfg.seed * 1000 + 1 + self.context.rank)  # each rank its own dropout / filter-edge stream

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        rngs = state["rng"]
        if len(rngs) == self.context.world_size:
            set_rng_state(rngs[self.context.rank], self.context.device)
        self.epoch, self.batches_done, self.step = int(state["epoch"]), int(state["batches_done"]), int(state["step"])
        self.epoch_sums = [float(v) for v in state["epoch_sums"][self.context.rank]]
        self.history, self.step_rows = list(state["history"]), list(state["step_rows"])
        self.finished, self.final_metrics = bool(state["finished"]), dict(state["final_metrics"])

    # ================================================================== run
    def run(self) -> FinetuneResult:
        cfg = self.settings
        state = self.prepare_output()
        self.build_data()
        self.build_model()
        self.step, self.epoch_sums = 0, [0.0, 0.0]
        self.resume(state, cfg.dvclive, cfg.progress)
        if self.finished and self.epoch > cfg.epochs:
            log.info("%s: this fine-tuning already finished", cfg.out)
            self.runlog.close()
            return FinetuneResult("finished", len(self.history), self.final_metrics, cfg.out / TEACHER_NAME)
        if self.context.is_main:
            log.info("fine-tuning %s (%s head, %d classes, %s) on %s, %s, %d process(es); %d training / %d "
                     "validation clips of %g s", cfg.teacher, "new", len(self.label_set),
                     "multi-label BCE" if self.multi_label else "single-label cross-entropy", self.context.device,
                     self.precision.name, self.context.world_size, len(self.train_clips), len(self.valid_clips),
                     cfg.clip_seconds)
        if not self.run_epochs(cfg.epochs):
            return FinetuneResult("interrupted", len(self.history))
        return FinetuneResult("finished", len(self.history), self.final_metrics, cfg.out / TEACHER_NAME)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against (mixed) class probabilities, or BCE against (mixed) multi-hot targets."""
        if self.multi_label:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return nn.functional.cross_entropy(logits, targets)

    def train_epoch(self) -> bool:
        """The rest of the current epoch; False when stopped by SIGTERM (after a whole step)."""
        from pipeline.dataset import batch_generator

        cfg = self.settings
        device = self.context.device
        lr = self.schedule.apply(self.optimizer, self.epoch)
        self.sampler.set_epoch(self.epoch, skip=self.batches_done * cfg.batch_size)
        self.runlog.start_epoch(self.epoch, cfg.epochs, math.ceil(self.sampler.per_rank / cfg.batch_size),
                                self.batches_done)
        self.ddp.train()
        self.frontend.train()  # moving filter edges (and masks, if any)
        started = window_start = time.perf_counter()
        window_clips, window_loss, window_steps = 0, 0.0, 0
        for batch in self.train_loader:
            generator = batch_generator(cfg.seed, self.epoch, self.batches_done, self.context.rank)
            waves = batch["wave"].to(device, non_blocking=True)
            targets = batch["target"].to(device, non_blocking=True)
            waves, targets = augment_waves(waves, targets, self.recipe, generator)
            mel = self.frontend(waves).unsqueeze(1)  # fp32 whatever the autocast
            mel, targets = mixup_spectrograms(mel, targets, cfg.mixup_alpha, generator)
            with self.precision.autocast():
                logits = self.ddp(mel)
            loss = self.loss(logits.float(), targets)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            clips = waves.shape[0]
            value = float(loss.detach())
            self.epoch_sums = [self.epoch_sums[0] + value * clips, self.epoch_sums[1] + clips]
            self.batches_done += 1
            self.step += 1
            window_clips, window_loss, window_steps = window_clips + clips, window_loss + value, window_steps + 1
            now = time.perf_counter()
            clips_per_s = window_clips * self.context.world_size / max(now - window_start, 1e-9)
            if self.step % cfg.log_every == 0:
                self.runlog.step({"epoch": self.epoch, "step": self.step, "lr": lr, "loss": window_loss / window_steps,
                                  "label": window_loss / window_steps, "clips_per_s": clips_per_s})
                window_start, window_clips, window_loss, window_steps = now, 0, 0.0, 0
            self.runlog.batch_done(value, clips_per_s)
            if runtime.any_rank(self.context, self.stop_requested):
                self.runlog.end_epoch()
                return False
        self.epoch_seconds = time.perf_counter() - started
        self.runlog.end_epoch()
        return True

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Scores over every validation clip on rank 0 ({} on the others): the teacher as `fat logits` runs it."""
        from pipeline.metrics import score
        from pipeline.training.scoring import gather_predictions, validation_loss

        self.frontend.eval()
        self.measure_batchnorm()
        self.model.eval()
        indices, outputs = [], []
        for batch in self.valid_loader:
            mel = self.frontend(batch["wave"].to(self.context.device, non_blocking=True)).unsqueeze(1)
            with self.precision.autocast():
                logits = self.model(mel)
            indices.append(batch["index"].numpy())
            outputs.append(logits.float().cpu().numpy())
        classes = len(self.label_set)
        found = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
        predicted = np.concatenate(outputs) if outputs else np.zeros((0, classes), dtype=np.float32)
        logits = gather_predictions(self.context, found, predicted, len(self.valid_clips))
        self.model.train()
        self.frontend.train()
        if logits is None:
            return {}
        targets = self.valid_clips.targets()
        metrics = score(targets, logits, self.multi_label, with_accuracy=not self.multi_label)
        metrics["loss"] = validation_loss(targets, logits, self.multi_label)
        return {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))}

    def measure_batchnorm(self) -> None:
        """BatchNorm statistics measured afresh over the first --bn-clips of a seeded permutation of the
        training clips (the same clips on every rank and epoch, so all ranks hold the same network)."""
        from teacher.teacher import measure_batchnorm

        count = min(self.settings.bn_clips, len(self.train_set))
        if count == 0:
            return
        chosen = np.random.default_rng(self.settings.seed).permutation(len(self.train_set))[:count]
        loader = DataLoader(torch.utils.data.Subset(self.train_set, chosen.tolist()),
                            batch_size=self.settings.eval_batch_size or self.settings.batch_size,
                            num_workers=self.settings.num_workers, worker_init_fn=worker_init)
        device = self.context.device
        # fork_rng: iter(loader) draws a seed from torch's generator, which training's dropout must not notice
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            mels = (self.frontend(batch["wave"].to(device)).unsqueeze(1) for batch in loader)  # fp32, as in training
            measure_batchnorm(self.model, mels, self.precision.autocast)

    def end_epoch(self) -> None:
        sums = runtime.sum_floats(self.context, self.epoch_sums)
        due = self.epoch % self.settings.valid_every == 0 or self.epoch >= self.settings.epochs  # epochs count from 1
        metrics = self.validate() if due else {}
        row: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "lr": self.schedule.lr(self.epoch),
                               "train/loss": sums[0] / max(sums[1], 1.0)}
        row.update({f"valid/{key}": value for key, value in metrics.items() if key != "clips"})
        row["train/clips_per_s"] = sums[1] / max(self.epoch_seconds, 1e-9)
        self.history.append(row)
        self.epoch += 1
        self.batches_done = 0
        self.epoch_sums = [0.0, 0.0]
        self.save(finished=False)
        self.runlog.epoch(self.history)

    def finish(self) -> None:
        """The last epoch's network becomes teacher.pt (with its classes and label CSV's sha256) and result.json."""
        from pipeline.core.atomic import atomic_path, write_json_atomic
        from teacher.finetuned import finetuned_payload

        cfg = self.settings
        self.final_metrics = {k.removeprefix("valid/"): v for k, v in self.history[-1].items()
                              if k.startswith("valid/")}
        if self.context.is_main:
            extra = {"epochs": len(self.history), "final_metrics": self.final_metrics, "start": self.start,
                     "settings": cfg.to_dict()}
            payload = finetuned_payload(self.model, cfg.teacher, self.frontend_config, list(self.label_set.mids),
                                        list(self.label_set.names), self.label_set.sha256, self.multi_label,
                                        cfg.name, extra)
            with atomic_path(cfg.out / TEACHER_NAME) as tmp:
                torch.save(payload, tmp)
            write_json_atomic(cfg.out / RESULT_NAME, {
                "teacher": TEACHER_NAME, "name": cfg.name, "base": cfg.teacher, "multi_label": self.multi_label,
                "main_metric": "mAP" if self.multi_label else "accuracy", "epochs": len(self.history),
                "final": self.final_metrics, "history": self.history,
            })
            self.runlog.final("final", self.final_metrics)
        self.save(finished=True)

    # ================================================================== persistence
    def state_fields(self) -> dict[str, Any]:
        return {"kind": STATE_KIND, "config": self.settings.to_dict(), "step": self.step}
