"""Can the loader and the device-side features keep up with a GPU training AST base384 at r = 0/16/32?

One run on `--device` (a CUDA GPU where there is one; `--device cpu` works, for tests) measures:
1. training step: AST forward + KD loss + backward + Adam step in clips/s for each merge rate r
   (`--r`), at `--precision` (auto: bf16 autocast on a GPU that supports it, fp32 on the CPU;
   pipeline.runtime decides), model `--model-size` on `--frames` (1024) × 128 bins, stride 10/10;
2. device-side features: mixup plan (student.augment.MixPlan, rate 0.5) + student.frontend.BatchFbank
   (resample 32 → 16 kHz, kaldi fbank) + SpecAugment 48/192 + normalise on a batch of `--batch-size`
   10 s 32 kHz waveforms already on the device, in ms per batch and per clip;
3. loader: items/s of pipeline.dataset.ClipDataset + collate_clips (decode only) through a torch
   DataLoader for each `--workers` N, reading synthetic 10 s 32 kHz WAV files (bench.train_input;
   they repeat, so the page cache serves them: a decode rate, not a disk rate).
The loader keeps up when its items/s ≥ the step's clips/s; the features keep up when their ms per
clip is a small share of the step's 1000 / (clips/s).

    python -m bench.gpu                                   # cuda where a GPU exists, base384, r 0 16 32
    python -m bench.gpu --device cpu --model-size tiny224 --batch-size 2 --steps 1 --warmup 1 --workers 0 1 --clips 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.train_input import write_clips
from pipeline import runtime
from pipeline.settings import PRECISIONS

FRAMES, BINS, STRIDE, CLASSES = 1024, 128, 10, 527
MIXUP, FREQM, TIMEM = 0.5, 48, 192


def timed(work: Any, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of `work(step)` after `warmup` calls, the device synchronised around the timed ones."""
    for step in range(warmup):
        work(step)
    runtime.synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        work(warmup + step)
    runtime.synchronize(device)
    return (time.perf_counter() - start) / steps


def train_rates(size: str, rs: list[int], batch: int, device: torch.device, precision: runtime.Precision,
                warmup: int, steps: int, frames: int = FRAMES) -> dict[int, float]:
    """Training clips/s of AST `size` for each merge rate r: forward (autocast) + KD loss (fp32) + backward + Adam."""
    from student import create_ast
    from student.kd import kd_loss
    from student.tome import set_tome_r

    torch.manual_seed(0)
    model = create_ast(size, CLASSES, BINS, frames, STRIDE, STRIDE).to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = precision.scaler()
    x = torch.randn(batch, frames, BINS, device=device)
    labels = (torch.rand(batch, CLASSES, device=device) < 0.01).float()
    teacher = torch.randn(batch, CLASSES, device=device)

    def step(_: int) -> None:
        with precision.autocast():
            logits = model(x)
        loss, _terms = kd_loss(logits.float(), labels, teacher, 0.5)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        optimiser.zero_grad(set_to_none=True)

    rates = {}
    for r in rs:
        set_tome_r(model, r)
        rates[r] = batch / timed(step, device, warmup, steps)
    return rates


def feature_ms(dataset: Any, batch: int, device: torch.device, warmup: int, steps: int, frames: int = FRAMES) -> float:
    """ms per batch of the device-side training features (mixup + fbank + SpecAugment + normalise)."""
    from pipeline.dataset import batch_generator, collate_clips
    from student.augment import MixPlan
    from student.features import normalize, spec_augment
    from student.frontend import BatchFbank, fit_frames_batch

    clips = collate_clips([dataset[k % len(dataset)] for k in range(batch)])
    waves, lengths, rate = clips["wave"].to(device), clips["length"].to(device), int(clips["rate"])
    frontend = BatchFbank(frames, BINS).to(device)
    mean, std = dataset.features.mean, dataset.features.std

    def features(step: int) -> torch.Tensor:
        generator = batch_generator(0, step)  # CPU random numbers, as training draws them
        plan = MixPlan.draw(batch, MIXUP, generator, device)
        logmel, _ = frontend.fbank(plan.mix_waves(waves, lengths), lengths, rate)
        masked = spec_augment(fit_frames_batch(logmel, frames), FREQM, TIMEM, generator=generator)
        return normalize(masked, mean, std)

    with torch.no_grad():
        return 1000 * timed(features, device, warmup, steps)


def loader_rate(dataset: Any, workers: int, batch: int, items: int) -> float:
    """Items/s through a DataLoader with `workers` processes, timed from the first batch (worker start-up excluded)."""
    from pipeline.dataset import collate_clips

    order = [k % len(dataset) for k in range(items + batch)]  # one extra batch: the untimed first
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers,
                                         collate_fn=collate_clips)
    batches = iter(loader)
    next(batches)
    start, count = time.perf_counter(), 0
    for clips in batches:
        count += clips["wave"].shape[0]
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="forward arithmetic (pipeline.runtime)")
    parser.add_argument("--model-size", default="base384", help="AST size (student.MODEL_SIZES)")
    parser.add_argument("--r", nargs="+", type=int, default=[0, 16, 32], help="ToMe merge rates r")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per training step and feature batch")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement (count)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (count)")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 4, 8, 14], help="DataLoader worker counts")
    parser.add_argument("--frames", type=int, default=FRAMES, help="fbank frames per clip (AST: 1024 for 10 s)")
    parser.add_argument("--clips", type=int, default=16, help="distinct synthetic WAV files (count)")
    parser.add_argument("--items", type=int, default=0, help="loader items timed per worker count (0: 4 batches)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.clips, args.frames) < 1 or args.warmup < 0 or min(args.workers) < 0:
        parser.error("--batch-size, --steps, --clips and --frames must be ≥ 1; --warmup and --workers ≥ 0")

    context = runtime.start(args.device, args.threads)
    device = context.device
    precision = runtime.choose_precision(args.precision, device)
    items = args.items or 4 * args.batch_size
    print(f"device: {runtime.describe(device)}; precision {precision.name}; {args.model_size}, "
          f"{args.frames}×{BINS}, stride {STRIDE}/{STRIDE}; batch {args.batch_size}; "
          f"{args.warmup} warm-up + {args.steps} timed steps")

    with tempfile.TemporaryDirectory() as tmp:
        from pipeline.datafile import load_clips, load_label_csv
        from pipeline.dataset import ClipDataset, Features

        datafile, labels = write_clips(Path(tmp), args.clips, 10.0)
        dataset = ClipDataset(load_clips([datafile], load_label_csv(labels), require_files=True),
                              Features(args.frames, BINS))
        loader = {n: loader_rate(dataset, n, args.batch_size, items) for n in args.workers}
        features = feature_ms(dataset, args.batch_size, device, args.warmup, args.steps, args.frames)
    train = train_rates(args.model_size, args.r, args.batch_size, device, precision, args.warmup, args.steps,
                        args.frames)

    print(f"\ntraining step (forward + KD loss + backward + Adam), {args.model_size}:")
    print(f"  {'r':>3s} {'clips/s':>10s} {'ms/clip':>9s} {'vs r=0':>7s}")
    base = train[args.r[0]]
    for r, rate in train.items():
        print(f"  {r:3d} {rate:10.2f} {1000 / rate:9.2f} {rate / base:6.2f}x")
    per_clip = features / args.batch_size
    print(f"\ndevice-side features (mixup {MIXUP} + fbank + SpecAugment {FREQM}/{TIMEM} + normalise), "
          f"batch {args.batch_size} × 10 s 32 kHz:")
    print(f"  {features:.2f} ms/batch, {per_clip:.3f} ms/clip; share of a step's ms/clip: "
          + ", ".join(f"r={r} {100 * per_clip * rate / 1000:.1f} %" for r, rate in train.items()))
    print(f"\nloader (ClipDataset + collate_clips, decode only, {items} items), against the fastest step "
          f"({max(train.values()):.2f} clips/s):")
    print(f"  {'workers':>7s} {'items/s':>10s} {'keeps up':>9s}")
    for n, rate in loader.items():
        print(f"  {n:7d} {rate:10.2f} {'yes' if rate >= max(train.values()) else 'no':>9s}")

    result = {
        "device": runtime.describe(device), "precision": precision.name, "model_size": args.model_size,
        "batch_size": args.batch_size, "frames": args.frames, "warmup": args.warmup, "steps": args.steps,
        "train_clips_per_s": {str(r): rate for r, rate in train.items()},
        "features_ms_per_batch": features, "features_ms_per_clip": per_clip,
        "loader_items_per_s": {str(n): rate for n, rate in loader.items()},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    runtime.stop(context)
    return result


if __name__ == "__main__":
    main()
