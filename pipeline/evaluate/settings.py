"""What `fat evaluate` is asked to do: its options (params.yaml `evaluate:` keys), the timing ones apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.packed.settings import packed_option
from pipeline.settings import device_option, nested, option, precision_option


@dataclass(frozen=True, kw_only=True)
class TimingSettings:
    """How the clips are batched and throughput is measured: batch, warm-up, timed batches per round,
    rounds, device and precision (`pipeline.runtime` names and rules)."""

    batch_size: int = option(32, "clips per batch for scoring and timing", unit="clips", minimum=1)
    warmup_batches: int = option(2, "untimed batches before timing", unit="count", minimum=0)
    timed_batches: int = option(2, "timed batches per r in each round", unit="count", minimum=1)
    rounds: int = option(3, "timing rounds; the r settings take turns and each keeps its median round", unit="count",
                         minimum=1)
    device: str = device_option()
    precision: str = precision_option()


@dataclass(kw_only=True)
class EvaluateSettings:
    """The `fat evaluate` options."""

    checkpoint: Path = option(help="trained student file (from `fat train`, .pt or .safetensors) or a Hugging Face AST "
                                   "folder (config.json + model.safetensors)")
    datafile: Path = option(help="eval datafile (AST JSON)")
    packed: list[Path] = packed_option()
    labels: Path | None = option(
        None, "label CSV (index,mid,display_name); default: class_labels_indices.csv beside the datafile")
    teacher_logits: Path | None = option(
        None, "teacher logits store (HDF5) for the reference row; default: no teacher row")
    allow_incomplete_teacher: bool = option(
        False, "accept a teacher store whose writing did not finish (default: refuse it)")
    r: list[str] = option(["0", "4", "8", "16"],
                          "merge rates to evaluate: 16, 16,16,8 (per layer), 16:-1 (r:inflection schedule) or a "
                          "schedule file (.json from fat tune-r)",
                          metavar="R")
    compare: list[Path] = option([], "other student files evaluated at r=0 on the same chart (default: none)",
                                 metavar="CHECKPOINT")
    metric: str = option(
        "auto", "main metric: auto = the one the student was trained with (fat train --metric), else accuracy for a "
                "single-label (cross-entropy) student and mAP otherwise; mAP, mean AUC and d' are always reported",
        choices=("auto", "map", "accuracy"))
    timing: TimingSettings = nested(TimingSettings)
    # One thread by default, unlike the other stages' torch default (every core): evaluate's product is a
    # timing, and on a shared machine more threads spin against the other work. The demo's evaluate on a
    # loaded 2-core VM: 1 thread 20 s and 150-175 clips/s at r = 0, 2 threads 38-45 s and 51-76 clips/s
    # (docs/benchmarks.md, "Evaluate: CPU threads").
    threads: int = option(1, "torch CPU threads of this process; 0 = torch's default, every core (on a shared "
                             "machine that can be several times slower: docs/benchmarks.md)", unit="threads", minimum=0)
    workers: int = option(0, "DataLoader worker processes for audio decoding (0: in-process)", minimum=0)
    limit: int | None = option(None, "evaluate only the first N clips (default: all)", minimum=1, metavar="N")
    compile: bool = option(False, "torch.compile the student (merging included) for scoring and timing; each r's "
                                  "compile time is reported apart (eval.json compile_seconds), eager with a warning "
                                  "where it cannot compile")
    progress_every: float = option(30.0, "time between progress lines of the scoring pass", unit="s", minimum=0)
    out_dir: Path = option(Path("reports"), "folder for eval.json, eval.md, tradeoff.png")

    def __post_init__(self) -> None:
        self.r = [str(r) for r in self.r]  # params.yaml lists numbers: r: [0, 2, 4]
        self.compare = [Path(p) for p in self.compare]
        self.packed = [Path(p) for p in self.packed]
