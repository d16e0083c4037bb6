"""`fat bench student`: how fast is this AST at each merge rate r, on this machine?"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import add_command
from pipeline.settings import (
    add_options, check_values, device_option, from_args, nested, option, precision_option, threads_option,
)

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StudentChoice:
    """Which AST to build: a trained student file, a released AST checkpoint, or random weights."""

    checkpoint: Path | None = option(
        None, "a fat student file (from fat train, .pt or .safetensors), a Hugging Face AST folder or a released AST "
              ".pth checkpoint (default: random weights, fine for speed)")
    size: str = option("base384", "model size when --checkpoint is not a fat student file",
                       choices=("tiny224", "small224", "base224", "base384"))
    frames: int = option(1024, "input frames T when --checkpoint is not a fat student file", unit="10 ms frames")
    num_classes: int = option(527, "output classes when --checkpoint is not a fat student file")
    fstride: int = option(10, "patch stride along frequency", unit="mel bins")
    tstride: int = option(10, "patch stride along time", unit="frames")


@dataclass(kw_only=True)
class BenchSettings:
    """The `fat bench student` options."""

    r: list[str] = option(["0", "16", "32"], "merge rates to time (default: 0 16 32)", metavar="R")
    model: StudentChoice = nested(StudentChoice)
    batch: int = option(8, "clips per batch", unit="clips", minimum=1)
    rounds: int = option(3, "timed rounds (one batch per setting per round)", minimum=1)
    warmup: int = option(1, "untimed rounds first", minimum=0)
    device: str = device_option()
    precision: str = precision_option()
    threads: int = threads_option()
    timm: bool = option(True, "time timm's plain forward too (--no-timm leaves its row out)")
    compile: bool = option(False, "torch.compile the student (merging included; the timm row stays eager); each "
                                  "r's compile time is printed apart from its clips/s")
    json: Path | None = option(None, "also write the rows to this JSON file (default: none)")


def build_model(choice: StudentChoice):  # noqa: ANN201 - (ASTModel, config dict); torch stays out of `fat --help`
    """(model, config) of a `StudentChoice`; StudentErrors become FatErrors."""
    from pipeline.core.errors import FatError
    from student import StudentError, create_ast

    try:
        if choice.checkpoint is not None:
            from pipeline.checkpoint import is_student_source, load_student

            if is_student_source(choice.checkpoint):
                return load_student(choice.checkpoint)
        model = create_ast(choice.size, choice.num_classes, 128, choice.frames, choice.fstride, choice.tstride,
                           ast_checkpoint=choice.checkpoint)
        return model.eval(), model.config()
    except StudentError as exc:
        raise FatError(str(exc)) from None


def compile_before_timing(model, rs, batch: int, precision) -> dict[str, float]:  # noqa: ANN001 - torch types
    """Compile `model` in place and build every r's graph on a batch of the timed shape;
    {"r=<r>": seconds of the first call}, or {} when it cannot compile (one warning, eager)."""
    import torch

    from student.compile import compile_student, first_calls
    from student.tome import format_r_spec, set_tome_r

    if not compile_student(model):
        return {}
    device = next(model.parameters()).device
    x = torch.randn(batch, model.input_tdim, model.input_fdim, device=device)
    log.info("compiling r = %s (the first call at each r builds its graph)", " ".join(format_r_spec(r) for r in rs))
    with torch.inference_mode(), precision.autocast():
        return first_calls(lambda: model(x), [(f"r={format_r_spec(r)}", lambda r=r: set_tome_r(model, r)) for r in rs],
                           device)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "bench", "measure speed (clips/s) of the student at several merge rates",
                         description="Benchmarks that print figures. `fat bench student --r 0 16 32` times the AST\n"
                                     "at each r (and timm's plain forward) on random input, round-robin, median of rounds.")
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    student = targets.add_parser("student", help="AST + token merging throughput per r",
                                 formatter_class=parser.formatter_class,
                                 description="Clips/s, analytic GFLOPs and tokens left for each merge rate r. "
                                             "r forms: 16 (every block), 16,16,8 (per block), 16:-1 (decreasing schedule).")
    add_options(student, BenchSettings)
    student.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from pipeline import runtime
    from pipeline.core.atomic import write_json_atomic
    from pipeline.core.errors import FatError
    from student import StudentError
    from student.benchmark import sweep, table
    from student.tome import format_r_spec, parse_r, parse_r_spec

    settings: BenchSettings = from_args(BenchSettings, args)
    check_values(settings)
    runtime.set_threads(settings.threads)
    device = runtime.choose_device(settings.device)
    precision = runtime.choose_precision(settings.precision, device)
    try:
        rs = [parse_r_spec(text) for text in settings.r]
    except StudentError as exc:
        raise FatError(str(exc)) from None

    model, config = build_model(settings.model)
    model = model.to(device)
    for r in rs:  # refuse bad settings before minutes of timing
        try:
            parse_r(model.depth, r)
        except StudentError as exc:
            raise FatError(f"--r {r}: {exc}") from None
    log.info("AST %s, %d×%d input (%d tokens), batch %d, %s on %s, %d threads", config["size"],
             model.input_tdim, model.input_fdim, model.num_tokens, settings.batch, precision.name, device,
             torch.get_num_threads())
    compile_seconds = compile_before_timing(model, rs, settings.batch, precision) if settings.compile else {}
    rows = sweep(model, rs, batch=settings.batch, rounds=settings.rounds, warmup=settings.warmup,
                 autocast=precision.autocast, include_timm=settings.timm, progress=log.info)
    print(table(rows, reference="r=0" if 0 in rs else rows[0].name))
    if compile_seconds:
        print("compile time (first call at each r, not in clips/s): " +
              ", ".join(f"{name} {seconds:.1f} s" for name, seconds in compile_seconds.items()))
    if settings.json is not None:
        write_json_atomic(settings.json, {
            "model": config, "batch": settings.batch, "precision": precision.name, "device": str(device),
            "threads": torch.get_num_threads(), "machine": platform.machine(), "torch": torch.__version__,
            "rows": [{"setting": row.name, "r": None if row.r is None else format_r_spec(row.r),
                      "seconds_per_batch": row.seconds, "cpu_seconds_per_batch": row.cpu_seconds,
                      "clips_per_s": row.clips_per_s, "gflops_per_clip": row.gflops, "tokens_out": row.tokens_out,
                      "compile_seconds": compile_seconds.get(row.name)}
                     for row in rows],
            "compiled": bool(compile_seconds),
        })
    return 0
