"""Can the input pipeline feed the training step? Clips/s of one DataLoader worker against the model.

Worker side: one process with one torch thread (what a DataLoader worker is) on real 10 s 32 kHz
clips, as WAV files and (`--packed`) as a `fat pack` FLAC store. "before" is the per-clip item
workers built until features moved to the device (read, a mixup partner read from disk at
rate 0.5, resample to 16 kHz, kaldi fbank of 1024 frames, SpecAugment 48/192, normalise);
"after" is today's item, decode only (`pipeline.dataset.ClipDataset`).
Device side: `pipeline.dataset.DeviceInputs.training` on a batch of 32 (resample + in-batch
mixup 0.5 + fbank + SpecAugment 48/192 + normalise) in ms per clip, against a base384
forward + backward on the same device (`--device`; a small `--model-batch` on the CPU, scaled
per clip), as a share of it.
Feature cost against the per-clip path (`--features-only` runs just this): CPU time per clip of
`student.frontend.BatchFbank` (evaluation features) and of `DeviceInputs.training` (mixup 0.5 +
fbank + SpecAugment 48/192 + normalise) on one batch of 32 10 s 32 kHz clips, against the per-clip
torchaudio path the batched one replaced (`student.features.wave_to_fbank` clip by clip, mixing
with the same partners and λ), under the same torch thread count, in interleaved rounds; the
ratio is batched ÷ per-clip (≤ 1.0: the batch costs no more), with the largest difference of
the two paths' features (must stay ≤ 1e-4).
Model side: a full training step (forward, loss, backward, Adam) of AST tiny224 and base384 at
stride 10/10 (1212 patches) for each r, on this machine's CPU threads. Without a GPU, the H100
step rate is estimated from the analytic FLOPs: 3 × forward FLOPs per clip (forward + backward)
at an assumed bf16 model-FLOPs utilisation of the H100's dense peak.

    python -m bench.train_input                       # defaults below (-m: bench/student.py would shadow the package)
    python -m bench.train_input --sizes tiny224 --r 0 8 16 32 --steps 3
    python -m bench.train_input --device cuda --packed     # where a GPU exists
    python -m bench.train_input --features-only            # the feature-cost ratios only
"""

from __future__ import annotations

import argparse
import inspect
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

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


def before_item(dataset: Any, index: int, rng: np.random.Generator, mixup: float) -> torch.Tensor:
    """The per-clip training item workers computed before (the reference path): features on the CPU."""
    from student.features import normalize, spec_augment, wave_to_fbank

    wave, rate = dataset.load_wave(index)
    wave = wave - wave.mean()
    if mixup > 0 and rng.random() < mixup:
        other, _ = dataset.load_wave(int(rng.integers(len(dataset))))  # the partner: a second read
        other = torch.nn.functional.pad(other - other.mean(), (0, max(0, wave.shape[0] - other.shape[0])))
        lam = float(rng.beta(10.0, 10.0))
        wave = lam * wave + (1 - lam) * other[: wave.shape[0]]
    fbank = wave_to_fbank(wave, rate, 1024)  # resampled to 16 kHz, kaldi fbank, padded/cut
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return normalize(spec_augment(fbank, 48, 192, generator=generator), -4.27, 4.57)


def worker_rates(dataset: Any, items: int, mixup: float) -> dict[str, float]:
    """Clips per CPU second of this process (one thread): before (full per-clip item) and after (decode only).

    CPU time, not wall time: on a shared machine it is what one dedicated core delivers.
    """
    rng = np.random.default_rng(0)
    before_item(dataset, 0, rng, mixup)  # warm-up: imports, resampling kernel
    dataset[0]
    rates = {}
    for name, make in (("before", lambda k: before_item(dataset, k % len(dataset), rng, mixup)),
                       ("after", lambda k: dataset[(k % len(dataset), k)])):
        cpu_start = time.process_time()
        for k in range(items):
            make(k)
        rates[name] = items / (time.process_time() - cpu_start)
    return rates


def device_side(dataset: Any, device: torch.device, batch: int, model_batch: int, rounds: int) -> tuple[float, float]:
    """(ms per clip of the batch features + augmentation, ms per clip of base384 forward + backward) on `device`."""
    from pipeline.dataset import Augment, DeviceInputs, Features, batch_generator, collate_clips
    from student import create_ast

    waves = collate_clips([dataset[k % len(dataset)] for k in range(batch)])
    inputs = DeviceInputs(Features(1024, 128), device)
    augment = Augment(mixup=0.5, freqm=48, timem=192)

    def features(step: int) -> torch.Tensor:
        return inputs.training(waves, augment, batch_generator(0, 1, step)).features

    def timed(work: Any) -> float:
        work(0)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for step in range(rounds):
            work(step + 1)
        synchronize(device)
        return (time.perf_counter() - start) / rounds

    feature_ms = 1000 * timed(features) / batch
    torch.manual_seed(0)
    model = create_ast("base384", 527, 128, 1024, 10, 10).to(device)
    x = features(0)[:model_batch].contiguous()

    def forward_backward(_step: int) -> None:
        model(x).float().sum().backward()

    model_ms = 1000 * timed(forward_backward) / model_batch
    return feature_ms, model_ms


def per_clip_features(batch: dict[str, torch.Tensor], features: Any) -> torch.Tensor:
    """The per-clip path BatchFbank replaced: torchaudio's kaldi fbank clip by clip, normalised."""
    from student.features import normalize, wave_to_fbank

    rate = int(batch["rate"])
    return torch.stack([normalize(wave_to_fbank(wave[:length], rate, features.target_frames), features.mean,
                                  features.std) for wave, length in zip(batch["wave"], batch["length"].tolist())])


def per_clip_training(batch: dict[str, torch.Tensor], features: Any, augment: Any,
                      generator: torch.Generator) -> torch.Tensor:
    """The per-clip training item on in-memory clips: the same mixup plan, then fbank, SpecAugment, normalise."""
    from student.augment import MixPlan
    from student.features import normalize, spec_augment, wave_to_fbank

    waves, lengths, rate = batch["wave"], batch["length"].tolist(), int(batch["rate"])
    plan = MixPlan.draw(len(lengths), augment.mixup, generator)
    items = []
    for row, length in enumerate(lengths):
        wave = waves[row, :length] - waves[row, :length].mean()
        if plan.lam[row] < 1:
            partner = int(plan.partner[row])
            other = waves[partner, : lengths[partner]] - waves[partner, : lengths[partner]].mean()
            other = torch.nn.functional.pad(other, (0, max(0, length - other.shape[0])))[:length]
            lam = float(plan.lam[row])
            wave = lam * wave + (1 - lam) * other
        fbank = wave_to_fbank(wave, rate, features.target_frames)
        items.append(normalize(spec_augment(fbank, augment.freqm, augment.timem, generator=generator),
                               features.mean, features.std))
    return torch.stack(items)


def feature_ratios(dataset: Any, batch_size: int, rounds: int, threads: int) -> dict[str, float]:
    """CPU ms per clip of the batched and per-clip feature paths, and their ratios, with `threads` torch threads.

    CPU time (time.process_time), not wall time: other processes on a shared machine do not
    count. The four paths run in turn in every round and each one's median is kept, so a
    burst of load hits all of them alike.
    """
    import statistics

    from pipeline.dataset import Augment, DeviceInputs, Features, batch_generator, collate_clips

    batch = collate_clips([dataset[k % len(dataset)] for k in range(batch_size)])
    features = Features(1024, 128)
    augment = Augment(mixup=0.5, freqm=48, timem=192)
    inputs = DeviceInputs(features, "cpu")
    paths = {
        "fbank per clip": lambda step: per_clip_features(batch, features),
        "fbank batched": lambda step: inputs.evaluation(batch),
        "training per clip": lambda step: per_clip_training(batch, features, augment, batch_generator(0, 1, step)),
        "training batched": lambda step: inputs.training(batch, augment, batch_generator(0, 1, step)).features,
    }
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        difference = (paths["fbank batched"](0) - paths["fbank per clip"](0)).abs().max().item()  # also the warm-up
        paths["training per clip"](0), paths["training batched"](0)
        seconds: dict[str, list[float]] = {name: [] for name in paths}
        for step in range(1, rounds + 1):
            for name, work in paths.items():
                start = time.process_time()
                work(step)
                seconds[name].append(time.process_time() - start)
    finally:
        torch.set_num_threads(before)
    ms = {name: 1000 * statistics.median(times) / batch_size for name, times in seconds.items()}
    return {**ms, "fbank ratio": ms["fbank batched"] / ms["fbank per clip"],
            "training ratio": ms["training batched"] / ms["training per clip"], "max difference": difference}


def print_feature_ratios(dataset: Any, batch_size: int, rounds: int, thread_counts: list[int]) -> None:
    print(f"\nfeature cost, batch of {batch_size} clips of 10 s at 32 kHz, CPU ms per clip (median of {rounds} "
          "interleaved rounds):")
    print(f"  {'threads':>7s} {'fbank/clip':>10s} {'batched':>8s} {'ratio':>6s}   {'training/clip':>13s} "
          f"{'batched':>8s} {'ratio':>6s}   {'max |batched - per clip|':>24s}")
    for threads in thread_counts:
        r = feature_ratios(dataset, batch_size, rounds, threads)
        print(f"  {threads:7d} {r['fbank per clip']:10.2f} {r['fbank batched']:8.2f} {r['fbank ratio']:5.2f}x   "
              f"{r['training per clip']:13.2f} {r['training batched']:8.2f} {r['training ratio']:5.2f}x   "
              f"{r['max difference']:24.2e}")
    print("  (ratio = batched ÷ per-clip CPU time; training = mixup 0.5 + fbank + SpecAugment 48/192 + normalise)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def packed_store(datafile: Path, labels: Path, out: Path) -> Path:
    """`fat pack` the bench clips with the default codec (FLAC)."""
    from pipeline.cli import main as fat

    command = ["pack", "--datafile", str(datafile), "--labels", str(labels), "--out-dir", str(out), "--workers", "1"]
    if fat(command) != 0:
        raise SystemExit("fat pack failed")
    return out


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
    parser.add_argument("--device", default="cpu", help="device of the device-side features and model (cpu, cuda)")
    parser.add_argument("--feature-batch", type=int, default=32, help="clips per device-side feature batch")
    parser.add_argument("--model-batch", type=int, default=2,
                        help="base384 forward+backward batch on the device (small on a CPU; scaled per clip)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the device side (count)")
    parser.add_argument("--packed", action="store_true", help="also time a `fat pack` FLAC store of the clips")
    parser.add_argument("--no-steps", action="store_true", help="skip the training-step table")
    parser.add_argument("--features-only", action="store_true",
                        help="only the feature-cost ratios (batched against per-clip CPU time)")
    parser.add_argument("--feature-rounds", type=int, default=5,
                        help="interleaved timed rounds of each feature path (count)")
    parser.add_argument("--feature-threads", type=int, nargs="+", default=None,
                        help="torch thread counts to compare the feature paths under (default: 1 and this machine's)")
    args = parser.parse_args()

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        from pipeline.datafile import load_clips, load_label_csv
        from pipeline.dataset import ClipDataset, Features

        datafile, labels = write_clips(Path(tmp), args.clips, 10.0)
        clips = load_clips([datafile], load_label_csv(labels), require_files=True)
        stores = {"WAV": ClipDataset(clips, Features(1024, 128))}
        thread_counts = args.feature_threads or sorted({1, torch.get_num_threads()})
        print_feature_ratios(stores["WAV"], args.feature_batch, args.feature_rounds, thread_counts)
        if args.features_only:
            return
        if args.packed:
            if "packed" not in inspect.signature(ClipDataset).parameters:
                raise SystemExit("--packed needs ClipDataset's `packed` setting (packed-audio integration)")
            store = packed_store(datafile, labels, Path(tmp) / "packed")
            stores["packed FLAC"] = ClipDataset(clips, Features(1024, 128), packed=[store])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        rates = {name: worker_rates(dataset, args.items, mixup=0.5) for name, dataset in stores.items()}
        torch.set_num_threads(threads)
        print("\nworker side, one worker (1 thread), 10 s 32 kHz clips, clips per CPU second:")
        print(f"  {'store':12s} {'before':>8s} {'after':>8s} {'ratio':>6s}   (before: full per-clip item, mixup 0.5, "
              "SpecAugment 48/192; after: decode only)")
        for name, rate in rates.items():
            print(f"  {name:12s} {rate['before']:8.1f} {rate['after']:8.1f} {rate['after'] / rate['before']:5.2f}x")
        feature_ms, model_ms = device_side(stores["WAV"], device, args.feature_batch, args.model_batch, args.rounds)
        print(f"\ndevice side on {device} ({torch.get_num_threads()} threads): resample + mixup + fbank + SpecAugment "
              f"on a batch of {args.feature_batch}: {feature_ms:.2f} ms/clip; base384 fwd+bwd (batch "
              f"{args.model_batch}): {model_ms:.1f} ms/clip; features = {100 * feature_ms / model_ms:.2f} % of it")
    if args.no_steps:
        return
    loader = rates["WAV"]["after"] * args.workers

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
