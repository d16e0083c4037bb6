"""The teacher(s) of a run and their identity: what decides the logits' values, and the store's provenance."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.core.errors import FatError
from pipeline.logits.settings import SAMPLE_RATE, LogitsSettings


def load_teachers(names: Sequence[str], checkpoints: Sequence[Path], random_init: bool, num_classes: int | None,
                  seed: int = 0) -> list[Any]:
    """The ensemble members (one or more; presets such as mn_ensemble expanded), on the CPU, in eval mode.
    A name that is a file is a `fat finetune-teacher` teacher (teacher.finetuned), which brings its own weights."""
    from teacher import TeacherError, expand_names, load_teacher
    from teacher.finetuned import is_teacher_file, load_finetuned

    try:
        if any(is_teacher_file(name) for name in names):
            if len(names) != 1 or checkpoints or random_init:
                raise FatError(f"--teacher {' '.join(map(str, names))}: a fine-tuned teacher file runs alone, "
                               "without --checkpoint or --random-init")
            return [load_finetuned(names[0])]
        names = expand_names(list(names))
        if checkpoints and len(checkpoints) != len(names):
            raise FatError(f"{len(checkpoints)} --checkpoint files for {len(names)} teachers ({', '.join(names)}): "
                           "give one per teacher, in the same order")
        return [load_teacher(name, checkpoint=checkpoints[i] if checkpoints else None, random_init=random_init,
                             num_classes=num_classes, seed=seed + i) for i, name in enumerate(names)]
    except TeacherError as exc:
        raise FatError(str(exc)) from exc


def check_teacher_labels(members: Sequence[Any], labels: Any, label_csv: Path | None) -> None:
    """A fine-tuned teacher's columns are the classes of the label CSV it learned: logits for another label CSV
    (even one of the same size) would put its classes under the wrong names, so its sha256 must match."""
    for member in members:
        learned = getattr(member, "label_csv_sha256", None)
        if learned is None:
            continue
        if labels is None:
            raise FatError(f"{member.provenance.checkpoint_file}: a fine-tuned teacher needs the label CSV it "
                           "learned (--labels, or class_labels_indices.csv beside the first datafile)")
        if labels.sha256 != learned:
            raise FatError(f"{label_csv}: not the label CSV teacher {member.provenance.checkpoint_file} was "
                           f"fine-tuned on (sha256 {labels.sha256[:12]}…, the teacher's {learned[:12]}…): its "
                           "columns would be another set's classes")


def identity_of(members: Sequence[Any], settings: LogitsSettings, num_classes: int, label_sha: str,
                precision: str = "fp32") -> dict[str, Any]:
    """Everything that decides the logits' values; a store is reused only under the same identity."""
    described = []
    for member in members:
        prov = member.provenance.to_dict()
        prov.pop("checkpoint_file")  # where the file lies does not change the logits
        described.append(prov)
    return {
        "members": described, "clip_seconds": settings.clip_seconds, "sample_rate": SAMPLE_RATE,
        "dtype": settings.store_dtype, "num_classes": num_classes, "label_csv_sha256": label_sha,
        "precision": precision,  # fp16 autocast rows must not be mixed silently with fp32 ones
    }


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def store_attrs(members: Sequence[Any], identity: dict[str, Any], settings: LogitsSettings) -> dict[str, Any]:
    provs = [m.provenance for m in members]
    single = len(provs) == 1
    return {
        "teacher": provs[0].name if single else "ensemble(" + ",".join(p.name for p in provs) + ")",
        "checkpoint_sha256": (provs[0].checkpoint_sha256 or "") if single
        else ",".join(p.checkpoint_sha256 or "" for p in provs),
        "random_init": any(p.random_init for p in provs),
        "sample_rate": SAMPLE_RATE,
        "clip_seconds": float(settings.clip_seconds),
        "frontend": json.dumps(provs[0].frontend if single else [p.frontend for p in provs]),
        "members": json.dumps([{**p.to_dict(), "checkpoint_file": Path(p.checkpoint_file).name
                                if p.checkpoint_file else None} for p in provs]),
        "label_csv_sha256": identity["label_csv_sha256"],
        "precision": identity["precision"],
        "identity_sha256": digest(identity),
        "fat_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
