"""Is `fat logits` bound by its model? mn10 throughput on pre-loaded mel batches against the whole stage.

- model only: the mn network on log-mel batches already in memory (no decoding, no front-end);
- model + front-end: the same from waveforms already in memory;
- end to end: `fat logits` itself (in this process, as the CLI runs it) on real WAV files:
  DataLoader workers decode while the model runs, every batch goes to the crash-safe work log,
  the HDF5 store is assembled at the end. Reported twice: the compute phase (first batch
  request to last record) and the whole command (start-up, teacher set-up, assembly included).
The model-only rate is measured before and after the stage run and averaged, because the
machine is shared. Target: end to end ≥ 80 % of model only.

--compare NAME... instead sizes several teachers against each other (the README's teacher table):
parameters, multiply-accumulates per 10-s clip (torch's FLOP counter: convolutions and matrix
products, the operations EfficientAT's published MACs count) and the network's clips/s on
pre-loaded 10-s mel batches, each name measured twice in turn (rounds interleaved, so a busy
spell on a shared machine does not land on one model only); no stage run.

    python -m bench.teacher                          # 1000 clips of 10 s, mn10_as, batch 32, 2 workers
    python -m bench.teacher --clips 200 --teacher mn04_as
    python -m bench.teacher --compare mn10_as dymn04_as dymn10_as dymn20_as --clips 32 --batch-size 8
    python -m bench.teacher --compare mn10_as dymn10_as passt_s_kd_p16_128_ap486 --clips 8 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_clips(folder: Path, count: int, seconds: float, rate: int = 32000) -> Path:
    """`count` WAV clips (tones in noise, 16-bit PCM at 32 kHz) and an AST datafile listing them."""
    from pipeline.core.audio import write_wav

    datafile = folder / "bench.json"
    if datafile.exists() and len(json.loads(datafile.read_text())["data"]) == count:
        return datafile
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    entries = []
    for i in range(count):
        audio = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (100 + 37 * i) * t)
        write_wav(folder / f"clip{i:04d}.wav", np.clip(audio, -1, 1).astype(np.float32), rate)
        entries.append({"wav": f"clip{i:04d}.wav", "labels": "", "id": f"clip{i:04d}"})
    datafile.write_text(json.dumps({"data": entries}))
    return datafile


def model_rate(tagger: torch.nn.Module, batches: list[torch.Tensor], clips: int, with_frontend: bool) -> float:
    """Clips per second of the network (optionally with the front-end) over `clips` clips."""
    done = 0
    with torch.inference_mode():
        inputs = batches if with_frontend else [tagger.frontend(w).unsqueeze(1) for w in batches]
        tagger.model(inputs[0] if not with_frontend else tagger.frontend(inputs[0]).unsqueeze(1))  # warm-up
        start = time.perf_counter()
        while done < clips:
            x = inputs[(done // len(batches[0])) % len(inputs)]
            tagger(x) if with_frontend else tagger.model(x)
            done += x.shape[0]
        return done / (time.perf_counter() - start)


def model_macs(tagger: torch.nn.Module, mel: torch.Tensor) -> float:
    """Multiply-accumulates of the network for one clip's mel (convolutions and matrix products).

    Attention (PaSST) runs in its plain matmul form here: the counter does not see inside the
    fused CPU kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        tagger.model(mel[:1])
    return counter.get_total_flops() / 2


def compare(names: list[str], clips: int, batch_size: int, seconds: float, device: torch.device) -> None:
    """Parameters, MACs per clip and model-only clips/s of each teacher (random weights)."""
    from teacher import load_teacher
    from teacher.registry import released

    taggers = {name: load_teacher(name, random_init=True).to(device) for name in names}
    generator = torch.Generator().manual_seed(0)
    waves = [0.3 * torch.randn(batch_size, int(seconds * 32000), generator=generator).to(device) for _ in range(2)]
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(2):
        for name, tagger in taggers.items():
            rates[name].append(model_rate(tagger, waves, clips, with_frontend=False))
    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
          f"device {device} (fp32), torch {torch.__version__}; {clips} clips of {seconds:g} s per round, "
          f"batch {batch_size}\n")
    print("| teacher | published mAP | params (M) | GMACs / clip | model clips/s (round 1 / 2) |")
    print("|---|---:|---:|---:|---:|")
    for name, tagger in taggers.items():
        spec = released(name)
        params = sum(p.numel() for p in tagger.model.parameters()) / 1e6
        macs = model_macs(tagger, tagger.frontend(waves[0][:1]).unsqueeze(1)) / 1e9
        published = f"{spec.published_map:.3f}" if spec.published_map is not None else "–"
        first, second = rates[name]
        print(f"| {name} | {published} | {params:.2f} | {macs:.3f} | {(first + second) / 2:.2f} "
              f"({first:.2f} / {second:.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1000, help="WAV clips for the stage run (default: 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default: 10)")
    parser.add_argument("--teacher", default="mn10_as", help="teacher architecture (random weights) (default: mn10_as)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per batch (default: 32)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader decoding workers (default: 2)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for the clips (default: a temp folder)")
    parser.add_argument("--compare", nargs="+", metavar="NAME", default=None,
                        help="size these teachers against each other instead of the stage run (see above)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.compare:
        from pipeline import runtime

        compare(args.compare, args.clips, args.batch_size, args.seconds, runtime.choose_device(args.device))
        return

    from pipeline import runtime
    from pipeline.logits.run import run_logits
    from pipeline.logits.settings import LogitsSettings
    from teacher import load_teacher

    device = runtime.choose_device(args.device)
    precision = runtime.choose_precision("auto", device)  # what `fat logits` runs in by default
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="fat-bench-teacher-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    datafile = write_clips(work, args.clips, args.seconds)
    print(f"{args.clips} clips of {args.seconds:g} s in {work} (written in {time.perf_counter() - started:.0f} s)")

    tagger = load_teacher(args.teacher, random_init=True).to(device)
    samples = int(args.seconds * 32000)
    generator = torch.Generator().manual_seed(0)
    batches = [0.3 * torch.randn(args.batch_size, samples, generator=generator).to(device) for _ in range(4)]

    def rates() -> tuple[float, float]:
        with precision.autocast():
            return (model_rate(tagger, batches, args.clips // 2, with_frontend=False),
                    model_rate(tagger, batches, args.clips // 2, with_frontend=True))

    model_before, front_before = rates()
    out = work / "bench.h5"
    out.unlink(missing_ok=True)
    settings = LogitsSettings(datafile=[datafile], out=out, teacher=[args.teacher], random_init=True,
                              batch_size=args.batch_size, workers=args.workers, clip_seconds=args.seconds,
                              device=args.device, progress_every=1e9)
    stage_start = time.perf_counter()
    outcome = run_logits(settings)
    stage_wall = time.perf_counter() - stage_start
    model_after, front_after = rates()

    model_only = (model_before + model_after) / 2
    with_front = (front_before + front_after) / 2
    compute_rate = args.clips / outcome.compute_seconds
    stage_rate = args.clips / stage_wall
    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
          f"device {device} ({precision.name}), torch {torch.__version__}")
    print(f"teacher {args.teacher}, batch {args.batch_size}, {args.workers} workers, {args.clips} clips of {args.seconds:g} s\n")
    print("| measurement | clips/s | vs model only |")
    print("|---|---:|---:|")
    print(f"| model only, pre-loaded mel batches (before {model_before:.1f} / after {model_after:.1f}) "
          f"| {model_only:.1f} | 1.00 |")
    print(f"| model + front-end, pre-loaded waveforms | {with_front:.1f} | {with_front / model_only:.2f} |")
    print(f"| fat logits, compute phase (decode + front-end + model + work log) | {compute_rate:.1f} | "
          f"{compute_rate / model_only:.2f} |")
    print(f"| fat logits, whole command ({stage_wall:.1f} s incl. start-up and store assembly) | {stage_rate:.1f} | "
          f"{stage_rate / model_only:.2f} |")
    verdict = "meets" if stage_rate / model_only >= 0.8 else "MISSES"
    print(f"\nend to end / model only = {stage_rate / model_only:.2f}: {verdict} the ≥ 0.80 target")


if __name__ == "__main__":
    main()
