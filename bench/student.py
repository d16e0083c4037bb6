"""Student speed benchmark: AST base384 at T = 1024 with token merging, r ∈ {0, 8, …, 64}.

Prints, per precision, a table of clips/s, analytic GFLOPs per clip and tokens after the last
block for every r and for timm's plain forward, then the targets as ratios from the same run:
  - patched r = 0 ≥ 0.97 × the plain timm model;
  - measured speed-up at r = 32 and r = 64 ≥ 0.85 × the analytic FLOPs ratio.
Settings are timed round-robin (median over rounds) so load from other work hits all alike.

    python -m bench.student                                   # the issue's setting: batch 8
    python -m bench.student --batch 2 --rounds 3 --bf16-r 0 32 64 --bf16-batch 1   # 2-core CPU
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from pipeline import runtime
from student import create_ast
from student.benchmark import Row, sweep, table

TARGET_R0 = 0.97
TARGET_EFFICIENCY = 0.85


def check_targets(rows: list[Row]) -> list[str]:
    by_name = {row.name: row for row in rows}
    base, plain = by_name.get("r=0"), by_name.get("timm")
    lines = []
    measures = {"wall": lambda row: row.clips_per_s, "CPU": lambda row: 1.0 / row.cpu_seconds}
    for label, speed in measures.items():
        if base and plain:
            ratio = speed(base) / speed(plain)
            lines.append(f"[{label}] patched r=0 / plain timm = {ratio:.3f} (target ≥ {TARGET_R0}): "
                         f"{'PASS' if ratio >= TARGET_R0 else 'FAIL'}")
        for r in (32, 64):
            row = by_name.get(f"r={r}")
            if base and row:
                speedup, flops_ratio = speed(row) / speed(base), base.gflops / row.gflops
                efficiency = speedup / flops_ratio
                lines.append(f"[{label}] r={r}: speed-up {speedup:.2f}× vs FLOPs ratio {flops_ratio:.2f}× → "
                             f"{efficiency:.2f} (target ≥ {TARGET_EFFICIENCY}): "
                             f"{'PASS' if efficiency >= TARGET_EFFICIENCY else 'FAIL'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base384", help="AST size (default: base384)")
    parser.add_argument("--frames", type=int, default=1024, help="input frames T (default: 1024)")
    parser.add_argument("--r", type=int, nargs="+", default=[0, 8, 16, 24, 32, 48, 64], help="merge rates (default: 0 8 16 24 32 48 64)")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch, fp32 (default: 8)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default: 1)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"],
                        help="precisions (default: fp32 bf16)")
    parser.add_argument("--bf16-batch", type=int, default=None, help="batch for bf16/fp16 (default: --batch)")
    parser.add_argument("--bf16-r", type=int, nargs="+", default=None, help="r values for bf16/fp16 (default: --r)")
    parser.add_argument("--bf16-rounds", type=int, default=None, help="timed rounds for bf16/fp16 (default: --rounds)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    runtime.set_threads(args.threads or 0)
    device = runtime.choose_device(args.device)
    torch.manual_seed(0)
    model = create_ast(args.size, input_tdim=args.frames).to(device).eval()
    print(f"# AST {args.size}, T = {args.frames} ({model.num_tokens} tokens), {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    for dtype in args.dtypes:
        low = dtype != "fp32"
        batch = (args.bf16_batch if low and args.bf16_batch else args.batch)
        rs = (args.bf16_r if low and args.bf16_r else args.r)
        rounds = (args.bf16_rounds if low and args.bf16_rounds else args.rounds)
        start = time.perf_counter()
        autocast = runtime.choose_precision(dtype, device).autocast
        rows = sweep(model, rs, batch=batch, rounds=rounds, warmup=args.warmup, autocast=autocast)
        print(f"\n## {dtype}, batch {batch}, {rounds} timed rounds + {args.warmup} warm-up "
              f"({time.perf_counter() - start:.0f} s)\n")
        print(table(rows))
        print()
        for line in check_targets(rows):
            print("- " + line)


if __name__ == "__main__":
    main()
