"""Exported student speed: ONNX Runtime (CPU) against eager PyTorch (CPU), same machine, same threads.

For every r the AST is exported once (`fat export --format onnx`'s code: student.export.save_onnx),
then, per batch size, eager PyTorch at that r and the ONNX file in ONNX Runtime are timed
round-robin (student.benchmark.time_settings, median of rounds). Printed per batch:
  - clips/s of each, and ORT / eager (target ≥ 1.0×);
  - merging's speed-up (r / r = 0) inside ORT and in eager, against the analytic FLOPs ratio
    (student.flops): speed-up / FLOPs ratio ≥ 0.85 at r = 32 means merging still pays after export.
Also the largest |ORT − eager| logit difference of each file, on the timing batch.

    python -m bench.export                                     # the issue's setting: base384, r 0 32, batch 1 8
    python -m bench.export --size tiny224 --rounds 3           # a quick look
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import runtime
from pipeline.export import OnnxStudent
from student import create_ast
from student.benchmark import Setting, time_settings
from student.export import save_onnx
from student.flops import analytic_gflops
from student.tome import set_tome_r

TARGET_ORT = 1.0
TARGET_EFFICIENCY = 0.85


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base384", help="AST size (default: base384)")
    parser.add_argument("--frames", type=int, default=1024, help="input frames T (default: 1024)")
    parser.add_argument("--r", type=int, nargs="+", default=[0, 32], help="merge rates (default: 0 32)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ORT alike (default: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default: 1)")
    args = parser.parse_args()

    runtime.set_threads(args.threads)
    torch.manual_seed(0)
    model = create_ast(args.size, input_tdim=args.frames).eval()
    config = {**model.config(), "norm_mean": -4.27, "norm_std": 4.57, "target_frames": args.frames,
              "num_mel_bins": model.input_fdim}
    print(f"# AST {args.size}, T = {args.frames} ({model.num_tokens} tokens), CPU, {torch.get_num_threads()} torch "
          f"threads = {args.threads} ORT intra-op threads, torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}, {platform.processor() or platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        runners: dict[int, OnnxStudent] = {}
        for r in args.r:
            start = time.perf_counter()
            path = Path(tmp) / f"r{r}.onnx"
            save_onnx(model, config, r, path)
            runners[r] = OnnxStudent(path, r=r, threads=args.threads, spin=False)  # no busy-waiting beside torch
            print(f"- exported r = {r} in {time.perf_counter() - start:.0f} s ({path.stat().st_size / 1e6:.0f} MB)")
        for batch in args.batch:
            x = torch.randn(batch, args.frames, model.input_fdim, generator=torch.Generator().manual_seed(batch))
            x_np = x.numpy()
            settings = []
            for r in args.r:
                settings.append(Setting(f"eager r={r}", lambda: model(x), lambda r=r: set_tome_r(model, r)))
                settings.append(Setting(f"ort r={r}", lambda r=r: runners[r].logits(x_np)))
            start = time.perf_counter()
            with torch.inference_mode():
                timings = time_settings(settings, "cpu", rounds=args.rounds, warmup=args.warmup)
                gaps = {}
                for r in args.r:
                    set_tome_r(model, r)
                    gaps[r] = float(np.abs(runners[r].logits(x_np) - model(x).numpy()).max())
            set_tome_r(model, 0)
            print(f"\n## batch {batch}, {args.rounds} timed rounds + {args.warmup} warm-up "
                  f"({time.perf_counter() - start:.0f} s)\n")
            print("| r | GFLOPs/clip | eager clips/s | ORT clips/s | ORT / eager | max abs logit diff |")
            print("|---:|---:|---:|---:|---:|---:|")
            speed = {name: batch / t.seconds for name, t in timings.items()}
            for r in args.r:
                ratio = speed[f"ort r={r}"] / speed[f"eager r={r}"]
                print(f"| {r} | {analytic_gflops(model, r):.1f} | {speed[f'eager r={r}']:.3g} | "
                      f"{speed[f'ort r={r}']:.3g} | {ratio:.2f}× | {gaps[r]:.1e} |")
            print()
            for r in args.r:
                ratio = speed[f"ort r={r}"] / speed[f"eager r={r}"]
                print(f"- r={r}: ORT / eager = {ratio:.2f}× (target ≥ {TARGET_ORT}): "
                      f"{'PASS' if ratio >= TARGET_ORT else 'FAIL'}")
            base = args.r[0]
            for r in args.r[1:]:
                flops_ratio = analytic_gflops(model, base) / analytic_gflops(model, r)
                for kind in ("ort", "eager"):
                    speedup = speed[f"{kind} r={r}"] / speed[f"{kind} r={base}"]
                    efficiency = speedup / flops_ratio
                    print(f"- {kind}: r={r} speed-up over r={base} {speedup:.2f}× vs FLOPs ratio {flops_ratio:.2f}× "
                          f"→ {efficiency:.2f} (target ≥ {TARGET_EFFICIENCY}): "
                          f"{'PASS' if efficiency >= TARGET_EFFICIENCY else 'FAIL'}")


if __name__ == "__main__":
    main()
