"""The resumable training state: everything a run needs to continue exactly where it stopped.

`<out>/train_state.pt` holds model, optimiser, LR schedule, grad scaler, sampler position,
every rank's RNG states, the weight-average so far, the epoch history and the step log. It is
rewritten atomically at the end of each epoch and on SIGTERM (mid-epoch, at an optimiser-step
boundary), so a crash at any moment leaves the previous complete state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import FatError

FORMAT = "fat-train-state/1"
STATE_NAME = "train_state.pt"


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_state(out: Path, payload: dict[str, Any]) -> Path:
    path = out / STATE_NAME
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return path


def load_state(out: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none yet."""
    path = out / STATE_NAME
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FatError(f"{path}: cannot read the training state ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FatError(f"{path}: not a fat training state")
    return payload


def check_same_data(path: Path, saved: dict[str, str] | None, current: dict[str, str]) -> None:
    """Resuming on other clips or another label list would silently continue a different run."""
    if saved is None:  # a state written before data identities were recorded
        return
    changed = [name for name, digest in current.items() if saved.get(name) != digest]
    if changed:
        raise FatError(f"{path}: cannot resume: the {', '.join(changed)} differ from the saved run's (ids, "
                       "classes or label CSV changed); use the original data or a new --out")


def check_compatible(path: Path, saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Resuming with settings that change what the state means is refused, naming them."""
    changed = [f"{key}: {saved.get(key)!r} → {current.get(key)!r}" for key in keys if saved.get(key) != current.get(key)]
    if changed:
        raise FatError(f"{path}: cannot resume with changed settings ({'; '.join(changed)}); "
                       "use the original settings or a new --out")
