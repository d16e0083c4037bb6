"""`fat logits --oracle-from-labels`: a store of confident logits made from the datafiles' own labels.

Not a teacher: no model and no audio are involved. Each clip's row is +ORACLE_LOGIT at its
labelled classes and −ORACLE_LOGIT elsewhere (sigmoid ≈ 0.993 / 0.007), in the same HDF5 layout
as a real teacher store (`pipeline.store`), so `fat train --teacher` reads it unchanged. Its
use: a teacher that knows the answers, to show offline what the KD term adds when the training
labels are corrupted (`fat train --label-noise`). Its provenance says what it is, everywhere a
store's attributes are read: teacher `oracle-from-labels`, `label_derived` true, a `warning`
attribute, no checkpoint; a real teacher's store is never mistaken for it, nor it for one.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.core.errors import FatError
from pipeline.datafile import load_clips, load_label_csv
from pipeline.logits.assemble import Outcome
from pipeline.logits.settings import SAMPLE_RATE, LogitsSettings
from pipeline.logits.teachers import digest
from pipeline.store import LogitsStore, write_store

log = logging.getLogger(__name__)

ORACLE_NAME = "oracle-from-labels"
ORACLE_LOGIT = 5.0
ORACLE_WARNING = "LABEL-DERIVED ORACLE, NOT A TEACHER: logits = ±5 from the datafiles' own labels (a KD test bed)"


def oracle_logits(targets: np.ndarray, confidence: float = ORACLE_LOGIT) -> np.ndarray:
    """+confidence where a clip is labelled with a class, −confidence elsewhere: (N, C) float32."""
    return (confidence * (2.0 * targets - 1.0)).astype(np.float32)


def write_oracle_store(settings: LogitsSettings, label_csv: Any) -> Outcome:
    """Write (or confirm up to date) the oracle store of `settings.datafile`'s clips at `settings.out`."""
    if label_csv is None:
        raise FatError("--oracle-from-labels needs the label CSV (class_labels_indices.csv beside the first "
                       "datafile, or --labels)")
    labels = load_label_csv(label_csv)
    clips = load_clips(settings.datafile, labels)
    identity = {"oracle_from_labels": True, "logit": ORACLE_LOGIT, "ids_and_labels": clips.fingerprint(),
                "label_csv_sha256": labels.sha256, "dtype": settings.store_dtype}
    identity_sha = digest(identity)
    if settings.out.exists():
        existing = LogitsStore(settings.out, allow_incomplete=True)
        same = existing.attrs.get("identity_sha256") == identity_sha
        described = f"teacher {existing.attrs.get('teacher', '?')}"
        checked = existing.has_checksums  # a store from before row checksums is written again to gain them
        existing.close()
        if same and checked:
            log.info("%s: up to date (oracle logits of the same %d clips and labels)", settings.out, len(clips))
            return Outcome(settings.out, True, 0, len(clips), {}, None)
        if not same and not settings.overwrite:
            raise FatError(f"{settings.out}: already holds another store ({described}); choose another --out, or "
                           "pass --overwrite to replace it")
    attrs: dict[str, Any] = {
        "teacher": ORACLE_NAME, "label_derived": True, "warning": ORACLE_WARNING, "checkpoint_sha256": "",
        "random_init": False, "sample_rate": SAMPLE_RATE, "clip_seconds": float(settings.clip_seconds),
        "frontend": "{}", "members": "[]", "label_csv_sha256": labels.sha256, "precision": "none",
        "identity_sha256": identity_sha, "fat_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "requested": len(clips), "missing": 0, "dtype": settings.store_dtype,
    }
    logits = oracle_logits(clips.targets())
    write_store(settings.out, list(clips.ids), [(0, logits)], len(labels), attrs, complete=True,
                dtype=settings.store_dtype)
    log.warning("%s: %s", settings.out, ORACLE_WARNING)
    return Outcome(settings.out, True, len(clips), 0, {}, None)
