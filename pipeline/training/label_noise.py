"""A reproducible corruption of training labels, to show what a teacher adds when labels are wrong.

`--label-noise F` picks round(F · N) training clips (seeded by `--label-noise-seed`) and gives
each the labels of the next one in a random cycle through them: every picked clip carries
another picked clip's label set. The label frequencies stay exactly those of the datafile (so
the head's prior is unchanged) while the picked clips' labels no longer describe their audio.
Validation labels are never touched; the datafile on disk is never changed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline.core.errors import FatError
from pipeline.datafile import ClipList


def corrupt_labels(clips: ClipList, fraction: float, seed: int) -> tuple[ClipList, np.ndarray]:
    """(the list with corrupted labels, sorted rows whose labels were replaced); fraction 0 = unchanged."""
    if not 0.0 <= fraction <= 1.0:
        raise FatError(f"--label-noise is a fraction of the training clips and must lie in [0, 1], got {fraction}")
    if clips.class_indices is None or clips.offsets is None:
        raise FatError(f"{clips.source}: label noise needs the clips' classes (a label CSV)")
    count = int(round(fraction * len(clips)))
    if count < 2:
        return clips, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x1ABE1])  # its own stream: the training seed does not move it
    cycle = rng.choice(len(clips), size=count, replace=False)
    donor = {int(row): int(cycle[(i + 1) % count]) for i, row in enumerate(cycle)}
    classes = [clips.classes_of(donor.get(i, i)) for i in range(len(clips))]
    counts = np.fromiter((len(c) for c in classes), dtype=np.int64, count=len(classes))
    offsets = np.zeros(len(clips) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = np.concatenate(classes).astype(np.int32) if len(classes) else np.zeros(0, dtype=np.int32)
    return replace(clips, class_indices=flat, offsets=offsets), np.sort(cycle).astype(np.int64)
