"""`python -m bench.gpu` on the CPU: one tiny run prints and writes a positive figure for every r and worker count."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "bench.gpu", "--device", "cpu", "--model-size", "tiny224", "--batch-size", "2", "--steps", "1",
           "--warmup", "1", "--workers", "0", "1", "--clips", "4", "--frames", "256"]


def test_bench_gpu_tiny_cpu_run_measures_every_r_and_worker_count(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, *COMMAND, "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    result = json.loads(out.read_text())

    assert result["precision"] == "fp32" and result["model_size"] == "tiny224"  # auto on the CPU: fp32
    assert result["frames"] == 256 and "256×128" in done.stdout
    assert set(result["train_clips_per_s"]) == {"0", "16", "32"}
    assert set(result["loader_items_per_s"]) == {"0", "1"}
    figures = [*result["train_clips_per_s"].values(), *result["loader_items_per_s"].values(),
               result["features_ms_per_batch"], result["features_ms_per_clip"]]
    assert all(isinstance(x, float) and x > 0 for x in figures), result
    assert abs(result["features_ms_per_clip"] * 2 - result["features_ms_per_batch"]) < 1e-6

    # The printed table carries the same rows: one per r and one per worker count, each with a positive figure.
    for r in (0, 16, 32):
        row = re.search(rf"^\s+{r}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", printed, re.MULTILINE)
        assert row and float(row.group(1)) > 0, printed
    for workers in (0, 1):
        row = re.search(rf"^\s+{workers}\s+([\d.]+)\s+(yes|no)$", printed, re.MULTILINE)
        assert row and float(row.group(1)) > 0, printed
    features = re.search(r"([\d.]+) ms/batch, ([\d.]+) ms/clip", printed)
    assert features and float(features.group(1)) > 0 and float(features.group(2)) > 0, printed
