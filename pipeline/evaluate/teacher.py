"""The teacher's row: its own accuracy on the eval clips, read from its logits store."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import FatError
from pipeline.evaluate.rows import RANDOM_INIT_WARNING, EvalRow
from pipeline.metrics import score
from pipeline.store import LogitsStore

log = logging.getLogger(__name__)


def open_teacher_store(store_path: str | Path, num_classes: int, allow_incomplete: bool = False,
                       label_sha256: str | None = None) -> LogitsStore:
    """The teacher's logits store, checked to fit the eval labels (before any slow work is done)."""
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


def teacher_row(store: LogitsStore, ids: Sequence[str], targets: np.ndarray, multi_label: bool) -> EvalRow | None:
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
