"""A ready teacher: mel front-end + network (mn, dymn or passt) + where its weights came from.

`load_teacher("mn10_as")` (or "dymn20_as", "passt_s_kd_p16_128_ap486") fetches the released
checkpoint into the cache (or uses `checkpoint=PATH`), checks that it fits the network exactly (strict: same keys and shapes) and
returns a `Teacher` in eval mode that maps 32 kHz waveforms to raw logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from teacher.errors import CheckpointUnavailable, TeacherError
from teacher.frontend import MelFrontEnd
from teacher.hub import cache_dir, download, read_state_dict, sha256_file
from teacher.registry import ReleasedTeacher, released

log = logging.getLogger(__name__)

RANDOM_INIT_WARNING = (
    "RANDOM-INIT TEACHER: {name} has random weights; its logits carry no knowledge "
    "(use this only for tests and the offline demo)"
)


@dataclass(frozen=True)
class Provenance:
    """Where a teacher's weights came from; recorded with every logit it produces."""

    name: str
    checkpoint_file: str | None
    checkpoint_sha256: str | None
    random_init: bool
    frontend: dict[str, Any]
    published_map: float | None
    architecture: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "checkpoint_file": self.checkpoint_file, "checkpoint_sha256": self.checkpoint_sha256,
            "random_init": self.random_init, "frontend": self.frontend, "published_mAP": self.published_map,
            "architecture": self.architecture,
        }


class Teacher(nn.Module):
    """(B, samples) 32 kHz waveform → (B, num_classes) raw logits (pre-sigmoid)."""

    def __init__(self, frontend: MelFrontEnd, model: nn.Module, provenance: Provenance) -> None:
        super().__init__()
        self.frontend = frontend
        self.model = model
        self.provenance = provenance

    @property
    def sample_rate(self) -> int:
        return self.frontend.cfg.sample_rate

    @property
    def num_classes(self) -> int:
        return self.model.cfg.num_classes

    def forward(self, wave: Tensor) -> Tensor:
        return self.model(self.frontend(wave).unsqueeze(1))


def fetch_checkpoint(spec: ReleasedTeacher, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """The cached file of a released checkpoint, downloaded on first use."""
    path = cache_dir() / spec.file
    if path.is_file():
        if spec.sha256 and sha256_file(path) != spec.sha256:
            raise CheckpointUnavailable(
                f"{path}: cached checkpoint of {spec.name} fails its sha256 check; delete it to download it again"
            )
        return path
    try:
        return download(spec.url, path, spec.sha256, progress)
    except CheckpointUnavailable as exc:
        raise CheckpointUnavailable(
            f"{exc}. Teacher {spec.name} needs {spec.file}: download it where you have network "
            f"({spec.url}) and pass it with --checkpoint PATH, or copy it to {path}"
        ) from exc


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict load with a readable account of what does not fit."""
    own = model.state_dict()
    for key, value in own.items():  # old files may lack BatchNorm's batch counters, which do not affect outputs
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped (file vs model)", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise TeacherError(f"{source}: checkpoint does not fit the network ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def checkpoint_classes(state: dict[str, Tensor]) -> int | None:
    """Class count of a checkpoint from its last layer (mn/dymn: mlp or fully convolutional head; PaSST: head.1)."""
    for key in ("classifier.5.bias", "classifier.1.bias", "head.1.bias"):
        if key in state:
            return int(state[key].shape[0])
    return None


@torch.no_grad()
def measure_batchnorm(model: nn.Module, batches: Iterable[Tensor],
                      forward_context: Callable[[], AbstractContextManager] = nullcontext) -> bool:
    """Replace every BatchNorm's running statistics by their plain average over `batches` (model inputs).

    BatchNorm's running averages move by 1 % per step (EfficientAT's momentum 0.01): a network
    initialised at random, or trained from scratch for a few hundred steps, keeps statistics far
    from its activations' and is near chance in eval mode however well it fits in train mode.
    The model ends in eval mode; False (nothing done) when it has no BatchNorm (PaSST).
    `forward_context` wraps each forward only (training's autocast), not the making of the batches.
    """
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    if not norms:
        model.eval()
        return False
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over all the batches
    model.train()
    try:
        for batch in batches:
            with forward_context():
                model(batch)
    finally:
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum
        model.eval()
    return True


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, frontend: MelFrontEnd, generator: torch.Generator,
                        clips: int = 6, seconds: float = 0.5) -> None:
    """Give a freshly initialised network BatchNorm statistics of real-looking input.

    With the initial statistics (mean 0, variance 1) an untrained network's activations fade
    to ~1e-8 in eval mode and every clip gets the same logits; measured statistics keep a
    random teacher's logits varied, which is all the demo and the tests need of it.
    """
    samples = int(seconds * frontend.cfg.sample_rate)
    gains = torch.logspace(-2, 0, clips)[:, None]
    noise = torch.randn(clips, samples, generator=generator).cumsum(dim=1)  # red noise: energy at low bands
    noise = noise - noise.mean(dim=1, keepdim=True)
    noise = noise / noise.abs().amax(dim=1, keepdim=True) + 0.1 * torch.randn(clips, samples, generator=generator)
    measure_batchnorm(model, [frontend.eval()(gains * noise).unsqueeze(1)])


def load_teacher(
    name: str,
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    num_classes: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Teacher:
    """A released teacher by name, in eval mode.

    checkpoint: a local file instead of the cached download. random_init: no weights at all
    (loudly logged and recorded in the provenance); num_classes then sets the head size.
    """
    spec = released(name)
    classes = num_classes or spec.num_classes
    frontend = MelFrontEnd(spec.frontend_config())
    if random_init:
        if checkpoint is not None:
            raise TeacherError("--random-init and --checkpoint exclude each other")
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = spec.build_model(classes)
        calibrate_batchnorm(model, frontend, torch.Generator().manual_seed(seed))
        torch.random.set_rng_state(generator_state)
        log.warning("!!! %s", RANDOM_INIT_WARNING.format(name=name))
        file, digest = None, None
    else:
        path = Path(checkpoint) if checkpoint is not None else fetch_checkpoint(spec, progress)
        state = read_state_dict(path)
        found = checkpoint_classes(state)
        if found is not None and found != classes:
            raise TeacherError(
                f"{path}: checkpoint has {found} classes but {classes} are needed "
                f"({'the label list' if num_classes else name} has {classes})"
                + (f"; {name}: {spec.note}" if spec.note else "")
            )
        model = spec.build_model(classes)
        if hasattr(model, "adapt_checkpoint"):  # a family's older file layouts (PaSST's flat patch weights)
            state = model.adapt_checkpoint(state)
        load_weights(model, state, str(path))
        file, digest = str(path), sha256_file(path)
    provenance = Provenance(
        name=name, checkpoint_file=file, checkpoint_sha256=digest, random_init=random_init,
        frontend=frontend.cfg.to_dict(), published_map=spec.published_map,
        architecture=spec.architecture(classes),
    )
    return Teacher(frontend, model, provenance).eval()
