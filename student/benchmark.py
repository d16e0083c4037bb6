"""Throughput of an AST at several merge rates, measured the same way for every setting.

`time_settings` is the one timer (`fat bench student` and `fat evaluate` both use it): settings
are timed round-robin (each runs its batches once per round, the order rotated every round, the
device synchronised around each measurement, median over rounds), so that load from other work
on a shared machine hits every setting alike and the ratios stay fair. The "timm" row of `sweep`
runs timm's own `VisionTransformer.forward_features` on the same weights: the baseline that
token merging has to beat.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from student.ast import ASTModel
from student.flops import analytic_gflops
from student.tome import RSpec, format_r_spec, set_tome_r, tokens_per_layer


@dataclass(frozen=True)
class Setting:
    """One thing to time: `run` does one batch; `prepare` (untimed) switches the model to this setting."""

    name: str
    run: Callable[[], object]
    prepare: Callable[[], object] = lambda: None


@dataclass(frozen=True)
class Timing:
    """Medians over the timed rounds of one setting's measurement (`steps` batches in a row)."""

    seconds: float  # wall-clock seconds
    cpu_seconds: float  # CPU seconds of this process: robust to other load on a shared CPU


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_settings(settings: Sequence[Setting], device: torch.device | str, rounds: int = 3, warmup: int = 1,
                  steps: int = 1, progress: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """Time every setting: `warmup` untimed rounds, then `rounds` timed ones.

    In each round every setting runs `steps` batches in a row between two device
    synchronisations; the order of the settings rotates from round to round, so no setting always
    runs first (after another's caches, or while the machine is busy elsewhere). The caller
    chooses the context (inference mode, autocast) around this call.
    """
    device = torch.device(device)
    wall: dict[str, list[float]] = {s.name: [] for s in settings}
    cpu: dict[str, list[float]] = {s.name: [] for s in settings}
    for round_index in range(warmup + rounds):
        shift = round_index % len(settings)  # rotate the order: no setting always runs first
        for setting in list(settings[shift:]) + list(settings[:shift]):
            setting.prepare()
            _synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                setting.run()
            _synchronize(device)
            if round_index >= warmup:
                wall[setting.name].append(time.perf_counter() - start)
                cpu[setting.name].append(time.process_time() - cpu_start)
        if progress:
            progress(f"round {round_index + 1}/{warmup + rounds} done")
    return {name: Timing(statistics.median(wall[name]), statistics.median(cpu[name])) for name in wall}


@dataclass
class Row:
    name: str  # "timm" or "r=<spec>"
    r: RSpec | None
    seconds: float  # median wall-clock seconds per batch
    clips_per_s: float
    cpu_seconds: float  # median CPU seconds of this process per batch: robust to other load on a shared CPU
    gflops: float  # analytic, per clip
    tokens_out: int  # tokens after the last block


def timm_forward(model: ASTModel, x: torch.Tensor) -> torch.Tensor:
    """The plain timm path: VisionTransformer.forward_features on the fbank image, then AST's head."""
    tokens = model.v.forward_features(x.unsqueeze(1).transpose(2, 3))
    return model.mlp_head((tokens[:, 0] + tokens[:, 1]) / 2)


def sweep(model: ASTModel, rs: list[RSpec], batch: int = 8, rounds: int = 3, warmup: int = 1,
          autocast: Callable[[], AbstractContextManager] = nullcontext, include_timm: bool = True, seed: int = 0,
          progress: Callable[[str], None] | None = None) -> list[Row]:
    """Time `model` at every r in `rs` (and timm's plain forward) on random fbank batches.

    `autocast` makes the precision context the forwards run in (the caller's precision policy, e.g.
    pipeline.runtime.Precision.autocast); the default is plain fp32.
    """
    device = next(model.parameters()).device
    x = torch.randn(batch, model.input_tdim, model.input_fdim, generator=torch.Generator().manual_seed(seed)).to(device)
    saved = (list(model.tome_r), model.training)
    model.eval()

    chosen: list[tuple[str, RSpec | None]] = [("timm", None)] if include_timm else []
    chosen += [(f"r={format_r_spec(r)}", r) for r in rs]
    settings = [Setting("timm", lambda: timm_forward(model, x)) if r is None
                else Setting(name, lambda: model(x), lambda r=r: set_tome_r(model, r)) for name, r in chosen]
    try:
        with torch.inference_mode(), autocast():
            timings = time_settings(settings, device, rounds=rounds, warmup=warmup, progress=progress)
    finally:
        model.tome_r = saved[0]
        model.train(saved[1])

    rows = []
    for name, r in chosen:
        timing = timings[name]
        effective_r = 0 if r is None else r
        rows.append(Row(name, r, timing.seconds, batch / timing.seconds, timing.cpu_seconds,
                        analytic_gflops(model, effective_r),
                        tokens_per_layer(model, effective_r)[-1]))
    return rows


def table(rows: list[Row], reference: str = "r=0") -> str:
    """A markdown table; speed-ups and FLOP ratios are relative to the `reference` row.

    "CPU speed-up" compares this process's CPU seconds per batch: on a CPU shared with other work
    it is the steadier figure (with one thread it is the work done, whoever else runs).
    """
    base = next((row for row in rows if row.name == reference), rows[0])
    lines = ["| setting | tokens out | GFLOPs/clip | FLOPs ratio | clips/s | speed-up | CPU s/batch | CPU speed-up "
             "| speed-up / FLOPs ratio (wall, CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        flops_ratio = base.gflops / row.gflops
        speedup = row.clips_per_s / base.clips_per_s
        cpu_speedup = base.cpu_seconds / row.cpu_seconds
        lines.append(f"| {row.name} | {row.tokens_out} | {row.gflops:.1f} | {flops_ratio:.2f}× | "
                     f"{row.clips_per_s:.3g} | {speedup:.2f}× | {row.cpu_seconds:.3g} | {cpu_speedup:.2f}× | "
                     f"{speedup / flops_ratio:.2f}, {cpu_speedup / flops_ratio:.2f} |")
    return "\n".join(lines)
