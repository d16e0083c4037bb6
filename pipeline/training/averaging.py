"""Weight averaging as AST does it: the plain mean of the weights at the end of epochs a..b.

AST saves every epoch's weights and averages the files afterwards; a running mean gives the same
average without keeping one file per epoch, and is part of the resumable training state.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverager:
    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    def wants(self, epoch: int) -> bool:
        return self.start <= epoch <= self.end

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the mean (float32 on the CPU)."""
        self.count += 1
        for key, value in model.state_dict().items():
            value = value.detach().to("cpu", torch.float32)
            if key not in self.mean:
                self.mean[key] = value.clone()
            else:
                self.mean[key] += (value - self.mean[key]) / self.count

    def averaged_state(self, like: nn.Module) -> dict[str, torch.Tensor]:
        """The mean, cast back to each parameter's own dtype."""
        reference = like.state_dict()
        return {key: self.mean[key].to(reference[key].dtype) for key in reference}

    def state_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "count": self.count, "mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self.mean = dict(state["mean"])
