"""Where and how a stage computes: device, precision, CPU threads and the torchrun world.

One home for these rules, so that `--device`, `--precision` and `--threads` mean the same in every
stage (train, logits, evaluate, predict, bench; the options themselves: pipeline.settings):
- device: auto = a CUDA GPU when torch sees one (under torchrun the local rank's), else the CPU;
  cuda or cuda:N ask for one (an error when there is none).
- precision: auto = bf16 autocast on a GPU that supports bfloat16, fp16 autocast on one that does
  not (training then scales its gradients), fp32 on the CPU (CPU autocast is slower than fp32 on most
  CPUs). bf16 on the CPU is allowed when asked for; fp16 needs a GPU. Losses stay fp32 (the caller
  casts), and fp32 parts on a GPU may use TF32 tensor cores.
- threads: torch's CPU threads for this process; 0 = torch's default.
- world: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; NCCL joins GPUs, gloo CPUs. Rank 0 is the
  only writer of outputs; every rank takes part in the collectives below.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.core.errors import FatError
from pipeline.settings import PRECISIONS



# --------------------------------------------------------------------------- device and threads

def choose_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`, `cpu`, `cuda` (the local rank's GPU) or `cuda:N` → the torch device, refused when absent."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FatError(f"--device {requested} was asked for, but torch sees no CUDA device (use --device cpu or auto)")
    if requested in ("auto", "cuda"):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    device = torch.device(requested)
    if device.type != "cuda" or device.index is None or device.index >= torch.cuda.device_count():
        raise FatError(f"--device {requested}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    return device


def set_threads(threads: int) -> None:
    """torch's CPU threads for this process (0 leaves torch's default)."""
    if threads < 0:
        raise FatError(f"--threads must be ≥ 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing a GPU without it measures the launch, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> str:
    """The device in words, for reports: a GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


# --------------------------------------------------------------------------- precision

@dataclass(frozen=True)
class Precision:
    """The arithmetic of a model's forward pass on one device."""

    dtype: torch.dtype | None  # the autocast type; None: plain fp32
    device_type: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def choose_precision(requested: str, device: torch.device) -> Precision:
    """`--precision` (auto, fp32, bf16, fp16) on `device`, by the rules at the top of this module."""
    if requested not in PRECISIONS:
        raise FatError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return Precision(None, device.type)
    if device.type == "cuda":
        if requested in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "cuda")
        if requested == "bf16":
            raise FatError("--precision bf16: this GPU does not support bfloat16; use --precision fp16")
        return Precision(torch.float16, "cuda")
    if requested == "auto":
        return Precision(None, device.type)
    if requested == "fp16":
        raise FatError("--precision fp16 needs a CUDA device; on the CPU use --precision bf16 or fp32")
    return Precision(torch.bfloat16, device.type)


# --------------------------------------------------------------------------- torchrun world

@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(requested_device: str = "auto", threads: int = 0) -> Context:
    """This process's place: joins the torchrun process group when launched by torchrun, else a world of one."""
    set_threads(threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # fp32 parts (outside autocast) may use TF32 tensor cores; autocast covers the rest.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def stop(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(context: Context, obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    if not context.distributed:
        return [obj]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def sum_floats(context: Context, values: list[float]) -> list[float]:
    """Element-wise sum of a list of floats over ranks (float64)."""
    if not context.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device if context.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(context: Context, flag: bool) -> bool:
    """True on every rank when it is true on at least one (e.g. a SIGTERM reached one of them)."""
    if not context.distributed:
        return flag
    return sum_floats(context, [1.0 if flag else 0.0])[0] > 0


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()
