"""What `fat logits` is asked to do: the settings of one run and the paths they imply."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import FatError
from pipeline.store import STORE_DTYPES

SAMPLE_RATE = 32000  # the teachers' input rate


@dataclass
class LogitsSettings:
    datafiles: list[Path]
    out: Path
    teachers: list[str] = field(default_factory=lambda: ["mn10_as"])
    checkpoints: list[Path] = field(default_factory=list)  # one per teacher, same order
    random_init: bool = False
    seed: int = 0
    labels: Path | None = None  # label CSV; default: class_labels_indices.csv beside the first datafile
    batch_size: int = 32
    workers: int = 2
    clip_seconds: float = 10.0
    dtype: str = "float16"
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA (float16), off on CPU (where it means bfloat16)
    metrics: Path | None = None
    skip_undecodable: bool = False
    overwrite: bool = False
    progress_every: float = 30.0

    def check(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise FatError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1 or self.workers < 0:
            raise FatError("--batch-size must be at least 1 and --workers at least 0")
        if not self.clip_seconds > 0:
            raise FatError(f"--clip-seconds must be positive, got {self.clip_seconds}")
        if self.random_init and self.checkpoints:
            raise FatError("--random-init and --checkpoint exclude each other")
        if not self.datafiles:
            raise FatError("no datafile given")

    @property
    def partial_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".partial")

    @property
    def failed_csv(self) -> Path:
        return self.out.with_name(self.out.stem + ".failed.csv")

    @property
    def metrics_path(self) -> Path:
        return self.metrics or self.out.with_name(self.out.stem + ".metrics.json")
