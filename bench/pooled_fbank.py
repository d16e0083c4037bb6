"""A reference for the student's mAP: logistic regression on time-pooled fbank statistics.

Each clip becomes the mean and the standard deviation over time of each mel bin of the very
features the student sees (`pipeline.dataset.DeviceInputs`, same frames, bins and
normalisation), 2 × mel-bin numbers; one L2-regularised logistic regression per class is fitted
on the training split (full-batch L-BFGS, features standardised with the training statistics)
and scored on the evaluation split with `pipeline.metrics.score`, as `fat evaluate` scores the
student. It also prints the mAP of a random ranking (`chance_map`), so one line says where the
student stands between chance and a linear model that knows nothing of time order.

    python -m bench.pooled_fbank                        # the demo (params.yaml's train section)
    python -m bench.pooled_fbank --l2 1e-2 --seed 0     # another regularisation
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline.datafile import label_csv_beside, load_clips, load_label_csv
from pipeline.dataset import ClipDataset, DeviceInputs, Features, collate_clips
from pipeline.evaluate.scoring import chance_map
from pipeline.metrics import score


@torch.no_grad()
def pooled_features(dataset: ClipDataset, batch_size: int = 32) -> np.ndarray:
    """(N, 2F): per mel bin, the mean and std over the clip's frames of its normalised fbank."""
    inputs = DeviceInputs(dataset.features)
    rows = []
    for start in range(0, len(dataset), batch_size):
        batch = collate_clips([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        fbank = inputs.evaluation(batch)  # (B, T, F)
        rows.append(torch.cat([fbank.mean(dim=1), fbank.std(dim=1)], dim=1).numpy())
    return np.concatenate(rows)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (D, C) and bias (C,) of C independent logistic regressions, mean BCE + l2 · ‖W‖²."""
    features = torch.from_numpy(x).double()
    targets = torch.from_numpy(y).double()
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(features @ weight + bias, targets)
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params.yaml whose train section names the datafiles, packed stores and features")
    parser.add_argument("--l2", type=float, default=1e-3, help="L2 weight on the regression weights (default: 1e-3)")
    args = parser.parse_args()
    train = yaml.safe_load(args.params.read_text())["train"]
    train_files = train["train"] if isinstance(train["train"], list) else [train["train"]]
    labels = load_label_csv(train.get("labels") or label_csv_beside(train_files[0]))
    features = Features(int(train.get("target_frames", 1024)), int(train.get("num_mel_bins", 128)))
    if train.get("norm_mean") is not None:
        features = Features(features.target_frames, features.num_mel_bins, float(train["norm_mean"]),
                            float(train["norm_std"]))
    packed = [Path(p) for p in train.get("packed", [])]
    splits = {}
    for name, files in (("train", train_files), ("eval", [train["valid"]])):
        clips = load_clips(files, labels)
        splits[name] = (pooled_features(ClipDataset(clips, features, packed=packed)), clips.targets())
    (x_train, y_train), (x_eval, y_eval) = splits["train"], splits["eval"]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    weight, bias = fit_logistic((x_train - mean) / std, y_train, args.l2)
    logits = (torch.from_numpy((x_eval - mean) / std).double() @ weight + bias).numpy()
    scores = score(y_eval, logits, True)
    print(f"machine: {platform.node() or '?'}, {torch.get_num_threads()} torch threads, {platform.processor() or '?'}")
    print(f"pooled-fbank logistic regression ({x_train.shape[1]} features, l2 {args.l2:g}): "
          f"{len(y_train)} training / {len(y_eval)} evaluation clips")
    print(f"eval mAP {scores['mAP']:.4f}  mAUC {scores['mAUC']:.4f}  (random ranking: mAP {chance_map(y_eval):.4f})")


if __name__ == "__main__":
    main()
