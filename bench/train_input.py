"""Can the input pipeline feed the training step? Clips/s of one DataLoader worker against the model.

Input side: one process with one torch thread (what a DataLoader worker is) turning real 10 s
32 kHz WAV files into training items: read → resample to 16 kHz → kaldi fbank (1024 frames) →
waveform mixup (AST's rate 0.5) → SpecAugment (48/192) → normalise, as `fat train` does.
Model side: a full training step (forward, loss, backward, Adam) of AST tiny224 and base384 at
stride 10/10 (1212 patches) for each r, on this machine's CPU threads. Without a GPU, the H100
step rate is estimated from the analytic FLOPs: 3 × forward FLOPs per clip (forward + backward)
at an assumed bf16 model-FLOPs utilisation of the H100's dense peak.

    python -m bench.train_input                       # defaults below (-m: bench/student.py would shadow the package)
    python -m bench.train_input --sizes tiny224 --r 0 8 16 32 --steps 3
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

H100_BF16_DENSE_TFLOPS = 989.0  # SXM, dense (no sparsity)


def write_clips(folder: Path, count: int, seconds: float, rate: int = 32000) -> tuple[Path, Path]:
    """`count` noisy-tone WAVs, a datafile and a label CSV of 527 classes (AudioSet-sized targets)."""
    import json

    from pipeline.core.audio import write_wav

    rng = np.random.default_rng(0)
    entries = []
    t = np.arange(int(rate * seconds)) / rate
    for i in range(count):
        audio = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)
        write_wav(folder / f"clip{i:03d}.wav", np.clip(audio, -1, 1).astype(np.float32), rate)
        entries.append({"wav": f"clip{i:03d}.wav", "labels": f"/m/bench{i % 527}", "id": f"clip{i:03d}"})
    (folder / "bench.json").write_text(json.dumps({"data": entries}))
    rows = ["index,mid,display_name"] + [f"{k},/m/bench{k},class {k}" for k in range(527)]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "bench.json", folder / "labels.csv"


def input_rate(datafile: Path, labels: Path, items: int, mixup: float) -> tuple[float, float]:
    """Training items per second in this process (one thread): (per wall second, per CPU second).

    On a shared machine the wall rate drops with other load; the CPU-time rate is what one
    dedicated core (a DataLoader worker on an otherwise idle host core) delivers.
    """
    from pipeline.datafile import load_clips, load_label_csv
    from pipeline.dataset import Augment, ClipDataset, Features

    clips = load_clips([datafile], load_label_csv(labels), require_files=True)
    dataset = ClipDataset(clips, Features(1024, 128), Augment(mixup=mixup, freqm=48, timem=192))
    dataset[(0, 0)]  # warm-up: imports, resampling kernel
    start, cpu_start = time.perf_counter(), time.process_time()
    for k in range(items):
        dataset[(k % len(clips), 1000 + k)]
    return items / (time.perf_counter() - start), items / (time.process_time() - cpu_start)


def step_rate(size: str, r: int, batch: int, steps: int) -> tuple[float, float]:
    """(training clips/s, forward GFLOPs per clip) of AST `size` at merge rate r."""
    from student import create_ast
    from student.flops import analytic_gflops
    from student.kd import kd_loss
    from student.tome import set_tome_r

    torch.manual_seed(0)
    model = create_ast(size, 527, 128, 1024, 10, 10)
    set_tome_r(model, r)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-5)
    x = torch.randn(batch, 1024, 128)
    y = (torch.rand(batch, 527) < 0.01).float()
    t = torch.randn(batch, 527)

    def one_step() -> None:
        loss, _ = kd_loss(model(x), y, t, 0.1)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    one_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return batch * steps / (time.perf_counter() - start), analytic_gflops(model, r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8, help="distinct WAV files to read (count)")
    parser.add_argument("--items", type=int, default=24, help="items timed on the input side (count)")
    parser.add_argument("--sizes", nargs="+", default=["tiny224", "base384"], help="AST sizes")
    parser.add_argument("--r", nargs="+", type=int, default=[0, 32], help="merge rates r")
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 1],
                        help="CPU batch per size, in the order of --sizes (clips)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per setting (count)")
    parser.add_argument("--mfu", type=float, default=0.4,
                        help="assumed H100 bf16 model-FLOPs utilisation for the estimate (0..1)")
    parser.add_argument("--workers", type=int, default=14,
                        help="DataLoader workers of a 16-core GPU host (two cores left for the trainer)")
    args = parser.parse_args()

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        datafile, labels = write_clips(Path(tmp), args.clips, 10.0)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        plain = input_rate(datafile, labels, args.items, mixup=0.0)
        mixed = input_rate(datafile, labels, args.items, mixup=0.5)
        torch.set_num_threads(threads)
    print("\ninput pipeline, one worker (1 thread), 10 s clips, SpecAugment 48/192 (clips/s per wall s, per CPU s):")
    print(f"  no mixup:  {plain[0]:7.1f} {plain[1]:7.1f}")
    print(f"  mixup 0.5: {mixed[0]:7.1f} {mixed[1]:7.1f}   → {args.workers} workers ≈ {mixed[1] * args.workers:7.0f} clips/s "
          f"(CPU-time rate; {mixed[0] * args.workers:.0f} at this machine's wall rate)")
    loader = mixed[1] * args.workers

    print(f"\ntraining step (fwd + bwd + Adam), stride 10/10, 1024 frames; H100 estimate at "
          f"{args.mfu:.0%} of {H100_BF16_DENSE_TFLOPS:.0f} TFLOPS bf16:")
    print(f"  {'size':8s} {'r':>3s} {'GFLOPs/clip':>11s} {'CPU clips/s':>11s} {'vs r=0':>7s} {'H100 est. clips/s':>17s} "
          f"{'loader/H100':>11s}")
    batches = dict(zip(args.sizes, args.batch + args.batch[-1:] * len(args.sizes)))
    for size in args.sizes:
        base = None
        for r in args.r:
            rate, gflops = step_rate(size, r, batches[size], args.steps)
            base = base or rate
            h100 = args.mfu * H100_BF16_DENSE_TFLOPS * 1e12 / (3 * gflops * 1e9)
            print(f"  {size:8s} {r:3d} {gflops:11.1f} {rate:11.2f} {rate / base:6.2f}x {h100:17.0f} "
                  f"{loader / h100:10.2f}x")


if __name__ == "__main__":
    main()
