"""Per-epoch scoring over all ranks: each rank predicts its shard of the validation clips, rank 0
joins them and scores every clip once (loss + `pipeline.metrics.score`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline import runtime
from pipeline.dataset import ClipDataset, DeviceInputs, collate_clips
from pipeline.metrics import score
from pipeline.runtime import Precision
from pipeline.sampling import ShardSampler


@torch.no_grad()
def predict_shard(model: nn.Module, loader: DataLoader, inputs: DeviceInputs,
                  precision: Precision) -> tuple[np.ndarray, np.ndarray]:
    """(clip indices, float32 logits) of this rank's shard, features from the one batch path (`DeviceInputs`)."""
    was_training = model.training
    model.eval()
    indices, logits = [], []
    for batch in loader:
        features = inputs.evaluation(batch)  # fp32: the fbank stays outside autocast
        with precision.autocast():
            out = model(features)
        indices.append(batch["index"].numpy())
        logits.append(out.float().cpu().numpy())
    model.train(was_training)
    if not indices:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(indices), np.concatenate(logits)


def validation_loader(dataset: ClipDataset, context: runtime.Context, batch_size: int, num_workers: int,
                      worker_init_fn: Any) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), context.rank, context.world_size),
        num_workers=num_workers, pin_memory=context.device.type == "cuda", worker_init_fn=worker_init_fn,
        persistent_workers=num_workers > 0, collate_fn=collate_clips,
    )


def gather_predictions(context: runtime.Context, indices: np.ndarray, logits: np.ndarray,
                       num_items: int) -> np.ndarray | None:
    """All ranks' logits in clip order on rank 0 (None elsewhere); checks every clip came exactly once."""
    parts = runtime.gather_objects(context, (indices, logits))
    if not context.is_main:
        return None
    all_indices = np.concatenate([p[0] for p in parts])
    all_logits = np.concatenate([p[1] for p in parts if len(p[0])])
    if len(all_indices) != num_items or not np.array_equal(np.sort(all_indices), np.arange(num_items)):
        raise RuntimeError(f"validation gathered {len(all_indices)} predictions for {num_items} clips")
    ordered = np.empty_like(all_logits)
    ordered[all_indices] = all_logits
    return ordered


def validation_loss(targets: np.ndarray, logits: np.ndarray, multi_label: bool,
                    classes: np.ndarray | None = None) -> float:
    """The training loss's label term on the validation clips: BCE, or cross-entropy for single-label tasks.
    `classes`: BCE over these columns only (the classes the training set has; cross-entropy ignores it)."""
    z = torch.from_numpy(logits).double()
    y = torch.from_numpy(targets).double()
    if multi_label:
        if classes is not None:
            index = torch.from_numpy(np.asarray(classes, dtype=np.int64))
            z, y = z[:, index], y[:, index]
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y).item()
    return torch.nn.functional.cross_entropy(z, y.argmax(dim=1)).item()


def validate(model: nn.Module, loader: DataLoader, dataset: ClipDataset, context: runtime.Context,
             precision: Precision, multi_label: bool, with_accuracy: bool | None = None,
             present: np.ndarray | None = None) -> dict[str, float]:
    """Metrics over the whole validation set on rank 0; {} on the other ranks (they only predict).
    With `present` (the classes the training set has), also `label_present`: the loss over those alone."""
    indices, logits = predict_shard(model, loader, DeviceInputs(dataset.features, context.device), precision)
    ordered = gather_predictions(context, indices, logits, len(dataset))
    if ordered is None:
        return {}
    targets = dataset.clips.targets()
    scores = score(targets, ordered, multi_label, with_accuracy)
    metrics = {"loss": validation_loss(targets, ordered, multi_label),
               **({"label_present": validation_loss(targets, ordered, multi_label, present)} if present is not None
                  else {}),
               **{key: scores[key] for key in ("mAP", "mAUC", "d_prime", "accuracy") if key in scores}}
    metrics["clips"] = float(len(dataset))
    return metrics
