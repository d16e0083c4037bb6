"""Mixed precision: bf16 autocast where the GPU supports it, fp16 + a gradient scaler otherwise.

On the CPU autocast is off unless asked for (`--amp bf16`): CPU bf16 is slower than fp32 on most
CPUs without AMX. fp16 on the CPU is refused (no benefit, and no scaler support worth using).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from pipeline.errors import FatError


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # None: full fp32
    device_type: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def choose_precision(requested: str, device: torch.device) -> Precision:
    if requested == "off":
        return Precision(None, device.type)
    if device.type == "cuda":
        if requested in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "cuda")
        if requested == "bf16":
            raise FatError("--amp bf16: this GPU does not support bfloat16; use --amp fp16")
        return Precision(torch.float16, "cuda")
    if requested == "auto":
        return Precision(None, device.type)
    if requested == "fp16":
        raise FatError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp off")
    return Precision(torch.bfloat16, device.type)
