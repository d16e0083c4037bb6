"""`fat validate` throughput: files per second on 10 s, 32 kHz mono PCM-16 WAVs, against plain reading.

Writes N such files (640 KB each; default 10,000 = 6.4 GB) into a temporary folder with a
metadata CSV, then measures, in one run and with the files in the page cache:

- plain read: `soundfile.read(path, dtype="float32")` of every file, by a pool of P processes
  (the floor any validator that decodes every sample pays), before and after validate;
- validate: the whole `fat validate --workers P` command as its own process (start-up, worker
  pool, datafile, report and summary included), on the same files.

Because the machine is shared, the ratio validate / plain read is the figure to compare.
Run: .venv/bin/python -m bench.validate  [--files 10000 --workers 2 --dir /tmp]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 32000
SECONDS = 10.0


def make_corpus(root: Path, files: int) -> list[str]:
    """N distinct-content 10 s clips (a few noise templates, each file's first samples made unique)."""
    audio = root / "audio" / "bench"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    templates = []
    for k in range(8):
        signal = np.convolve(rng.standard_normal(int(RATE * SECONDS)), np.ones(6) / 6, mode="same")
        signal *= 0.1 / np.sqrt(np.mean(signal**2)) * (0.5 + 0.5 * np.sin(np.linspace(0, 7 + k, signal.size)) ** 2 + 0.2)
        buffer = io.BytesIO()
        sf.write(buffer, signal.astype(np.float32), RATE, subtype="PCM_16", format="WAV")
        templates.append(bytearray(buffer.getvalue()))
    ids = [f"b{i:010d}" for i in range(files)]
    for i, ytid in enumerate(ids):
        data = templates[i % len(templates)]
        data[44:48] = i.to_bytes(4, "little")  # first two samples differ per file
        (audio / f"{ytid}.wav").write_bytes(data)
    (root / "metadata").mkdir()
    lines = ["ytid,start_seconds,end_seconds,positive_labels"] + [f'{ytid},30.000,40.000,"/m/09x0r"' for ytid in ids]
    (root / "metadata" / "bench.csv").write_text("\n".join(lines) + "\n")
    (root / "metadata" / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n')
    return [str(audio / f"{ytid}.wav") for ytid in ids]


def _read_chunk(paths: list[str]) -> int:
    frames = 0
    for path in paths:
        audio, _ = sf.read(path, dtype="float32")
        frames += audio.shape[0]
    return frames


def plain_read(paths: list[str], processes: int) -> float:
    """Files/s of reading every file with soundfile in `processes` processes (pool start-up included)."""
    chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
    started = time.perf_counter()
    with multiprocessing.get_context("forkserver").Pool(processes) as pool:
        frames = sum(pool.imap(_read_chunk, chunks))
    seconds = time.perf_counter() - started
    assert frames == len(paths) * int(RATE * SECONDS)
    return len(paths) / seconds


def validate(root: Path, workers: int) -> tuple[float, dict]:
    command = [sys.executable, "-m", "pipeline.cli", "validate", "--split", "bench",
               "--metadata-dir", str(root / "metadata"), "--audio-dir", str(root / "audio"),
               "--out-dir", str(root / "datafiles"), "--report-dir", str(root / "reports"),
               "--workers", str(workers), "--no-progress"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fat validate failed ({done.returncode}):\n{done.stderr}")
    summary = json.loads((root / "reports" / "bench.validate.json").read_text())
    if summary["passed"] != summary["clips"]:
        raise SystemExit(f"not every clip passed: {summary['reasons']}")
    return summary["clips"] / seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10000, help="number of 10 s WAVs to generate (640 KB each)")
    parser.add_argument("--workers", type=int, default=2, help="processes for both validate and the plain read")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary corpus (default: system temp)")
    args = parser.parse_args()
    need = args.files * (int(RATE * SECONDS) * 2 + 44)
    free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
    if need > free * 0.8:
        raise SystemExit(f"{args.files} files need {need / 1e9:.1f} GB; only {free / 1e9:.1f} GB free")
    with tempfile.TemporaryDirectory(prefix="fat-bench-validate-", dir=args.dir) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        paths = make_corpus(root, args.files)
        print(f"generated {args.files} files ({need / 1e9:.2f} GB) in {time.perf_counter() - started:.1f} s")
        load_before = os.getloadavg()[0]
        plain_before = plain_read(paths, args.workers)
        validated, summary = validate(root, args.workers)
        plain_after = plain_read(paths, args.workers)
        load_after = os.getloadavg()[0]
        plain = (plain_before + plain_after) / 2
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"soundfile {sf.__version__} (libsndfile {sf.__libsndfile_version__}); "
              f"load average {load_before:.1f} → {load_after:.1f}")
        print(f"files: {args.files} × 10 s 32 kHz mono PCM-16, workers/processes: {args.workers}")
        print(f"plain soundfile read : {plain_before:8.1f} files/s before, {plain_after:8.1f} after (mean {plain:.1f})")
        print(f"fat validate (whole command): {validated:8.1f} files/s  "
              f"(its own summary, after start-up: {summary['files_per_second']} files/s)")
        print(f"validate / plain read: {validated / plain:.2f}")
        print(f"full corpus (2.0 M clips) at this rate: {2_000_000 / validated / 3600:.2f} h")


if __name__ == "__main__":
    main()
