"""What DVC costs on a folder of many 10-s clips, the shape of data/audio/<split>/ under dvc.yaml.

A download stage's output folder is hashed and linked into the cache when the stage finishes
(`dvc commit`, as `dvc repro` does), and checked on every later `dvc status` / `dvc repro`.
This times both on N WAV files of 10 s at 32 kHz (640 kB each) in a fresh git + DVC repository
with the project's cache settings (hard links first):

- first commit: every file read and hashed (md5) and linked into the cache;
- status, nothing changed: DVC's state database knows the files by inode and mtime;
- commit after 1 % of the files were replaced (what a resumed download adds).

    python -m bench.dvc_hash                  # 2000 files (1.3 GB)
    python -m bench.dvc_hash --files 500
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 32000
STAGE = """stages:
  download:
    cmd: "true"
    outs:
      - data/audio:
          persist: true
"""


def dvc(repo: Path, *args: str) -> float:
    """Run one dvc command in `repo`; returns its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)
    return time.perf_counter() - start


def write_clips(folder: Path, count: int, seed: int = 0) -> None:
    """`count` distinct 10-s 16-bit WAVs (distinct bytes, so no two share a cache entry)."""
    from pipeline.core.audio import write_wav

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = (0.1 * rng.standard_normal(RATE * 10)).astype(np.float32)
    for i in range(count):
        wave = np.roll(base, i * 7919) + np.float32(1e-3 * (i % 97))
        write_wav(folder / f"clip{seed}_{i:06d}.wav", wave, RATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000, help="WAV files of 10 s (default: 2000)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the repository goes (default: a temp folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fat-bench-dvc-", dir=args.work_dir))
    try:
        repo = work / "repo"
        repo.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        dvc(repo, "init", "-q")
        dvc(repo, "config", "core.analytics", "false")
        dvc(repo, "config", "cache.type", "hardlink,symlink,copy")
        (repo / "dvc.yaml").write_text(STAGE)
        audio = repo / "data" / "audio"
        started = time.perf_counter()
        write_clips(audio, args.files)
        written = time.perf_counter() - started
        size = sum(f.stat().st_size for f in audio.iterdir())
        first = dvc(repo, "commit", "-f", "download")
        status = dvc(repo, "status")
        changed = max(1, args.files // 100)
        for path in sorted(audio.iterdir())[:changed]:
            path.unlink()
        write_clips(audio, changed, seed=1)
        again = dvc(repo, "commit", "-f", "download")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(f"{args.files} WAV files, {size / 1e9:.2f} GB (written in {written:.1f} s)")
        print(f"first commit (hash + link every file): {first:.1f} s = {1000 * first / args.files:.2f} ms/file, "
              f"{size / 1e6 / first:.0f} MB/s")
        print(f"status, nothing changed:               {status:.1f} s = {1000 * status / args.files:.3f} ms/file")
        print(f"commit after {changed} files replaced:      {again:.1f} s = {1000 * again / args.files:.3f} ms/file")
        per_file = first / args.files
        print(f"extrapolated first commit: balanced_train 22,160 files ≈ {22160 * per_file / 60:.0f} min, "
              f"unbalanced 2.04 M ≈ {2.04e6 * per_file / 3600:.1f} h")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
