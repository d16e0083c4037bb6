"""The head's prior initialisation: at step 0 a student predicts the training label frequencies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import runtime
from pipeline.core.errors import FatError
from pipeline.training.config import TrainConfig
from pipeline.training.head_prior import (
    FLOOR, init_head_from_prior, label_frequencies, prior_bias, resolve_head_init, solve_bias,
)
from pipeline.training.loop import Trainer
from tests.train_fixtures import make_task

TINY = dict(model_size="tiny224", fstride=16, tstride=16, target_frames=96, num_workers=0, threads=1, kd_lambda=1.0,
            progress=False, dvclive=False)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Class frequencies far from one another and from one half: class 0 in most clips, class 4 in none."""
    root = tmp_path_factory.mktemp("prior")
    task = make_task(root, n_train=24, n_valid=8, num_classes=5, seed=3)
    # class 4 is taken out of the training labels, so its frequency 0 must be clamped
    entries = json.loads(task.train.read_text())["data"]
    for i, entry in enumerate(entries):
        kept = {mid for mid in entry["labels"].split(",") if mid != "/m/syn4"}
        if i % 4 != 3 or not kept:  # and class 0 made common
            kept.add("/m/syn0")
        entry["labels"] = ",".join(sorted(kept))
    task.train.write_text(json.dumps({"data": entries}))
    return task


def step0(task, tmp_path: Path, **settings) -> tuple[np.ndarray, np.ndarray, Trainer]:
    """(frequency per class, mean predicted probability per class over the training clips) at step 0."""
    from pipeline.dataset import DeviceInputs, collate_clips

    config = TrainConfig(train=(task.train,), valid=task.valid, out=tmp_path / "run", **{**TINY, **settings})
    config.check()
    context = runtime.start("cpu", 1)
    try:
        trainer = Trainer(config, context)
        trainer.build_data()
        trainer.build_model()
        dataset = trainer.train_set
        features = DeviceInputs(dataset.features).evaluation(collate_clips([dataset[i] for i in range(len(dataset))]))
        trainer.model.eval()
        with torch.no_grad():
            probabilities = torch.sigmoid(trainer.model(features)).numpy()
    finally:
        runtime.stop(context)
    targets = trainer.train_clips.targets()
    return targets.mean(axis=0), probabilities.mean(axis=0), trainer


def test_step0_mean_probability_is_each_class_frequency(task, tmp_path):
    frequency, predicted, trainer = step0(task, tmp_path)  # --head-init auto: no checkpoint, so the prior
    assert trainer.head_init["init"] == "prior" and trainer.head_init["clamped_classes"] == 1
    present = frequency > 0
    assert frequency[present].min() < 0.3 and frequency[present].max() > 0.7  # not one frequency for all
    assert predicted[present] == pytest.approx(frequency[present], abs=1e-5)
    assert predicted[~present] == pytest.approx(FLOOR, rel=1e-3)  # the clamped class starts at its floor
    # the model's own head weights are kept; the bias is the log-odds moved by the random head's common offset
    assert trainer.head_init["weight_std"] is None and trainer.head_init["calibration_clips"] == 24
    shift = trainer.model.mlp_head[-1].bias.detach().numpy() - prior_bias(frequency)
    assert 0.05 < np.abs(shift).max() == pytest.approx(trainer.head_init["calibration_shift"], abs=1e-5)
    # with the model's default head instead, the classes start around one half, whatever their frequency
    _, default, plain = step0(task, tmp_path / "default", head_init="default")
    assert plain.head_init == {"init": "default", "from_checkpoint": False}
    assert default[~present] > 0.3 and np.abs(default[present] - frequency[present]).max() > 0.15


def test_exact_prior_with_small_head_weights():
    model = torch.nn.Module()
    model.mlp_head = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    frequency = np.array([0.05, 0.5, 0.0])
    summary = init_head_from_prior(model, frequency, weight_std=0.0)
    assert summary == {"floor": FLOOR, "weight_std": 0.0, "clamped_classes": 1}
    with torch.no_grad():
        p = torch.sigmoid(model.mlp_head(torch.randn(64, 8))).mean(0).numpy()
    assert p == pytest.approx([0.05, 0.5, FLOOR], abs=1e-6)
    # a softmax head gets log p: softmax(bias) is the class distribution
    init_head_from_prior(model, np.array([0.2, 0.3, 0.5]), multi_label=False, weight_std=0.0)
    assert torch.softmax(model.mlp_head[-1].bias.detach(), 0).numpy() == pytest.approx([0.2, 0.3, 0.5], abs=1e-6)
    # a random head (the focal-loss paper's N(0, 0.01²)) is drawn from the generator: the same on every rank
    draws = [init_head_from_prior(model, frequency, weight_std=0.01, generator=torch.Generator().manual_seed(1))
             and model.mlp_head[-1].weight.detach().clone() for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and 0.005 < float(draws[0].std()) < 0.02
    with pytest.raises(FatError, match="predicts 3 classes but the training labels have 2"):
        init_head_from_prior(model, np.array([0.1, 0.2]))


def test_bias_solved_for_mean_probability():
    offsets = torch.tensor([[2.0, -1.0], [0.0, 3.0], [-4.0, 0.5]])
    bias = solve_bias(offsets, np.array([0.3, 0.9]))
    assert torch.sigmoid(offsets.double() + bias).mean(dim=0).numpy() == pytest.approx([0.3, 0.9], abs=1e-9)


def test_frequencies_from_class_numbers_and_the_auto_rule():
    assert label_frequencies(np.array([0, 2, 2, 1]), 4, 4) == pytest.approx([0.25, 0.25, 0.5, 0.0])
    assert prior_bias(np.array([0.5, 0.0, 1.0])) == pytest.approx([0.0, np.log(FLOOR / (1 - FLOOR)),
                                                                  np.log((1 - FLOOR) / FLOOR)])
    assert resolve_head_init("auto", from_checkpoint=False) == "prior"
    assert resolve_head_init("auto", from_checkpoint=True) == "default"  # a released head is kept
    assert resolve_head_init("prior", from_checkpoint=True) == "prior"


def test_a_checkpoint_head_is_kept_and_the_student_file_records_the_init(task, tmp_path):
    from pipeline.checkpoint import unwrap
    from student import create_ast

    torch.manual_seed(7)
    source = create_ast("tiny224", 5, 128, 96, 16, 16)
    with torch.no_grad():
        source.mlp_head[-1].bias.fill_(0.25)
    checkpoint = tmp_path / "ast.pth"
    torch.save(source.state_dict(), checkpoint)
    _, _, trainer = step0(task, tmp_path, ast_checkpoint=checkpoint)
    assert trainer.head_init == {"init": "default", "from_checkpoint": True}
    assert torch.all(unwrap(trainer.model).mlp_head[-1].bias == 0.25)
    assert trainer.student_config()["head_init"] == {"init": "default", "from_checkpoint": True}
