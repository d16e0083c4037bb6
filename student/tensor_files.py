"""Reading a file of tensors, safetensors or torch, without unpickling anything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_tensor_file(path: Path) -> Any:
    """What a .safetensors file (by suffix) or a torch file (weights_only) holds; raises what the reader raised."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)
