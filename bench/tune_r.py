"""`fat tune-r` on a 12-block student: the tuned schedule against the best constant r, measured in one run.

Builds, in a temporary folder, a generated validation set (tones, noise bands and clicks, one or two
per clip, written as WAVs with an AST datafile) and a 12-block tiny224 AST saved as a fat student
file — random weights unless --checkpoint gives a trained one (then --datafile too) — and runs
`fat tune-r` on it; prints tune.md (chosen vs best constant r vs r = 0, timed together at the end).
With random weights only the speed half means anything: the accuracy differences are noise.

    python -m bench.tune_r --speedup 1.5 --frames 256 --clips 24 --max-evaluations 32
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import save_student
from pipeline.cli import main as fat
from pipeline.core.audio import write_wav
from student import create_ast

RATE = 16000
MIDS = ("/m/bench0", "/m/bench1", "/m/bench2")


def write_set(root: Path, clips: int, seconds: float) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    labels = root / "class_labels_indices.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f'{i},{m},"sound {i}"\n' for i, m in enumerate(MIDS)))
    t = np.arange(int(RATE * seconds)) / RATE
    entries = []
    for i in range(clips):
        classes = sorted({i % 3, int(rng.integers(3))})
        audio = 0.01 * rng.standard_normal(t.size)
        if 0 in classes:
            audio += 0.3 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t)
        if 1 in classes:
            audio += 0.1 * rng.standard_normal(t.size)
        if 2 in classes:
            audio[:: RATE // 12] += 0.8
        write_wav(root / f"clip{i:03d}.wav", np.clip(audio, -1, 1).astype(np.float32), RATE)
        entries.append({"wav": f"clip{i:03d}.wav", "labels": ",".join(MIDS[c] for c in classes)})
    datafile = root / "valid.json"
    datafile.write_text(json.dumps({"data": entries}))
    return datafile, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speedup", type=float, default=1.5)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--max-evaluations", type=int, default=32)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--datafile", type=Path)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint, datafile = args.checkpoint, args.datafile
        if checkpoint is None:
            datafile, labels = write_set(root, args.clips, args.frames / 100)
            torch.manual_seed(0)
            model = create_ast("tiny224", num_classes=len(MIDS), input_tdim=args.frames)
            checkpoint = root / "student.safetensors"
            save_student(checkpoint, model, {"norm_mean": -4.27, "norm_std": 4.57, "multi_label": True,
                                             "target_frames": args.frames, "num_mel_bins": 128,
                                             "label_csv_sha256": hashlib.sha256(labels.read_bytes()).hexdigest()})
        out = root / "tune"
        code = fat(["tune-r", "--checkpoint", str(checkpoint), "--datafile", str(datafile), "--speedup",
                    str(args.speedup), "--max-evaluations", str(args.max_evaluations), "--batch-size", "8",
                    "--warmup-batches", "2", "--timed-batches", "2", "--rounds", "3", "--device", "cpu",
                    "--threads", str(args.threads), "--out-dir", str(out)])
        if code == 0:
            print((out / "tune.md").read_text())
            pareto = json.loads((out / "pareto.json").read_text())
            print("front:", [(c["label"], round(c["metric"], 4), round(c["speedup"], 2)) for c in pareto["front"]])


if __name__ == "__main__":
    main()
