"""One process per device under torchrun (PyTorch DDP), or a single process without it.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; NCCL is used on GPUs and gloo on CPUs. Rank 0 is
the only writer of checkpoints and logs; every rank takes part in collectives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.errors import FatError


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


def choose_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FatError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def start(requested_device: str) -> Context:
    """Join the torchrun process group when launched by torchrun; else a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # fp32 parts (outside autocast) may use TF32 tensor cores; AMP covers the rest.
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
