"""One line of the evaluation report (a model at one setting, its accuracy and its cost)."""

from __future__ import annotations

from dataclasses import dataclass, field

RANDOM_INIT_WARNING = "RANDOM-INIT TEACHER: its logits carry no knowledge (demo plumbing only)"


@dataclass
class EvalRow:
    """One line of the report: a model at one setting, its accuracy and its cost."""

    name: str
    kind: str                      # "student", "compare" or "teacher"
    r: str | None                  # the r setting as given ("0", "8", "16:-1"); None for the teacher
    metrics: dict[str, float]      # mAP, mAUC, d_prime, classes (+ accuracy for single-label)
    clips: int                     # clips the metrics were computed on
    clips_per_second: float | None = None
    gflops: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None  # tokens after the last block
    compile_seconds: float | None = None  # --compile: the first call at this r (compilation), not in clips/s
    notes: list[str] = field(default_factory=list)


def primary_metric(multi_label: bool) -> str:
    return "mAP" if multi_label else "accuracy"
