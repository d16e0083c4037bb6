"""Evaluation metrics as the AudioSet literature reports them (AST's stats: mAP, mean AUC, d').

Classes with no positive (or no negative) example in the evaluated set have no defined AP/AUC
and are left out of the means; the count of classes used is reported so results stay comparable.
"""

from __future__ import annotations

import math

import numpy as np


def d_prime(auc: float) -> float:
    """Sensitivity index from an AUC: sqrt(2) · Φ⁻¹(AUC)."""
    from scipy.stats import norm  # scipy and sklearn load in ~1 s: only when scores are computed

    return float(math.sqrt(2.0) * norm.ppf(auc))


def multilabel_metrics(targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """mAP, mean ROC-AUC and d' over the classes that have both positives and negatives.

    targets: (N, C) 0/1 (mixup-soft targets are not metrics input); scores: (N, C) any monotone
    score (logits or probabilities give the same result).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must both be (N, C)")
    positives = targets.sum(axis=0)
    usable = np.flatnonzero((positives > 0) & (positives < targets.shape[0]))
    if usable.size == 0:
        return {"mAP": float("nan"), "mAUC": float("nan"), "d_prime": float("nan"), "classes": 0}
    aps = [average_precision_score(targets[:, c], scores[:, c]) for c in usable]
    aucs = [roc_auc_score(targets[:, c], scores[:, c]) for c in usable]
    mean_auc = float(np.mean(aucs))
    return {
        "mAP": float(np.mean(aps)),
        "mAUC": mean_auc,
        "d_prime": d_prime(mean_auc),
        "classes": int(usable.size),
    }


def score(targets: np.ndarray, scores: np.ndarray, multi_label: bool, with_accuracy: bool | None = None) -> dict[str, float]:
    """The figures AST reports: mAP, mAUC, d' (and the classes they average over); top-1 accuracy
    too for single-label tasks, or when asked for (`with_accuracy`; default: not multi_label)."""
    result = multilabel_metrics(targets, scores)
    if (not multi_label) if with_accuracy is None else with_accuracy:
        result.update(accuracy(targets, scores))
    return result


def accuracy(targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy for single-label tasks; targets are class indices (N,) or one-hot (N, C)."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        targets = targets.argmax(axis=1)
    predicted = np.asarray(scores).argmax(axis=1)
    return {"accuracy": float((predicted == targets).mean()) if targets.size else float("nan")}
