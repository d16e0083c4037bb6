"""What the teacher store's row checksums cost: a whole-store read with and without them, and the write.

`fat train` reads every row of the store once, in slabs of 4096 rows (`pipeline.dataset.
load_teacher_table`); `fat evaluate` and `fat logits verify` read the same way. This writes an
AudioSet-shaped store (527 float16 columns, `--rows` rows) with `pipeline.store.write_store`, makes
a copy without the `row_crc32` dataset (a store from before checksums, which is read unchecked),
and times full reads of both, interleaved over `--rounds` rounds after one warm-up read each (so
both are read from the page cache, the case where the checksum's share is largest). Also: the
time of `write_store` and of the checksums alone over the same rows.

    python -m bench.logits_store                  # 200,000 rows (≈ 211 MB of float16)
    python -m bench.logits_store --rows 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline.store import CHECKSUMS, LogitsStore, row_checksums, write_store

CLASSES = 527
SLAB = 4096  # load_teacher_table's block


def read_all(path: Path) -> float:
    """Seconds to read every row as training does (float32 slabs), checksums verified when the store has them."""
    start = time.perf_counter()
    store = LogitsStore(path)
    for low in range(0, len(store), SLAB):
        store.read_rows(np.arange(low, min(low + SLAB, len(store))))
    store.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    rng = np.random.default_rng(0)
    logits = rng.normal(-4, 2, (args.rows, CLASSES)).astype(np.float16)
    ids = [f"{i:011d}" for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as folder:
        checked, unchecked = Path(folder) / "checked.h5", Path(folder) / "unchecked.h5"
        start = time.perf_counter()
        write_store(checked, ids, ((s, logits[s:s + 16384]) for s in range(0, args.rows, 16384)), CLASSES,
                    {"teacher": "bench"}, complete=True)
        write_seconds = time.perf_counter() - start
        start = time.perf_counter()
        row_checksums([i.encode() for i in ids], logits)
        checksum_seconds = time.perf_counter() - start
        shutil.copy(checked, unchecked)
        with h5py.File(unchecked, "r+") as handle:
            del handle[CHECKSUMS]
        read_all(checked), read_all(unchecked)  # warm-up: both from the page cache from here on
        timings: dict[str, list[float]] = {"checked": [], "unchecked": []}
        for _ in range(args.rounds):
            timings["checked"].append(read_all(checked))
            timings["unchecked"].append(read_all(unchecked))

    megabytes = logits.nbytes / 1e6
    checked_s, unchecked_s = statistics.median(timings["checked"]), statistics.median(timings["unchecked"])
    print(f"{args.rows} rows × {CLASSES} float16 ({megabytes:.0f} MB), {platform.machine()}, median of "
          f"{args.rounds} rounds")
    print(f"{'measurement':<44} {'seconds':>8} {'MB/s':>8}")
    print(f"{'full read, no checksums (old store)':<44} {unchecked_s:8.3f} {megabytes / unchecked_s:8.0f}")
    print(f"{'full read, every row checked':<44} {checked_s:8.3f} {megabytes / checked_s:8.0f}")
    print(f"{'write_store (checksums included)':<44} {write_seconds:8.3f} {megabytes / write_seconds:8.0f}")
    print(f"{'the checksums alone':<44} {checksum_seconds:8.3f} {megabytes / checksum_seconds:8.0f}")
    print(f"checked / unchecked read: {checked_s / unchecked_s:.2f}×; per row {1e6 * (checked_s - unchecked_s) / args.rows:.1f} µs "
          f"more; rounds checked {[round(t, 3) for t in timings['checked']]}, unchecked "
          f"{[round(t, 3) for t in timings['unchecked']]}")


if __name__ == "__main__":
    main()
