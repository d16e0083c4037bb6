"""Accuracy against speed for one trained student at several merge rates r, beside the teacher.

r is an evaluation setting: the same weights run at every r (ToMe needs no retraining), so the
eval set is read once and each batch goes through the model at every r. Throughput is measured
separately on one fixed batch per setting — model forward only, batched, after warm-up, with the
device synchronised around the timed loop — so the numbers compare settings, not data loading.
Other checkpoints (e.g. the same student trained with a larger patch stride, the cheap
alternative to merging) can be evaluated beside it at r = 0 and land on the same chart.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import FatError

log = logging.getLogger(__name__)

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
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TimingSettings:
    """How throughput is measured: batch size, warm-up batches, timed batches per round, rounds, device, precision."""

    batch_size: int = 32
    warmup_batches: int = 2
    timed_batches: int = 2
    rounds: int = 3
    device: str = "cpu"
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast)


# --------------------------------------------------------------------------- devices


def resolve_device(name: str) -> str:
    """'auto' → cuda when available, else cpu; a named device must exist."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FatError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    return name


def resolve_precision(name: str, device: str) -> str:
    """'auto' → bf16 autocast on GPUs that have it (else fp16), fp32 on CPU (CPU autocast is usually slower)."""
    if name == "auto":
        if not device.startswith("cuda"):
            return "fp32"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and not device.startswith("cuda"):
        raise FatError("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return name


def _autocast(device: str, precision: str):  # noqa: ANN202
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


# --------------------------------------------------------------------------- measuring


def measure_throughput(model: Any, batch: Any, r_settings: Sequence[str], timing: TimingSettings) -> dict[str, float]:
    """Clips per second of `model(batch)` at each r on the timing device.

    Every r is warmed up first, then the settings are timed in turn, round after round, and each
    keeps its median round: a burst of load from elsewhere on the machine hits all settings alike
    instead of spoiling one.
    """
    import statistics

    import torch

    from student.tome import parse_r_spec, set_tome_r

    batch = batch.to(timing.device)
    rounds: dict[str, list[float]] = {r: [] for r in r_settings}
    with torch.inference_mode(), _autocast(timing.device, timing.precision):
        for r in r_settings:
            set_tome_r(model, parse_r_spec(r))
            for _ in range(max(timing.warmup_batches, 1)):
                model(batch)
        for _ in range(timing.rounds):
            for r in r_settings:
                set_tome_r(model, parse_r_spec(r))
                _synchronize(timing.device)
                start = time.perf_counter()
                for _ in range(timing.timed_batches):
                    model(batch)
                _synchronize(timing.device)
                rounds[r].append(batch.shape[0] * timing.timed_batches / (time.perf_counter() - start))
    return {r: statistics.median(values) for r, values in rounds.items()}


def predict_all_r(
    model: Any, loader: Any, r_settings: Sequence[str], timing: TimingSettings,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Scores (N, C) per r setting for every clip of `loader` (batches with "fbank" and "index")."""
    import torch

    from student.tome import parse_r_spec, set_tome_r

    chunks: dict[str, list[np.ndarray]] = {r: [] for r in r_settings}
    order: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in loader:
            features, index = batch["fbank"].to(timing.device), batch["index"]
            for r in r_settings:
                set_tome_r(model, parse_r_spec(r))
                with _autocast(timing.device, timing.precision):
                    logits = model(features)
                chunks[r].append(logits.float().cpu().numpy())
            order.append(np.asarray(index))
    positions = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    scores = {r: _reorder(np.concatenate(c) if c else np.zeros((0, 0)), positions) for r, c in chunks.items()}
    return scores, [str(i) for i in positions]


def _reorder(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[positions] = values
    return out


def score(targets: np.ndarray, scores: np.ndarray, multi_label: bool) -> dict[str, float]:
    """mAP / mAUC / d' always; top-1 accuracy too for single-label tasks."""
    from pipeline.metrics import accuracy, multilabel_metrics

    result = multilabel_metrics(targets, scores)
    if not multi_label:
        result.update(accuracy(targets, scores))
    return result


def primary_metric(multi_label: bool) -> str:
    return "mAP" if multi_label else "accuracy"


def ranks_by_map(metric: str, config: dict[str, Any], targets: np.ndarray, clips: Any) -> bool:
    """True when mAP is the main metric, False for top-1 accuracy.

    `metric` auto follows the student: its `main_metric` (fat train --metric), else accuracy for a
    single-label (cross-entropy) student and mAP otherwise. Accuracy needs exactly one label per
    clip (Speech Commands trains with BCE but is scored by accuracy, as AST does).
    """
    if metric == "auto":  # what the student was trained to be scored by, else what its loss implies
        metric = config.get("main_metric") or ("map" if bool(config.get("multi_label", True)) else "accuracy")
    if metric == "accuracy":
        counts = targets.sum(axis=1)
        if not np.all(counts == 1):
            bad = int(np.flatnonzero(counts != 1)[0])
            raise FatError(f"{clips.source}: accuracy needs exactly one label per clip; clip {clips.ids[bad]} has "
                           f"{int(counts[bad])} (use --metric map)")
        return False
    return True


# --------------------------------------------------------------------------- the teacher row


def open_teacher_store(store_path: str | Path, num_classes: int, allow_incomplete: bool = False,
                       label_sha256: str | None = None) -> Any:
    """The teacher's logits store, checked to fit the eval labels (before any slow work is done)."""
    from pipeline.store import LogitsStore

    store = LogitsStore(store_path, allow_incomplete=allow_incomplete)
    recorded = store.attrs.get("label_csv_sha256")
    if label_sha256 and recorded and recorded != label_sha256:
        raise FatError(
            f"{store_path}: made with another label list (sha256 {str(recorded)[:12]}…) than the "
            f"eval datafile's ({label_sha256[:12]}…); its columns would not match the classes"
        )
    if store.num_classes != num_classes:
        raise FatError(f"{store_path}: {store.num_classes} classes, the eval labels have {num_classes}")
    return store


def teacher_row(store: Any, ids: Sequence[str], targets: np.ndarray, multi_label: bool) -> EvalRow | None:
    """The teacher's own accuracy on the eval clips, from its logits store (None if it has none of them)."""
    logits, present = store.fetch(list(ids))
    attrs = store.attrs
    name = f"teacher {attrs.get('teacher', Path(store.path).stem)}"
    notes: list[str] = []
    if bool(attrs.get("random_init", False)):
        notes.append(RANDOM_INIT_WARNING)
        log.warning("!!! %s: %s", store.path, RANDOM_INIT_WARNING)
    if not present.any():
        log.warning("%s holds none of the %d eval clips: no teacher row", store.path, len(ids))
        return None
    if not present.all():
        notes.append(f"teacher logits for {int(present.sum())} of {len(ids)} eval clips")
    return EvalRow(name=name, kind="teacher", r=None, metrics=score(targets[present], logits[present], multi_label),
                   clips=int(present.sum()), notes=notes)


# --------------------------------------------------------------------------- reports


def rows_to_json(rows: Sequence[EvalRow], context: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics file: one flat-ish block per row, keyed so `dvc exp show` columns read well."""
    students: dict[str, Any] = {}
    compares: dict[str, Any] = {}
    teacher: dict[str, Any] | None = None
    for row in rows:
        block: dict[str, Any] = {k: _finite(v) for k, v in row.metrics.items()}
        for key in ("clips_per_second", "gflops", "tokens_out"):
            value = getattr(row, key)
            if value is not None:
                block[key] = _finite(round(value, 4) if isinstance(value, float) else value)
        if row.kind == "student":
            students[f"r={row.r}"] = block
        elif row.kind == "compare":
            compares[row.name] = block
        else:
            block["random_init"] = any(RANDOM_INIT_WARNING in note for note in row.notes)
            teacher = block
    out: dict[str, Any] = {"student": students}
    if compares:
        out["compare"] = compares
    if teacher is not None:
        out["teacher"] = teacher
    out["eval"] = {k: _finite(v) for k, v in context.items() if isinstance(v, (int, float, str, bool))}
    return out


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def markdown_table(rows: Sequence[EvalRow], multi_label: bool, context: dict[str, Any]) -> str:
    """The human-readable report: one table row per (model, r), then the notes."""
    main = primary_metric(multi_label)
    header = ["model", "r", main, "mAUC", "d'", "clips/s", "GFLOPs/clip", "tokens in→out", "clips"]
    if not multi_label:
        header.insert(3, "mAP")
    lines = [
        f"# Evaluation: {context.get('checkpoint', '')}",
        "",
        f"Eval datafile `{context.get('datafile', '')}` ({context.get('clips', '?')} clips, "
        f"{context.get('classes', '?')} classes{_chance_note(context, multi_label)}). "
        f"Throughput: {context.get('device', '?')}, "
        f"batch {context.get('batch_size', '?')}, {context.get('precision', '?')}, model forward only "
        f"(features precomputed), after warm-up, synchronised.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        m = row.metrics
        cells = [
            row.name + (" ⚠" if row.notes else ""),
            row.r if row.r is not None else "–",
            _fmt(m.get(main), 4),
        ]
        if not multi_label:
            cells.append(_fmt(m.get("mAP"), 4))
        cells += [
            _fmt(m.get("mAUC"), 4), _fmt(m.get("d_prime"), 3), _fmt(row.clips_per_second, 1), _fmt(row.gflops, 3),
            f"{row.tokens_in}→{row.tokens_out}" if row.tokens_in is not None else "–", str(row.clips),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {row.name}: {note}" for row in rows for note in row.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def _chance_note(context: dict[str, Any], multi_label: bool) -> str:
    chance = context.get("chance_mAP")
    if not multi_label or not isinstance(chance, float) or not math.isfinite(chance):
        return ""
    return f"; a random ranking scores mAP ≈ {chance:.3f}"


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def tradeoff_plot(rows: Sequence[EvalRow], multi_label: bool, path: str | Path, title: str = "",
                  context: dict[str, Any] | None = None) -> None:
    """Accuracy against throughput: the student's r sweep as a line, compared models as points,
    the teacher as a horizontal line (its accuracy; its speed is not measured here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.atomic import atomic_path

    main = primary_metric(multi_label)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    students = [row for row in rows if row.kind == "student" and row.clips_per_second]
    if students:
        xs = [row.clips_per_second for row in students]
        ys = [row.metrics.get(main, float("nan")) for row in students]
        ax.plot(xs, ys, "o-", color="tab:blue", label="student, ToMe r sweep")
        for row, x, y in zip(students, xs, ys):
            ax.annotate(f"r={row.r}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    compares = [row for row in rows if row.kind == "compare" and row.clips_per_second]
    if compares:
        ax.plot([row.clips_per_second for row in compares], [row.metrics.get(main, float("nan")) for row in compares],
                "s", color="tab:orange", label="compared checkpoints (r=0)")
        for row in compares:
            ax.annotate(row.name, (row.clips_per_second, row.metrics.get(main, float("nan"))),
                        textcoords="offset points", xytext=(4, -10), fontsize=8)
    for row in rows:
        if row.kind == "teacher":
            value = row.metrics.get(main, float("nan"))
            flag = " — RANDOM INIT" if any(RANDOM_INIT_WARNING in n for n in row.notes) else ""
            ax.axhline(value, color="tab:red", linestyle="--", label=f"{row.name}{flag}: {value:.3f}")
    chance = context.get("chance_mAP") if context else None
    if multi_label and isinstance(chance, float) and math.isfinite(chance):
        ax.axhline(chance, color="grey", linestyle=":", label=f"random ranking: {chance:.3f}")
    ax.set_xlabel("throughput (clips/s, model forward)")
    ax.set_ylabel(main)
    ax.set_title(title or f"{main} against throughput", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_reports(rows: Sequence[EvalRow], multi_label: bool, context: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """reports/eval.json (metrics), eval.md (table), tradeoff.png (chart); written atomically."""
    from pipeline.atomic import write_json_atomic, write_text_atomic

    out_dir = Path(out_dir)
    paths = {"json": out_dir / "eval.json", "md": out_dir / "eval.md", "png": out_dir / "tradeoff.png"}
    write_json_atomic(paths["json"], rows_to_json(rows, context))
    write_text_atomic(paths["md"], markdown_table(rows, multi_label, context))
    title = f"{primary_metric(multi_label)} against throughput: {context.get('checkpoint', '')} on {context.get('device', '')}"
    tradeoff_plot(rows, multi_label, paths["png"], title=title, context=context)
    return paths


def rows_as_dicts(rows: Sequence[EvalRow]) -> list[dict[str, Any]]:
    return [asdict(row) for row in rows]


# --------------------------------------------------------------------------- the whole evaluation


@dataclass(frozen=True)
class EvalRequest:
    """Everything `fat evaluate` was asked to do."""

    checkpoint: Path
    datafile: Path
    labels: Path | None = None
    teacher_logits: Path | None = None
    allow_incomplete_teacher: bool = False
    r_settings: tuple[str, ...] = ("0", "4", "8", "16")
    compare: tuple[Path, ...] = ()
    metric: str = "auto"
    workers: int = 0
    limit: int | None = None


def norm_from_config(config: dict[str, Any]) -> tuple[float, float]:
    """The fbank (mean, std) the student was trained with, from its checkpoint config."""
    if "norm_mean" not in config or "norm_std" not in config:
        raise FatError("the student checkpoint does not record its fbank normalisation (norm_mean / norm_std)")
    return float(config["norm_mean"]), float(config["norm_std"])


def load_eval_set(request: EvalRequest) -> tuple[Any, Any, np.ndarray]:
    """(clip list, labels, targets (N, C)) of the eval datafile (the first `limit` clips)."""
    from pipeline.datafile import label_csv_beside, load_clips, load_label_csv

    labels = load_label_csv(request.labels or label_csv_beside(request.datafile))
    clips = load_clips([request.datafile], labels, require_files=True)
    if request.limit is not None:
        clips = clips.head(request.limit)
    targets = clips.targets()
    return clips, labels, targets


def _loader(clips: Any, config: dict[str, Any], batch_size: int, workers: int) -> Any:
    """Evaluation items (no augmentation), features exactly as `fat train` computes them."""
    from torch.utils.data import DataLoader

    from pipeline.dataset import ClipDataset, Features

    mean, std = norm_from_config(config)
    features = Features(target_frames=int(config.get("target_frames", config["input_tdim"])),
                        num_mel_bins=int(config.get("num_mel_bins", config.get("input_fdim", 128))), mean=mean, std=std)
    return DataLoader(ClipDataset(clips, features), batch_size=batch_size, shuffle=False, num_workers=workers)


def _timing_batch(loader: Any, batch_size: int) -> Any:
    """One batch of real eval features, repeated up to `batch_size` clips if the set is smaller."""
    import torch

    features = next(iter(loader))["fbank"]
    if features.shape[0] < batch_size:
        repeats = math.ceil(batch_size / features.shape[0])
        features = torch.cat([features] * repeats)[:batch_size]
    return features


def evaluate_student(path: Path, name: str, kind: str, r_settings: Sequence[str], clips: Any,
                     targets: np.ndarray, num_classes: int, timing: TimingSettings, workers: int,
                     label_sha256: str | None, metric: str = "auto") -> tuple[list[EvalRow], dict[str, Any]]:
    """Rows (one per r) for one student checkpoint; also returns its config."""
    from pipeline.checkpoint import load_student
    from student.errors import StudentError
    from student.flops import analytic_gflops
    from student.tome import parse_r_spec, set_tome_r, tokens_per_layer

    model, config = load_student(path, map_location=timing.device)
    if int(config["num_classes"]) != num_classes:
        raise FatError(f"{path}: the student predicts {config['num_classes']} classes, the eval labels have {num_classes}")
    trained_sha = config.get("label_csv_sha256")
    if label_sha256 and trained_sha and trained_sha != label_sha256:
        raise FatError(f"{path}: trained with another label list (sha256 {str(trained_sha)[:12]}…) than the eval "
                       f"datafile's ({label_sha256[:12]}…)")
    multi_label = ranks_by_map(metric, config, targets, clips)
    for r in r_settings:  # a bad r fails here, before any work
        try:
            set_tome_r(model, parse_r_spec(r))
        except StudentError as exc:
            raise FatError(f"--r {r}: {exc}") from None
    loader = _loader(clips, config, timing.batch_size, workers)
    scores, _ = predict_all_r(model, loader, r_settings, timing)
    speeds = measure_throughput(model, _timing_batch(loader, timing.batch_size), r_settings, timing)
    rows = []
    for r in r_settings:
        spec = parse_r_spec(r)
        speed = speeds[r]
        rows.append(EvalRow(
            name=name, kind=kind, r=r, metrics=score(targets, scores[r], multi_label), clips=len(clips),
            clips_per_second=speed, gflops=analytic_gflops(model, spec), tokens_in=model.num_tokens,
            tokens_out=tokens_per_layer(model, spec)[-1],
        ))
        log.info("%s r=%s: %s %.4f, %.1f clips/s, %.3f GFLOPs/clip, %d→%d tokens", name, r, primary_metric(multi_label),
                 rows[-1].metrics.get(primary_metric(multi_label), float("nan")), speed, rows[-1].gflops,
                 rows[-1].tokens_in, rows[-1].tokens_out)
    set_tome_r(model, 0)
    return rows, config


def run_evaluation(request: EvalRequest, timing: TimingSettings, out_dir: str | Path) -> list[EvalRow]:
    """Evaluate the student at every r, compared checkpoints at r = 0, the teacher; write the reports."""
    clips, labels, targets = load_eval_set(request)
    count = len(clips)
    ids = list(clips.ids)
    label_sha = getattr(labels, "sha256", None)
    store = None
    if request.teacher_logits is not None:
        store = open_teacher_store(request.teacher_logits, len(labels), request.allow_incomplete_teacher, label_sha)
    rows, config = evaluate_student(request.checkpoint, "student", "student", request.r_settings, clips, targets,
                                    len(labels), timing, request.workers, label_sha, request.metric)
    multi_label = ranks_by_map(request.metric, config, targets, clips)
    for other in request.compare:
        # Compared students are scored with the main student's metric, whatever they were trained with.
        other_rows, _ = evaluate_student(
            other, _compare_name(other), "compare", ("0",), clips, targets, len(labels), timing, request.workers,
            label_sha, "map" if multi_label else "accuracy")
        rows += other_rows
    if store is not None:
        teacher = teacher_row(store, ids, targets, multi_label)
        store.close()
        if teacher is not None:
            rows.append(teacher)
            log.info("%s: %s %.4f on %d clips", teacher.name, primary_metric(multi_label),
                     teacher.metrics.get(primary_metric(multi_label), float("nan")), teacher.clips)
    context = {
        "checkpoint": str(request.checkpoint), "datafile": str(request.datafile), "clips": count,
        "classes": len(labels), "device": device_description(timing.device), "batch_size": timing.batch_size,
        "precision": timing.precision, "trained_r": str(config.get("tome_r", "")),
        "chance_mAP": chance_map(targets),
    }
    paths_out = write_reports(rows, multi_label, context, out_dir)
    log.info("reports: %s", ", ".join(str(p) for p in paths_out.values()))
    return rows


def chance_map(targets: np.ndarray) -> float:
    """The mAP a random ranking scores on average: the mean share of positives per class
    (over the classes that count, those with positives and negatives)."""
    positives = targets.sum(axis=0)
    usable = (positives > 0) & (positives < targets.shape[0])
    return round(float((positives[usable] / targets.shape[0]).mean()), 4) if usable.any() else float("nan")


def _compare_name(path: Path) -> str:
    """A short label for a compared checkpoint: its folder name when the file has a generic name."""
    return path.parent.name if path.stem in {"student", "best", "last", "model", "final"} else path.stem
