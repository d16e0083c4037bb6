"""Which clips each training step sees: AST's balanced weights and a resumable, distributed sampler.

Every rank computes the same global draw for an epoch from (seed, epoch) and takes every
world_size-th entry, so ranks never need to talk to agree on their shares. Each drawn clip
also gets its own random seed (for mixup partner, SpecAugment, noise): augmentation is then a
function of (seed, epoch, position) only, the same for any number of DataLoader workers, and a
run resumed in the middle of an epoch sees exactly the clips and augmentations it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch.utils.data

from pipeline.core.errors import FatError

# AST's gen_weight_file.py: a class seen n times weighs 1000 / (n + 0.01).
BALANCE_SCALE = 1000.0
BALANCE_OFFSET = 0.01


def class_counts(class_indices: np.ndarray, offsets: np.ndarray, num_classes: int) -> np.ndarray:
    """How many clips carry each class; labels in CSR form (clip i: class_indices[offsets[i]:offsets[i+1]])."""
    return np.bincount(np.asarray(class_indices, dtype=np.int64), minlength=num_classes)[:num_classes]


def balanced_weights(class_indices: np.ndarray, offsets: np.ndarray, num_classes: int) -> np.ndarray:
    """AST's per-clip sampling weights: the sum over the clip's classes of 1000 / (count + 0.01).

    Rare classes weigh more, so a weighted draw with replacement sees them about as often as
    common ones. A clip without labels gets weight 0 (it would never be drawn by AST either).
    """
    class_indices = np.asarray(class_indices, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    per_class = BALANCE_SCALE / (class_counts(class_indices, offsets, num_classes) + BALANCE_OFFSET)
    running = np.concatenate([[0.0], np.cumsum(per_class[class_indices])])
    return running[offsets[1:]] - running[offsets[:-1]]


class EpochSampler(torch.utils.data.Sampler):
    """Yields (clip index, item seed) for this rank's share of one epoch.

    weights=None: a shuffled pass over all clips (without replacement; the list is wrapped
    around so every rank gets the same count). weights given: `epoch_size` clips drawn with
    replacement in proportion to the weights (AST's balanced sampling). `set_epoch(e, skip)`
    selects the epoch and skips the clips this rank has already trained on.
    """

    def __init__(
        self,
        num_items: int,
        *,
        weights: Sequence[float] | np.ndarray | None = None,
        epoch_size: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_items <= 0:
            raise FatError("the training set is empty")
        if not 0 <= rank < world_size:
            raise FatError(f"rank {rank} is outside a world of {world_size}")
        self.num_items = num_items
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None:
            if self.weights.shape != (num_items,):
                raise FatError(f"{self.weights.shape[0]} sampling weights for {num_items} clips")
            if not np.all(np.isfinite(self.weights)) or (self.weights < 0).any() or self.weights.sum() <= 0:
                raise FatError("sampling weights must be finite, non-negative and not all zero")
        self.epoch_size = int(epoch_size or num_items)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    @property
    def per_rank(self) -> int:
        return -(-self.epoch_size // self.world_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip)

    def global_draw(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole epoch's (indices, item seeds) before it is split over ranks."""
        total = self.per_rank * self.world_size
        rng = np.random.default_rng([self.seed, epoch, 0x5A4D])
        if self.weights is None:
            order = rng.permutation(self.num_items)
            indices = np.resize(order, total) if total != self.num_items else order
        else:
            indices = rng.choice(self.num_items, size=total, replace=True, p=self.weights / self.weights.sum())
        seeds = rng.integers(0, 2**62, size=total, dtype=np.int64)
        return indices.astype(np.int64), seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seeds = self.global_draw(self.epoch)
        mine = slice(self.rank + self.skip * self.world_size, None, self.world_size)
        for index, seed in zip(indices[mine].tolist(), seeds[mine].tolist()):
            yield index, seed

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)

    def state_dict(self) -> dict[str, int | float]:
        """What must match for a resumed run to draw the same clips."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "skip": self.skip,
            "num_items": self.num_items,
            "epoch_size": self.epoch_size,
            "world_size": self.world_size,
            "weights_sum": float(self.weights.sum()) if self.weights is not None else 0.0,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "num_items", "epoch_size", "world_size"):
            if int(state[key]) != int(mine[key]):
                raise FatError(
                    f"cannot resume: the sampler's {key} was {state[key]} and is now {mine[key]} "
                    "(a resumed run needs the same training list, epoch size, seed and number of ranks)"
                )
        if not np.isclose(float(state["weights_sum"]), float(mine["weights_sum"]), rtol=1e-9):
            raise FatError("cannot resume: the balanced sampling weights changed (a different training list?)")
        self.set_epoch(int(state["epoch"]), int(state["skip"]))


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation order: rank r takes clips r, r + n, r + 2n, ... with no padding or repeats,
    so predictions gathered from all ranks cover every clip exactly once."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, num_items, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
