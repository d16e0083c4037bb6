"""torch.compile against eager for the student at several r, timed in one run.

Two copies of the same random-weight AST: one eager, one compiled in place (student.compile), both
timed by the project's one timer (student.benchmark.time_settings) in the same rotating rounds, so
load from other work on a shared machine hits both alike. Compile time (the first call at each r)
is printed apart, with the largest logit difference from eager (the equality the tests check with
aot_eager, here with the real default backend, inductor).

    python -m bench.compile --size tiny224 --frames 512 --batch 4 --r 0 16 32
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch

from pipeline import runtime
from student import create_ast
from student.benchmark import Setting, time_settings
from student.compile import compile_backend, compile_student, first_calls
from student.tome import set_tome_r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny224")
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--r", type=int, nargs="+", default=[0, 16, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    runtime.set_threads(args.threads)
    device = runtime.choose_device(args.device)
    torch.manual_seed(0)
    eager = create_ast(args.size, num_classes=527, input_tdim=args.frames).eval().to(device)
    compiled = copy.deepcopy(eager)
    if not compile_student(compiled):
        raise SystemExit("torch.compile is unavailable here")
    x = torch.randn(args.batch, args.frames, 128, generator=torch.Generator().manual_seed(1)).to(device)
    print(f"{args.size}, {eager.num_tokens} tokens, batch {args.batch}, {device}, {torch.get_num_threads()} threads, "
          f"backend {compile_backend()}, torch {torch.__version__}, {platform.machine()}")
    with torch.inference_mode():
        compile_s = first_calls(lambda: compiled(x), [(str(r), lambda r=r: set_tome_r(compiled, r)) for r in args.r],
                                device)
        worst = {}
        for r in args.r:
            set_tome_r(eager, r)
            set_tome_r(compiled, r)
            worst[r] = float((eager(x) - compiled(x)).abs().max())
        settings = []
        for r in args.r:
            settings.append(Setting(f"eager r={r}", lambda: eager(x), lambda r=r: set_tome_r(eager, r)))
            settings.append(Setting(f"compiled r={r}", lambda: compiled(x), lambda r=r: set_tome_r(compiled, r)))
        timings = time_settings(settings, device, rounds=args.rounds, warmup=1)
    print("| r | eager clips/s | compiled clips/s | compiled / eager | compile s (first call) | max |logit diff| |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in args.r:
        e, c = timings[f"eager r={r}"].seconds, timings[f"compiled r={r}"].seconds
        print(f"| {r} | {args.batch / e:.2f} | {args.batch / c:.2f} | {e / c:.2f}× | {compile_s[str(r)]:.0f} | "
              f"{worst[r]:.1e} |")


if __name__ == "__main__":
    main()
