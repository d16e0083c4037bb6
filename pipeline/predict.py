"""`fat predict`: tag audio files with a teacher (or a trained student) and list the top labels.

A file is decoded at any rate and format (pipeline.core.audio), resampled to the model's rate and
cut into windows of the model's input length with a hop; a file shorter than one window is
padded to it, as in training. Each window gets its own top-k; the pooled result takes, per
class, the maximum (or mean) probability over the windows.

Models plug in through `Tagger`: `teacher:NAME` (released EfficientAT mn or DyMN, or PaSST, or several names
for an ensemble), `student:PATH` (a `fat train` checkpoint, .pt or .safetensors, or a Hugging
Face AST folder) and `onnx:PATH` (a `fat export --format onnx` file, run by ONNX Runtime on the CPU).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.core.errors import FatError
from pipeline.core.ffmpeg import cache_dir
from pipeline.datafile import LABEL_CSV_NAME, load_label_csv

if TYPE_CHECKING:  # torch stays out of `fat predict --help`; the taggers import it when built
    import torch

    from pipeline.clip_audio import ClipAudio
    from pipeline.dataset import Features
    from pipeline.runtime import Precision

log = logging.getLogger(__name__)

LABEL_SEARCH = (Path("data/datafiles"), Path("data/metadata"))  # relative to the working folder


class Tagger(Protocol):
    """A model that maps fixed-length waveform windows to class scores."""

    name: str
    sample_rate: int
    window_seconds: float
    num_classes: int
    multi_label: bool

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """(B, samples) float32 at `sample_rate` → (B, num_classes) raw scores."""

    def describe(self) -> dict[str, Any]:
        """Provenance for the JSON output."""


class TeacherTagger:
    """Released teacher(s) (mn, DyMN, PaSST) at 32 kHz on 10 s windows; several members = mean logits."""

    multi_label = True

    def __init__(self, names: Sequence[str], checkpoints: Sequence[Path], random_init: bool, num_classes: int | None,
                 device: torch.device, precision: Precision) -> None:
        from pipeline.logits.teachers import load_teachers

        self.members = [m.to(device) for m in load_teachers(names, checkpoints, random_init, num_classes)]
        self.device, self.precision = device, precision
        self.name = "+".join(m.provenance.name for m in self.members)
        self.sample_rate = self.members[0].sample_rate
        self.window_seconds = 10.0
        self.num_classes = self.members[0].num_classes

    def logits(self, windows: np.ndarray) -> np.ndarray:
        import torch

        from pipeline.logits.compute import ensemble_logits

        waves = torch.from_numpy(windows).to(self.device)
        return ensemble_logits(self.members, waves, self.precision).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        provs = [m.provenance.to_dict() for m in self.members]
        return {"kind": "teacher", "name": self.name, "random_init": any(p["random_init"] for p in provs),
                "members": provs}


class StudentTagger:
    """A `fat train` student: 16 kHz Kaldi fbank of the trained frame count, AST forward."""

    def __init__(self, path: Path, device: torch.device, precision: Precision, r: str | None = None) -> None:
        from pipeline.checkpoint import load_student, student_features
        from student.errors import StudentError
        from student.tome import parse_r_spec, set_tome_r

        self.model, self.config = load_student(path, map_location=device)
        self.r = r or "0"
        try:
            set_tome_r(self.model, parse_r_spec(self.r))
        except StudentError as exc:
            raise FatError(f"--r {r}: {exc}") from None
        self.path, self.device, self.precision = path, device, precision
        self.name = f"student:{path.name}"
        self.sample_rate = 16000
        self.features = student_features(self.config)
        self.window_seconds = self.features.target_frames / 100.0  # 10 ms frame shift
        self.num_classes = int(self.config["num_classes"])
        self.multi_label = bool(self.config.get("multi_label", True))

    def logits(self, windows: np.ndarray) -> np.ndarray:
        import torch

        fbanks = student_fbanks(self.features, windows, self.sample_rate, self.device)  # fp32, outside autocast
        with torch.inference_mode(), self.precision.autocast():
            return self.model(fbanks).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"kind": "student", "name": self.name, "checkpoint": str(self.path),
                "label_csv_sha256": self.config.get("label_csv_sha256"), "trained_tome_r": self.config.get("tome_r"),
                "tome_r": self.r}


def student_fbanks(features: Features, windows: np.ndarray, sample_rate: int, device: torch.device) -> torch.Tensor:
    """Normalised fbanks of equal-length windows, computed as training and fat evaluate compute them
    (student.frontend), on `device`: one feature path for a torch student and an ONNX one."""
    import torch

    from student.frontend import BatchFbank

    frontend = BatchFbank(features.target_frames, features.num_mel_bins, features.mean, features.std).to(device)
    waves = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(device)
    lengths = torch.full((waves.shape[0],), waves.shape[1], dtype=torch.int64)
    with torch.inference_mode():
        return frontend(waves, lengths, sample_rate)


class OnnxTagger:
    """A `fat export --format onnx` student run by ONNX Runtime (CPU), merge rate baked in; the fbank is
    computed as for the student (student.frontend) and handed to the ONNX graph."""

    def __init__(self, path: Path, r: str | None = None) -> None:
        from pipeline.checkpoint import student_features
        from pipeline.export import OnnxStudent
        from student.errors import StudentError
        from student.tome import parse_r_spec

        try:
            wanted = parse_r_spec(r) if r is not None else None
        except StudentError as exc:
            raise FatError(f"--r {r}: {exc}") from None
        self.runner = OnnxStudent(path, r=wanted)
        self.path, self.config = path, self.runner.config
        self.name = f"onnx:{path.name}"
        self.sample_rate = 16000
        self.features = student_features(self.config)
        if (self.features.target_frames, self.features.num_mel_bins) != (self.runner.frames, self.runner.mel_bins):
            raise FatError(f"{path}: its config says {self.features.target_frames} frames × "
                           f"{self.features.num_mel_bins} mel bins, its graph takes {self.runner.frames} × "
                           f"{self.runner.mel_bins}")
        self.window_seconds = self.features.target_frames / 100.0
        self.num_classes = int(self.config["num_classes"])
        self.multi_label = bool(self.config.get("multi_label", True))

    def logits(self, windows: np.ndarray) -> np.ndarray:
        import torch

        return self.runner.logits(student_fbanks(self.features, windows, self.sample_rate, torch.device("cpu")).numpy())

    def describe(self) -> dict[str, Any]:
        return {"kind": "onnx", "name": self.name, "file": str(self.path),
                "label_csv_sha256": self.config.get("label_csv_sha256"), "tome_r": self.runner.info["tome_r"],
                "tokens_per_layer": self.runner.info["tokens_per_layer"]}


def load_tagger(model: str, checkpoints: Sequence[Path], random_init: bool, num_classes: int | None,
                device: torch.device, precision: Precision, r: str | None = None) -> Tagger:
    """`teacher:NAME[,NAME...]`, a bare teacher name, `student:PATH` or `onnx:PATH`.

    `device` and `precision` (pipeline.runtime.Precision) are where and how a torch model runs (an ONNX
    model runs on the CPU); `r` is a student's merge rate (an ONNX file must have been exported with it).
    """
    kind, _, value = model.partition(":") if ":" in model else ("teacher", "", model)
    if kind in ("student", "onnx"):
        if random_init or checkpoints:
            raise FatError(f"--random-init and --checkpoint apply to teachers; a {kind} model is its file")
        if kind == "onnx":
            return OnnxTagger(Path(value), r)
        return StudentTagger(Path(value), device, precision, r)
    if r is not None:
        raise FatError("--r is a student's merge rate; teachers do not merge tokens")
    if kind != "teacher" or not value:
        raise FatError(f"--model must be teacher:NAME or student:PATH (or onnx:PATH), got {model!r}")
    return TeacherTagger(value.split(","), checkpoints, random_init, num_classes, device, precision)


@dataclass(frozen=True)
class ClassNames:
    mids: list[str]
    names: list[str]
    source: str | None

    @classmethod
    def find(cls, explicit: Path | None, num_classes: int) -> ClassNames:
        """Names from --labels, else a label CSV of the right size in the usual places, else numbers."""
        candidates = [explicit] if explicit else [folder / LABEL_CSV_NAME for folder in LABEL_SEARCH] + [
            cache_dir() / LABEL_CSV_NAME]
        for path in candidates:
            if path is None or not path.is_file():
                if explicit:
                    raise FatError(f"{explicit}: no such label CSV")
                continue
            labels = load_label_csv(path)
            if len(labels) == num_classes:
                return cls(list(labels.mids), list(labels.names), str(path))
            if explicit:
                raise FatError(f"{explicit}: {len(labels)} classes, but the model predicts {num_classes}")
        log.warning("no label CSV with %d classes found (pass --labels class_labels_indices.csv): "
                    "classes are shown by number", num_classes)
        return cls([""] * num_classes, [f"class {i}" for i in range(num_classes)], None)


def window_starts(samples: int, window: int, hop: int) -> list[int]:
    """Window starts covering the whole file: every hop, plus one window ending at the end."""
    if samples <= window:
        return [0]
    starts = list(range(0, samples - window + 1, hop))
    if starts[-1] + window < samples:
        starts.append(samples - window)
    return starts


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    logits = logits.astype(np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, k: int, names: ClassNames) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "mid": names.mids[i], "name": names.names[i], "probability": round(float(probs[i]), 6)}
            for i in order]


def packed_clips(ids: Sequence[str], packed: Sequence[Path]) -> ClipAudio:
    """The clips `ids` of packed stores, through the reader every stage uses; every id must be there."""
    from pipeline.clip_audio import open_clip_audio

    listed = SimpleNamespace(ids=list(ids), paths=[""] * len(ids), source="--id")
    clips = open_clip_audio(listed, packed)
    clips.require_all()
    return clips


def tag_file(tagger: Tagger, path: Path, names: ClassNames, window_s: float, hop_s: float, k: int,
             pool: str, batch_size: int) -> dict[str, Any]:
    from pipeline.core.audio import read_audio

    audio, rate = read_audio(path, sample_rate=tagger.sample_rate)
    return tag_samples(tagger, audio, rate, str(path), names, window_s, hop_s, k, pool, batch_size)


def tag_samples(tagger: Tagger, audio: np.ndarray, rate: int, path: str, names: ClassNames, window_s: float,
                hop_s: float, k: int, pool: str, batch_size: int) -> dict[str, Any]:
    """Windows, top-k per window and pooled, of samples at the tagger's rate (`path` names them)."""
    from pipeline.core.audio import fit_length, require_finite

    require_finite(audio, path)
    window, hop = int(round(window_s * rate)), max(1, int(round(hop_s * rate)))
    starts = window_starts(audio.size, window, hop)
    segments = np.stack([fit_length(audio[s:s + window], window) for s in starts])
    logits = np.concatenate([tagger.logits(segments[i:i + batch_size]) for i in range(0, len(segments), batch_size)])
    if not np.isfinite(logits).all():
        raise FatError(f"{path}: the model produced NaN or infinite scores")
    probs = probabilities(logits, tagger.multi_label)
    pooled = probs.max(axis=0) if pool == "max" else probs.mean(axis=0)
    return {
        "path": str(path), "duration_s": round(audio.size / rate, 3),
        "windows": [{"start_s": round(s / rate, 3), "end_s": round(min(s + window, audio.size) / rate, 3),
                     "top": top_k(p, k, names)} for s, p in zip(starts, probs, strict=True)],
        "pooled": {"method": pool, "top": top_k(pooled, k, names)},
    }


def format_text(result: dict[str, Any], window_s: float, hop_s: float, per_window: int = 3) -> str:
    windows = result["windows"]
    lines = [f"{result['path']}  ({result['duration_s']:.1f} s; "
             + (f"{len(windows)} windows of {window_s:g} s, hop {hop_s:g} s)" if len(windows) > 1 else "1 window)")]
    label = f"pooled ({result['pooled']['method']} over windows)" if len(windows) > 1 else "top labels"
    lines.append(f"  {label}:")
    width = max(len(t["name"]) for t in result["pooled"]["top"])
    lines += [f"    {t['probability']:.3f}  {t['name']:<{width}}  {t['mid']}".rstrip() for t in result["pooled"]["top"]]
    if len(windows) > 1:
        lines.append("  per window:")
        for w in windows:
            tops = " · ".join(f"{t['name']} {t['probability']:.2f}" for t in w["top"][:per_window])
            lines.append(f"    {w['start_s']:6.1f} – {w['end_s']:6.1f} s   {tops}")
    return "\n".join(lines)


def check_window(window_s: float | None, hop_s: float | None, tagger: Tagger) -> tuple[float, float]:
    window = tagger.window_seconds if window_s is None else window_s
    hop = window / 2 if hop_s is None else hop_s
    if not (window > 0 and hop > 0) or math.isinf(window):
        raise FatError(f"--window and --hop must be positive seconds, got {window} and {hop}")
    return window, hop
