"""Download throughput: clips/s against worker count, and CPU seconds per clip.

A loopback HTTP server (tests/media_server.py) serves one Opus/WebM file under N clip ids and
waits `--latency` seconds before answering each request, so the run is bound by latency the
way a real download is (YouTube answers in 0.2-1 s) rather than by loopback bandwidth. For
each worker count, `fat download` runs as its own process on a fresh output folder; the
figures come from its summary JSON:

- clips/s: clips that ended ok per wall-clock second of the whole command (start-up included);
- our CPU s/clip: the runner process plus the workers' own time in yt-dlp and our code,
  i.e. everything except ffmpeg (the issue's target: <= 0.5);
- ffmpeg CPU s/clip: the decode/resample/encode work itself.

Run: .venv/bin/python -m bench.download  [--clips 200 --latency 0.5 --workers 1 2 4 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipeline.metadata import write_metadata_csv
from tests.media_server import MediaServer, make_media


def run_once(root: Path, server: MediaServer, workers: int, clips: int) -> dict:
    out = root / f"w{workers}"
    args = [sys.executable, "-m", "pipeline.cli", "download", "--split", "bench", "--metadata-dir", str(root / "metadata"),
            "--out-dir", str(out / "audio"), "--manifest-dir", str(out / "manifests"),
            "--url-template", server.clip_template, "--workers", str(workers), "--no-progress",
            "--clip-timeout", "120"]
    requests_before = len(server.log)
    started = time.monotonic()
    completed = subprocess.run(args, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise SystemExit(f"fat download failed ({completed.returncode}):\n{completed.stderr}")
    summary = json.loads((out / "manifests" / "bench.download.json").read_text())
    ok = summary["status"]["ok"]
    if ok != clips:
        raise SystemExit(f"only {ok} of {clips} clips ended ok: {summary['reasons']}")
    cpu = summary["run"]["cpu_seconds"]
    return {
        "workers": workers,
        "wall_s": wall,
        "clips_per_s": ok / wall,
        "our_cpu_s_per_clip": (cpu["runner"] + cpu["workers"]) / ok,
        "runner_cpu_s_per_clip": cpu["runner"] / ok,
        "ffmpeg_cpu_s_per_clip": cpu["ffmpeg"] / ok,
        "requests_per_clip": (len(server.log) - requests_before) / ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200, help="clips per run (default: 200)")
    parser.add_argument("--latency", type=float, default=0.5, help="server delay per request, seconds (default: 0.5)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8], help="worker counts (default: 1 2 4 8)")
    parser.add_argument("--source-seconds", type=float, default=30.0, help="length of the served file (default: 30)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fat-bench-download-") as tmp:
        root = Path(tmp)
        media = make_media(root / "source.webm", args.source_seconds)
        ids = [f"b{index:010d}" for index in range(args.clips)]
        starts = [float(index % int(args.source_seconds - 10)) for index in range(args.clips)]
        write_metadata_csv(root / "metadata" / "bench.csv", pd.DataFrame({
            "ytid": ids, "start_seconds": starts, "end_seconds": [s + 10.0 for s in starts],
            "positive_labels": ["/m/09x0r"] * args.clips,
        }))
        print(f"# fat download benchmark: {args.clips} clips of 10 s from a {args.source_seconds:g} s Opus/WebM file, "
              f"loopback server with {args.latency:g} s latency per request")
        print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, "
              f"Python {platform.python_version()}")
        results = []
        with MediaServer(latency=args.latency) as server:
            for ytid in ids:
                server.add(ytid, media)
            for workers in args.workers:
                results.append(run_once(root, server, workers, args.clips))
                row = results[-1]
                print(f"workers {workers}: {row['clips_per_s']:.3f} clips/s in {row['wall_s']:.1f} s", flush=True)
        base = next((r["clips_per_s"] for r in results if r["workers"] == 1), results[0]["clips_per_s"])
        print()
        print("| workers | clips/s | speed-up vs 1 | our CPU s/clip (runner + workers) | of which runner | ffmpeg CPU s/clip | requests/clip |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for row in results:
            print(f"| {row['workers']} | {row['clips_per_s']:.3f} | {row['clips_per_s'] / base:.2f}× | "
                  f"{row['our_cpu_s_per_clip']:.3f} | {row['runner_cpu_s_per_clip']:.3f} | "
                  f"{row['ffmpeg_cpu_s_per_clip']:.3f} | {row['requests_per_clip']:.1f} |")
        print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
