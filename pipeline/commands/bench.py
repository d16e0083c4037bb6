"""`fat bench student`: how fast is this AST at each merge rate r, on this machine?"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cli import add_command

log = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which AST to build: a trained student file, a released AST checkpoint, or random weights."""
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a fat student file (from fat train) or a released AST .pth checkpoint "
                             "(default: random weights, fine for speed)")
    parser.add_argument("--size", default="base384", choices=["tiny224", "small224", "base224", "base384"],
                        help="model size when --checkpoint is not a fat student file")
    parser.add_argument("--frames", type=int, default=1024,
                        help="input frames T (10 ms each) when --checkpoint is not a fat student file")
    parser.add_argument("--num-classes", type=int, default=527,
                        help="output classes when --checkpoint is not a fat student file")
    parser.add_argument("--fstride", type=int, default=10, help="patch stride along frequency, mel bins")
    parser.add_argument("--tstride", type=int, default=10, help="patch stride along time, frames")


def build_model(args: argparse.Namespace):
    """(model, config) from the options of `add_model_arguments`; StudentErrors become FatErrors."""
    from pipeline.errors import FatError
    from student import StudentError, create_ast

    try:
        if args.checkpoint is not None and _is_student_file(args.checkpoint):
            from pipeline.checkpoint import load_student

            return load_student(args.checkpoint)
        model = create_ast(args.size, args.num_classes, 128, args.frames, args.fstride, args.tstride,
                           ast_checkpoint=args.checkpoint)
        return model.eval(), model.config()
    except StudentError as exc:
        raise FatError(str(exc)) from None


def _is_student_file(path: Path) -> bool:
    import torch

    from pipeline.checkpoint import FORMAT

    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "bench", "measure speed (clips/s) of the student at several merge rates",
                         description="Benchmarks that print figures. `fat bench student --r 0 16 32` times the AST\n"
                                     "at each r (and timm's plain forward) on random input, round-robin, median of rounds.")
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    student = targets.add_parser("student", help="AST + token merging throughput per r",
                                 formatter_class=parser.formatter_class,
                                 description="Clips/s, analytic GFLOPs and tokens left for each merge rate r. "
                                             "r forms: 16 (every block), 16,16,8 (per block), 16:-1 (decreasing schedule).")
    student.add_argument("--r", nargs="+", default=["0", "16", "32"], metavar="R",
                         help="merge rates to time (default: 0 16 32)")
    add_model_arguments(student)
    student.add_argument("--batch", type=int, default=8, help="clips per batch")
    student.add_argument("--rounds", type=int, default=3, help="timed rounds (one batch per setting per round)")
    student.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    student.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                         help="fp32, or autocast to bf16/fp16 (fp16 needs a GPU)")
    student.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    student.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    student.add_argument("--no-timm", action="store_true", help="leave out the plain timm row")
    student.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file (default: none)")
    student.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from pipeline.atomic import write_json_atomic
    from pipeline.errors import FatError
    from student import StudentError
    from student.benchmark import sweep, table
    from student.tome import format_r_spec, parse_r, parse_r_spec

    for name in ("batch", "rounds"):
        if getattr(args, name) < 1:
            raise FatError(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise FatError(f"--warmup must be ≥ 0, got {args.warmup}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FatError("--device cuda asked for, but torch sees no CUDA device")
    if args.dtype == "fp16" and device.type != "cuda":
        raise FatError("--dtype fp16 needs a CUDA device; use bf16 on CPU")
    try:
        rs = [parse_r_spec(text) for text in args.r]
    except StudentError as exc:
        raise FatError(str(exc)) from None

    model, config = build_model(args)
    model = model.to(device)
    for r in rs:  # refuse bad settings before minutes of timing
        try:
            parse_r(model.depth, r)
        except StudentError as exc:
            raise FatError(f"--r {r}: {exc}") from None
    log.info("AST %s, %d×%d input (%d tokens), batch %d, %s on %s, %d threads", config["size"],
             model.input_tdim, model.input_fdim, model.num_tokens, args.batch, args.dtype, device,
             torch.get_num_threads())
    rows = sweep(model, rs, batch=args.batch, rounds=args.rounds, warmup=args.warmup, dtype=args.dtype,
                 include_timm=not args.no_timm, progress=log.info)
    print(table(rows, reference="r=0" if 0 in rs else rows[0].name))
    if args.json is not None:
        write_json_atomic(args.json, {
            "model": config, "batch": args.batch, "dtype": args.dtype, "device": str(device),
            "threads": torch.get_num_threads(), "machine": platform.machine(), "torch": torch.__version__,
            "rows": [{"setting": row.name, "r": None if row.r is None else format_r_spec(row.r),
                      "seconds_per_batch": row.seconds, "cpu_seconds_per_batch": row.cpu_seconds,
                      "clips_per_s": row.clips_per_s, "gflops_per_clip": row.gflops, "tokens_out": row.tokens_out}
                     for row in rows],
        })
    return 0

